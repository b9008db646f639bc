"""SLD — Safe Latent Diffusion (Schramowski et al., 2023): inference-time guidance away from a safety concept.

The guidance itself is `eraselab.guidance.SafeLatentGuidance` (formulas there), so that generating with a
saved SLD Edit needs no method module; this module makes the Edit. The four strengths are the paper's
hyper-parameter sets, as diffusers ships them (SafetyConfig WEAK / MEDIUM / STRONG / MAX). The safety concept
is the bare target words (SLD's concept is a text like "nudity, violence", not a caption).

Reference: ml-research/safe-latent-diffusion@2a060e0e3f3fa46aeaa5110adfd2fcbb620dc0a5, src/sld/sld_pipeline.py
(the paper's code; its defaults are MEDIUM), ported to diffusers as
pipelines/deprecated/stable_diffusion_safe/ pipeline_stable_diffusion_safe.py (checked against diffusers
0.42.1). Both apply safety guidance only inside classifier-free guidance: at a CFG scale ≤ 1 they return the
prompt's prediction ε_p alone. They differ only at an SLD scale of exactly 1 (the paper's code guides,
diffusers does not), which none of the four sets uses; eraselab follows diffusers there.

The miniworld preset is MAX: on the embedded model the weaker sets, even with a shorter warm-up, leave the
target about as recognisable as before (measurements in benchmarks/RESULTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..guidance import SLD_STRENGTHS, SafeLatentGuidance
from .base import (
    Eraser,
    EraseRequest,
    MethodConfig,
    OneOf,
    Recipe,
    Reference,
    setting,
)
from .inference import guidance_edit
from .registry import register

STRENGTHS = SLD_STRENGTHS

PAPER = Reference("ml-research/safe-latent-diffusion", "2a060e0e3f3fa46aeaa5110adfd2fcbb620dc0a5",
                  "src/sld/sld_pipeline.py")


@dataclass
class SLDConfig(MethodConfig):
    strength: str = setting("medium", "weak, medium, strong or max (diffusers' SafetyConfig values)",
                            OneOf(STRENGTHS))

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe("paper", PAPER, "the paper's SLD pipeline (= diffusers' StableDiffusionPipelineSafe), MEDIUM "
                               "hyper-parameters; weak / strong / max via strength"),)

    miniworld: ClassVar[dict] = {"strength": "max"}


@register
class SLD(Eraser):
    name = "sld"
    description = "inference-time: safe latent diffusion guidance away from the target concepts"
    Config = SLDConfig
    needs_cross_attention = False
    # Acts through classifier-free guidance, which Flux (guidance-distilled) does not run.
    families = ("sd", "sdxl")

    def erase(self, pipe, request: EraseRequest):
        cfg: SLDConfig = request.config
        spec = {"kind": SafeLatentGuidance.kind, "concept": ", ".join(request.targets),
                "strength": cfg.strength, "params": dict(STRENGTHS[cfg.strength])}
        return guidance_edit(pipe, self.name, request, spec)
