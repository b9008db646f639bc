"""The relaxed concept search AP and AGE share: a Gumbel-softmax (straight-through) choice among candidate
embeddings, with logits π updated by their own optimiser to *maximise* a preservation loss."""
from __future__ import annotations

from collections.abc import Callable

import torch

MODES = ("hard", "topk")


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None,
                   hard: bool = True) -> torch.Tensor:
    """Gumbel-softmax sample over the last axis; hard=True returns the one-hot of the argmax in the forward
    pass and the soft sample's gradient in the backward pass (straight-through). Seeded by `generator`."""
    u = torch.rand(logits.shape, generator=generator).to(logits.device).clamp(1e-10, 1 - 1e-10)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return one_hot - soft.detach() + soft


def concept_weights(logits: torch.Tensor, tau: float, mode: str, top_k: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Weights over candidates: a hard one-hot sample, or the top-k of a soft sample renormalised (AGE)."""
    if mode == "hard":
        return gumbel_softmax(logits, tau, generator, hard=True)
    soft = gumbel_softmax(logits, tau, generator, hard=False)
    keep = torch.zeros_like(soft).scatter_(-1, soft.topk(min(top_k, soft.shape[-1]), -1).indices, 1.0)
    kept = soft * keep
    return kept / kept.sum(-1, keepdim=True)


def mix(weights: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k E_k: the (tokens, d) embedding a weight vector over candidates (n, tokens, d) stands for."""
    return torch.einsum("n,ntd->td", weights.to(embeddings.dtype), embeddings)


def search_step(logits: torch.Tensor, optimizer: torch.optim.Optimizer, embeddings: torch.Tensor,
                preservation_loss: Callable[[torch.Tensor], torch.Tensor],
                weights: torch.Tensor) -> tuple[int, float]:
    """One ascent step of π on `preservation_loss(c_a)`, c_a = mix(weights, embeddings) with `weights` a
    sample drawn from `logits` by `concept_weights` (so gradients reach π). Returns (concept sampled, its
    loss)."""
    loss = preservation_loss(mix(weights, embeddings))
    (grad,) = torch.autograd.grad(-loss, [logits])
    optimizer.zero_grad(set_to_none=True)
    logits.grad = grad
    optimizer.step()
    return int(weights.detach().argmax()), float(loss.detach())


def ranking(logits: torch.Tensor, names: list[str], top: int = 10) -> list[dict]:
    """The candidates π favours most, with their softmax probabilities."""
    p = torch.softmax(logits.detach().float().cpu(), -1)
    order = p.argsort(descending=True)[:top]
    return [{"concept": names[int(i)], "probability": round(float(p[i]), 4)} for i in order]
