"""Token grounding: a training-time loss that teaches the UNet's cross-attention which words describe which
object.

Why. Trained on the diffusion loss alone, the miniworld model read two-object prompts as a bag of words: both
colours and both shapes appeared, but which colour went on which shape, and which object went left, were at
chance (binding 0.47–0.49, placement 0.60 on "left of"/"above"/… prompts). A linear probe showed the second
noun's token held its own colour no better than the other one's, and nothing made a region of the image attend
to the words of the object drawn there. The loss below is the token loss of TokenCompose (Wang et al., CVPR
2024): for every word of an object's noun phrase (its attributes and its noun; not the article), the share of
that token's cross-attention that falls inside the object's region should be 1:

    L = mean over layers, rows, phrase tokens of (1 − Σ_{p ∈ region} A_j(p) / Σ_p A_j(p))²

where A_j is the token's attention map (softmax over the 77 tokens, averaged over heads). The region is the
object's half of the latent grid (pair scenes put each object in its own half); single-object scenes and empty
captions are not grounded. The loss only changes how the weights are trained: the model is an ordinary
UNet2DConditionModel, and the processor computes exactly what diffusers' AttnProcessor computes.

With weight 0.3 in a stage 2 of 6,116 steps binding went from 0.47 to 1.00 on the gate's seeds; weight 1 bound
as well but cost object, synonym and two-object accuracy (benchmarks/RESULTS.md, "Binding experiments").
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .captions import article
from .render import Scene

# Which half of the grid each slot of a two-object layout occupies: (axis, first half?) — axis 0 rows, 1
# columns.
SLOT_HALF = {"left": (1, True), "right": (1, False), "top": (0, True), "bottom": (0, False)}


class _RecordingCrossAttention:
    """diffusers' AttnProcessor for a cross-attention module, keeping the attention probabilities (with their
    gradient) for the grounding loss."""

    def __init__(self, store: list):
        self.store = store

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)          # (rows·heads, L, T)
        self.store.append(probs.view(-1, attn.heads, probs.shape[1], probs.shape[2]).mean(dim=1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


class CrossAttentionTap:
    """Installs the recording processor on every cross-attention module (`attn2`) of a UNet; `take()` returns
    and clears what the last forward pass recorded, one (rows, L, 77) tensor per module."""

    def __init__(self, unet):
        self.maps: list[torch.Tensor] = []
        processors = {}
        for name, proc in unet.attn_processors.items():
            if name.endswith("attn2.processor"):
                module = unet.get_submodule(name[:-len(".processor")])
                # The processor above skips the branches an SD cross-attention never takes; say so if one
                # would.
                if (module.spatial_norm is not None or module.group_norm is not None or module.norm_cross
                        or module.residual_connection or module.rescale_output_factor != 1.0):
                    raise ValueError(
                        f"{name}: cross-attention with norms or a residual inside is not supported"
                    )
                processors[name] = _RecordingCrossAttention(self.maps)
            else:
                processors[name] = proc
        if not any(isinstance(p, _RecordingCrossAttention) for p in processors.values()):
            raise ValueError("the UNet has no cross-attention modules (attn2) to ground")
        unet.set_attn_processor(processors)

    def take(self) -> list[torch.Tensor]:
        maps, self.maps[:] = list(self.maps), []
        return maps


def phrase_token_positions(
    tokenizer, text: str, phrase: str, start: int, cache: dict | None = None
) -> list[int]:
    """Positions (0 = start token) of the words after its article of `phrase`, which begins at character
    `start` of `text`. CLIP's BPE never merges across spaces, so the tokens before the phrase are those of the
    text before it."""
    key = (text, start)
    if cache is not None and key in cache:
        return cache[key]
    if text[start:start + len(phrase)] != phrase:
        raise ValueError(f"{phrase!r} does not start at character {start} of {text!r}")
    words = phrase.split()
    if words and words[0] == article(" ".join(words[1:])):
        prefix, body = text[:start] + words[0], " ".join(words[1:])
    else:
        prefix, body = text[:start], phrase
    first = 1 + len(tokenizer.tokenize(prefix)) if prefix.strip() else 1
    limit = tokenizer.model_max_length - 1      # the end token's slot when the text is truncated
    positions = [p for p in range(first, first + len(tokenizer.tokenize(body))) if p < limit]
    if cache is not None:
        cache[key] = positions
    return positions


def region_mask(scene: Scene, index: int, size: int) -> torch.Tensor | None:
    """(size, size) 0/1 mask of the half of the grid that holds object `index`; None for a single object."""
    if scene.layout == "single":
        return None
    axis, first = SLOT_HALF[scene.objects[index].position]
    half = slice(0, size // 2) if first else slice(size // 2, size)
    mask = torch.zeros(size, size)
    if axis == 0:
        mask[half] = 1.0
    else:
        mask[:, half] = 1.0
    return mask


def grounding_targets(tokenizer, scenes: Sequence[Scene], texts: Sequence[str],
                      phrases: Sequence[Sequence[tuple[str, int, int]]], cache: dict | None = None
                      ) -> list[tuple[int, list[int], int]]:
    """(batch row, token positions, object index) for every named object of every grounded row."""
    out = []
    for row, (scene, text, named) in enumerate(zip(scenes, texts, phrases)):
        if scene.layout == "single" or not text:
            continue
        for phrase, start, index in named:
            positions = phrase_token_positions(tokenizer, text, phrase, start, cache)
            if positions:
                out.append((row, positions, index))
    return out


def grounding_loss(maps: Sequence[torch.Tensor], scenes: Sequence[Scene],
                   targets: Sequence[tuple[int, list[int], int]]) -> torch.Tensor:
    """The token loss above, averaged over layers and (row, token) pairs; 0 when nothing is grounded."""
    if not targets or not maps:
        return maps[0].new_zeros(()) if maps else torch.zeros(())
    rows = torch.tensor([r for r, pos, _ in targets for _ in pos])
    tokens = torch.tensor([p for _, pos, _ in targets for p in pos])
    # Several layers share a grid size (8×8 and 4×4 here): build each size's (n, L) masks once per batch.
    masks_by_size: dict[int, torch.Tensor] = {}
    losses = []
    for probs in maps:
        size = round(probs.shape[1] ** 0.5)
        if size not in masks_by_size:
            per_object = {(r, i): region_mask(scenes[r], i, size).flatten() for r, _, i in targets}
            masks_by_size[size] = torch.stack([per_object[(r, i)] for r, pos, i in targets for _ in pos])
        mask = masks_by_size[size].to(probs)                                                    # (n, L)
        a = probs[rows, :, tokens]                                                              # (n, L)
        inside = (a * mask).sum(dim=1) / a.sum(dim=1).clamp_min(1e-12)
        losses.append(((1.0 - inside) ** 2).mean())
    return torch.stack(losses).mean()
