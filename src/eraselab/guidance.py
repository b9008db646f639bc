"""Classifier-free guidance, and the hook through which inference-time erasure methods change it.

The generation engine encodes, per probe, the unconditional (negative) prompt, the prompt, and any extra
prompts a hook asks for, runs the UNet once on all of them stacked as one batch, then asks the hook to
combine the noise predictions. Training-based methods change weights and leave guidance to plain `Guidance`.

Hooks are registered by the `kind` an Edit's `generation` metadata stores. The hooks of eraselab's own
inference-time methods (negative prompt, SLD) live here, below the methods that make their Edits, so that
generating with a saved Edit needs no method module; third-party hooks register with
`@GUIDANCE.register(kind)` or under the entry-point group "eraselab.guidance" (see eraselab/registry.py).
"""
from __future__ import annotations

import torch

from .errors import EraseLabError
from .registry import Registry


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
            return (
                f"negative prompt {probe.prompt!r} equals the prompt, which makes sampling unguided "
                "(guidance has nothing to push against), not an erasure"
            )
        return None


# SLD's hyper-parameter sets, as diffusers ships them (SafetyConfig WEAK / MEDIUM / STRONG / MAX); the paper's
# code defaults to MEDIUM. Warm-up is counted in sampler steps, as in the paper's 50-step setting.
SLD_STRENGTHS = {
    "weak": {"warmup_steps": 15, "guidance_scale": 20.0, "threshold": 0.0, "momentum_scale": 0.0,
             "momentum_beta": 0.0},
    "medium": {"warmup_steps": 10, "guidance_scale": 1000.0, "threshold": 0.01, "momentum_scale": 0.3,
               "momentum_beta": 0.4},
    "strong": {"warmup_steps": 7, "guidance_scale": 2000.0, "threshold": 0.025, "momentum_scale": 0.5,
               "momentum_beta": 0.7},
    "max": {"warmup_steps": 0, "guidance_scale": 5000.0, "threshold": 1.0, "momentum_scale": 0.5,
            "momentum_beta": 0.7},
}


class SafeLatentGuidance(Guidance):
    """Safe Latent Diffusion's guidance away from a safety concept (methods/sld.py makes its Edits), for
    generation {"kind": "sld", "concept": ..., "params": {...}}.

    Per step, with ε_u, ε_p, ε_s the unconditional, prompt and safety-concept predictions and g the CFG scale:
        μ = where(ε_p − ε_s ≥ λ_threshold, 0, clamp(|ε_p − ε_s| · s_S, max=1))          (element-wise scale)
        γ = μ (ε_s − ε_u) + s_m ν;   ν ← β_m ν + (1 − β_m) γ                               (momentum)
        ε = ε_u + g [(ε_p − ε_u) − γ]   once the step index reaches the warm-up, else plain CFG.
    """

    kind = "sld"

    def __init__(self, spec: dict | None = None):
        super().__init__(spec)
        self.concept = self.spec["concept"]
        self.params = {**SLD_STRENGTHS["medium"], **self.spec.get("params", {})}

    def inactive_reason(self, probe) -> str | None:
        p = self.params
        if probe.guidance <= 1 or p["guidance_scale"] <= 1:
            return (
                "sld: safety guidance is off without classifier-free guidance (guidance ≤ 1), as in diffusers"
            )
        if p["warmup_steps"] >= probe.steps:
            return (
                f"sld: its warm-up is {p['warmup_steps']} steps but sampling has {probe.steps}, so safety "
                "guidance never acts and the images equal the original model's; use more --steps or "
                "strength max (no warm-up)"
            )
        return None

    def extra_prompts(self) -> list[str]:
        return [self.concept]

    def combine(self, eps_uncond, eps_text, eps_extra, guidance, step_index, state):
        p = self.params
        if guidance <= 1.0:  # no classifier-free guidance, hence no safety guidance either (both references)
            return eps_text
        direction = eps_text - eps_uncond
        if p["guidance_scale"] <= 1.0:  # diffusers' enable_safety_guidance needs an SLD scale above 1
            return eps_uncond + guidance * direction
        eps_safe = eps_extra[0]
        gap = eps_text - eps_safe
        scale = torch.clamp(gap.abs() * p["guidance_scale"], max=1.0)
        scale = torch.where(gap >= p["threshold"], torch.zeros_like(scale), scale)
        momentum = state.get("sld_momentum")
        if momentum is None:
            momentum = torch.zeros_like(direction)
        safety = scale * (eps_safe - eps_uncond) + p["momentum_scale"] * momentum
        state["sld_momentum"] = p["momentum_beta"] * momentum + (1 - p["momentum_beta"]) * safety
        if step_index >= p["warmup_steps"]:
            direction = direction - safety
        return eps_uncond + guidance * direction


GUIDANCE: Registry[type[Guidance]] = Registry("guidance", base=Guidance, entry_points="eraselab.guidance")
for _hook in (Guidance, NegativePromptGuidance, SafeLatentGuidance):
    GUIDANCE.add(_hook.kind, _hook)


def guidance_for(generation: dict | None) -> Guidance:
    """The guidance an Edit's `generation` metadata asks for ({} or None → plain CFG)."""
    if not generation:
        return Guidance()
    kind = generation.get("kind", "cfg")
    if kind not in GUIDANCE:
        raise EraseLabError(f"the edit asks for guidance {kind!r}, which this eraselab does not know; "
                            "upgrade eraselab (or install the package that provides it) or re-create the "
                            "edit")
    return GUIDANCE.get(kind)(generation)
