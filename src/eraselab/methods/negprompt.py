"""Negative prompt: classifier-free guidance with the target concepts as the negative prompt (no training).

The negative prompt is the targets' conditioning form (methods/text.py `concept_prompt`): the bare words, as
people type them into SD, or on miniworld their caption form ("a circle"), since miniworld's small causal text
encoder places the bare word far from every caption it was trained on, so a bare-word negative prompt barely
erases there.

Reference: the diffusers StableDiffusionPipeline's `negative_prompt` argument (huggingface/diffusers@438514c,
src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py), the baseline the seeds' tables run;
tests/test_fidelity_negprompt.py compares images with that pipeline's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Eraser, EraseRequest, MethodConfig, Recipe, Reference
from .inference import guidance_edit
from .registry import register
from .text import concept_prompt

DIFFUSERS = Reference("huggingface/diffusers", "438514c4ec47c88f952f3c4392abcbb1f10756fc",
                      "src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py")


@dataclass
class NegativePromptConfig(MethodConfig):
    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe("diffusers", DIFFUSERS, "classifier-free guidance with the targets, comma-separated, as the "
                                       "pipeline's negative_prompt"),)


@register
class NegativePrompt(Eraser):
    name = "negprompt"
    description = "inference-time: sample with the target concepts as the negative prompt"
    Config = NegativePromptConfig
    needs_cross_attention = False
    # Acts through classifier-free guidance, which Flux (guidance-distilled) does not run.
    families = ("sd", "sdxl")

    def erase(self, pipe, request: EraseRequest):
        negative = ", ".join(concept_prompt(pipe, t) for t in request.targets)
        return guidance_edit(
            pipe, self.name, request, {"kind": "negative_prompt", "negative_prompt": negative}
        )
