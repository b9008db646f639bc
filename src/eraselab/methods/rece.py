"""RECE — Reliable and Efficient Concept Erasure (Gong et al., 2024): a UCE edit, then for N epochs the
closed-form embedding c′ through which the *edited* cross-attention still reproduces the original model's
keys/values of the concept,

    c′ = argmin_c Σ_l ‖W′_l c − W_l c_target‖² + λ‖c‖² = (Σ_l W′_lᵀ W′_l + λI)⁻¹ (Σ_l W′_lᵀ W_l) c_target,

(over all edited K/V matrices, per token vector), is itself erased by another UCE step mapping it to the guide.
Each re-edit keeps the original targets in the erase set, so it cannot undo them, and the preserved concepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Eraser, EraseRequest, non_negative, positive
from .registry import register
from .uce import UCE, UCEConfig, apply_transform, prepare, uce_transform


@dataclass
class RECEConfig(UCEConfig):
    epochs: int = 1
    embedding_lam: float = 1e-3

    # One epoch left the grounded miniworld model 637f6b998d4e2534 drawing circles at 32 % of its original rate
    # (0.85, 48 seeds): the adversarial embedding still finds the circle after UCE. Erasing "circle", circle /
    # star after 3 epochs (the paper's count for nudity) 0.15 / 0.98, 4 epochs 0.12 / 1.00, 5 epochs 0.19 / 1.00
    # (star originally 0.92): no trend past 3, so 3.
    miniworld: ClassVar[dict] = {**UCEConfig.miniworld, "epochs": 3}
    help: ClassVar[dict] = {**UCEConfig.help,
                            "epochs": "rounds of adversarial-embedding search and re-edit (nudity: 3)",
                            "embedding_lam": "λ of the closed-form embedding (nudity: 0.1, objects: 1e-3)"}

    def validate(self) -> None:
        super().validate()
        positive(self, "embedding_lam")
        non_negative(self, "epochs")


def adversarial_embedding(edited: list[torch.Tensor], original: list[torch.Tensor], rows: torch.Tensor,
                          lam: float) -> torch.Tensor:
    """c′ for each row of `rows` (n, d): the solution of (Σ W′ᵀW′ + λI) c′ = (Σ W′ᵀW) c (float64)."""
    d = rows.shape[1]
    dev = edited[0].device
    a = lam * torch.eye(d, dtype=torch.float64, device=dev)
    b = torch.zeros(d, d, dtype=torch.float64, device=dev)
    for wn, wo in zip(edited, original):
        wn, wo = wn.double(), wo.double().to(dev)
        a += wn.T @ wn
        b += wn.T @ wo
    return torch.linalg.solve(a, b @ rows.double().to(dev).T).T


@register
class RECE(Eraser):
    name = "rece"
    description = "UCE, then closed-form adversarial embeddings of the edited model erased again for N epochs"
    Config = RECEConfig

    def erase(self, pipe, request: EraseRequest):
        setup = prepare(pipe, request)
        cfg, state, encoder, preserve, probes, rows = (setup.cfg, setup.state, setup.encoder, setup.preserve,
                                                       setup.probes, setup.rows)
        scales = (cfg.lam, cfg.erase_scale, cfg.preserve_scale)
        weights = apply_transform(state.original, uce_transform(rows.erase, rows.guide, rows.preserve, *scales))
        names = list(state.original)
        residuals = []
        for _ in range(cfg.epochs):
            adv = adversarial_embedding([weights[n] for n in names], [state.original[n] for n in names],
                                        rows.erase, cfg.embedding_lam)
            # How far the edited model's K/V of c′ are from the original's K/V of the concept (lower = c′ works).
            residuals.append(self.mismatch(weights, state.original, adv, rows.erase))
            erase = torch.cat([rows.erase.double(), adv])
            guide = torch.cat([rows.guide.double(), rows.guide.double()])
            weights = apply_transform(weights, uce_transform(erase, guide, rows.preserve, *scales))
        extras = UCE.checked(state.original, weights, encoder, probes, cfg)
        extras["adversarial_mismatch"] = residuals
        return state.finish(weights, self.name, cfg.as_dict(), request.targets, preserve, extras)

    @staticmethod
    def mismatch(edited, original, adv, rows) -> float:
        num = sum(float((adv @ edited[n].double().T - rows.double() @ original[n].double().T).norm() ** 2)
                  for n in edited)
        den = sum(float((rows.double() @ original[n].double().T).norm() ** 2) for n in edited)
        return round((num / max(den, 1e-300)) ** 0.5, 6)
