"""Negative prompt: classifier-free guidance with the target concepts as the negative prompt (no training).

The negative prompt is the targets' conditioning form (methods/text.py `concept_prompt`): the bare words, as
people type them into SD, or on miniworld their caption form ("a circle"), since miniworld's small causal text
encoder places the bare word far from every caption it was trained on, so a bare-word negative prompt barely
erases there.
"""
from __future__ import annotations

from .base import Eraser, EraseRequest, MethodConfig
from .inference import guidance_edit
from .registry import register
from .text import concept_prompt


@register
class NegativePrompt(Eraser):
    name = "negprompt"
    description = "inference-time: sample with the target concepts as the negative prompt"
    Config = MethodConfig
    needs_cross_attention = False

    def erase(self, pipe, request: EraseRequest):
        negative = ", ".join(concept_prompt(pipe, t) for t in request.targets)
        return guidance_edit(pipe, self.name, request, {"kind": "negative_prompt", "negative_prompt": negative})
