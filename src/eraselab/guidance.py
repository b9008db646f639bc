"""Classifier-free guidance, and the hook through which inference-time erasure methods change it.

The generation engine encodes, per probe, the unconditional (negative) prompt, the prompt, and any extra
prompts a hook asks for, runs the UNet once on all of them stacked as one batch, then asks the hook to
combine the noise predictions. Training-based methods change weights and leave guidance to `CFG`.
Hooks are registered by the `kind` stored in an Edit's `generation` metadata.
"""
from __future__ import annotations

from typing import Callable

import torch

from .errors import EraseLabError


class Guidance:
    """Plain classifier-free guidance: ε = ε_u + g (ε_c − ε_u)."""

    kind = "cfg"

    def __init__(self, spec: dict | None = None):
        self.spec = dict(spec or {})

    def negative_prompt(self, probe_negative: str) -> str:
        """The unconditional branch's prompt for a probe whose own negative prompt is `probe_negative`."""
        return probe_negative

    def extra_prompts(self) -> list[str]:
        """Further conditions to encode and denoise alongside each probe (e.g. SLD's safety concept)."""
        return []

    def combine(self, eps_uncond: torch.Tensor, eps_text: torch.Tensor, eps_extra: list[torch.Tensor],
                guidance: float, step_index: int, state: dict) -> torch.Tensor:
        """Combine per-branch predictions (each B×C×H×W) into one ε. `state` is a per-batch dict that a hook
        may use to carry values across steps (SLD's momentum); the engine makes a new one per batch."""
        return eps_uncond + guidance * (eps_text - eps_uncond)

    def inactive_reason(self, probe) -> str | None:
        """Why this hook would leave `probe`'s image exactly as plain CFG makes it (None: it acts). The engine
        warns once, so a setting that silently does nothing is never mistaken for an erasure."""
        return None


class NegativePromptGuidance(Guidance):
    """Erasure by negative prompt: the target concept replaces (or joins) the unconditional prompt."""

    kind = "negative_prompt"

    def negative_prompt(self, probe_negative: str) -> str:
        concept = self.spec["negative_prompt"]
        return f"{probe_negative}, {concept}" if probe_negative else concept

    def inactive_reason(self, probe) -> str | None:
        if probe.guidance <= 1:
            return f"negative prompt: guidance {probe.guidance} ≤ 1 runs no unconditional branch to replace"
        if " ".join(self.negative_prompt(probe.negative_prompt).split()) == " ".join(probe.prompt.split()):
            return (f"negative prompt {probe.prompt!r} equals the prompt, which makes sampling unguided (guidance "
                    "has nothing to push against), not an erasure")
        return None


_REGISTRY: dict[str, Callable[[dict], Guidance]] = {"cfg": Guidance, "negative_prompt": NegativePromptGuidance}


def register_guidance(kind: str, factory: Callable[[dict], Guidance]) -> None:
    _REGISTRY[kind] = factory


def guidance_for(generation: dict | None) -> Guidance:
    """The guidance an Edit's `generation` metadata asks for ({} or None → plain CFG)."""
    if not generation:
        return Guidance()
    kind = generation.get("kind", "cfg")
    if kind not in _REGISTRY:
        # Inference-time methods register themselves on import.
        try:
            from . import methods  # noqa: F401
        except ImportError:
            pass
    if kind not in _REGISTRY:
        raise EraseLabError(f"the edit asks for guidance {kind!r}, which this eraselab does not know; "
                            "upgrade eraselab or re-create the edit")
    return _REGISTRY[kind](generation)
