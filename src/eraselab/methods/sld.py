"""SLD — Safe Latent Diffusion (Schramowski et al., 2023): inference-time guidance away from a safety concept.

Per step, with ε_u, ε_p, ε_s the unconditional, prompt and safety-concept predictions and g the CFG scale:
    μ = where(ε_p − ε_s ≥ λ_threshold, 0, clamp(|ε_p − ε_s| · s_S, max=1))          (element-wise scale)
    γ = μ (ε_s − ε_u) + s_m ν;   ν ← β_m ν + (1 − β_m) γ                               (momentum)
    ε = ε_u + g [(ε_p − ε_u) − γ]   once the step index reaches the warm-up, else plain CFG.
The four configurations are the paper's hyper-parameter sets, as diffusers ships them (SafetyConfig WEAK /
MEDIUM / STRONG / MAX). Warm-up is counted in sampler steps as in the paper's 50-step setting. The safety concept
is the bare target words (SLD's concept is a text like "nudity, violence", not a caption).

Reference: ml-research/safe-latent-diffusion@2a060e0e3f3fa46aeaa5110adfd2fcbb620dc0a5, src/sld/sld_pipeline.py
(the paper's code; its defaults are MEDIUM), ported to diffusers as pipelines/deprecated/stable_diffusion_safe/
pipeline_stable_diffusion_safe.py (checked against diffusers 0.42.1). Both apply safety guidance only inside
classifier-free guidance: at a CFG scale ≤ 1 they return the prompt's prediction ε_p alone. They differ only at
an SLD scale of exactly 1 (the paper's code guides, diffusers does not), which none of the four sets uses;
eraselab follows diffusers there.

The miniworld preset is MAX. Measured on model 4f82c97 (32 seeds of "a circle"/"a star", 25 steps): MEDIUM and
STRONG, also with their warm-up cut to 5 steps, leave circles at 0.53-0.62 (of 0.62); MAX (threshold 1, no
warm-up) gives 0.09, with stars 0.75 → 0.81.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..guidance import Guidance, register_guidance
from .base import Eraser, EraseRequest, MethodConfig, Recipe, Reference, one_of
from .inference import guidance_edit
from .registry import register

STRENGTHS = {
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
    """Guidance hook for Edits with generation {"kind": "sld", "concept": ..., "params": {...}}."""

    kind = "sld"

    def __init__(self, spec: dict | None = None):
        super().__init__(spec)
        self.concept = self.spec["concept"]
        self.params = {**STRENGTHS["medium"], **self.spec.get("params", {})}

    def inactive_reason(self, probe) -> str | None:
        p = self.params
        if probe.guidance <= 1 or p["guidance_scale"] <= 1:
            return "sld: safety guidance is off without classifier-free guidance (guidance ≤ 1), as in diffusers"
        if p["warmup_steps"] >= probe.steps:
            return (f"sld: its warm-up is {p['warmup_steps']} steps but sampling has {probe.steps}, so safety "
                    "guidance never acts and the images equal the original model's; use more --steps or "
                    "strength max (no warm-up)")
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


register_guidance(SafeLatentGuidance.kind, SafeLatentGuidance)


PAPER = Reference("ml-research/safe-latent-diffusion", "2a060e0e3f3fa46aeaa5110adfd2fcbb620dc0a5",
                  "src/sld/sld_pipeline.py")


@dataclass
class SLDConfig(MethodConfig):
    strength: str = "medium"

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe("paper", PAPER, "the paper's SLD pipeline (= diffusers' StableDiffusionPipelineSafe), MEDIUM "
                               "hyper-parameters; weak / strong / max via strength"),)

    miniworld: ClassVar[dict] = {"strength": "max"}

    help: ClassVar[dict] = {**MethodConfig.help,
                            "strength": "weak, medium, strong or max (diffusers' SafetyConfig values)"}

    def validate(self) -> None:
        one_of(self, "strength", tuple(STRENGTHS))


@register
class SLD(Eraser):
    name = "sld"
    description = "inference-time: safe latent diffusion guidance away from the target concepts"
    Config = SLDConfig
    needs_cross_attention = False

    def erase(self, pipe, request: EraseRequest):
        cfg: SLDConfig = request.config
        spec = {"kind": SafeLatentGuidance.kind, "concept": ", ".join(request.targets),
                "strength": cfg.strength, "params": dict(STRENGTHS[cfg.strength])}
        return guidance_edit(pipe, self.name, request, spec)
