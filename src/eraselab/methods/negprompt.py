"""Negative prompt: classifier-free guidance with the target concepts as the negative prompt (no training)."""
from __future__ import annotations

import time

from .base import Eraser, EraseRequest, MethodConfig
from .inference import guidance_edit
from .registry import register


@register
class NegativePrompt(Eraser):
    name = "negprompt"
    description = "inference-time: sample with the target concepts as the negative prompt"
    Config = MethodConfig
    needs_cross_attention = False

    def erase(self, pipe, request: EraseRequest):
        started = time.perf_counter()
        return guidance_edit(pipe, self.name, request, {"kind": "negative_prompt",
                                                        "negative_prompt": ", ".join(request.targets)}, started)
