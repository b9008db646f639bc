"""What the inference-time methods share: an Edit with no tensors whose `generation` hook changes sampling."""
from __future__ import annotations

import time

from .. import edits
from ..models import fingerprint


def guidance_edit(pipe, method: str, request, generation: dict, started: float) -> edits.Edit:
    return edits.Edit(tensors={}, method=method, base_fingerprint=fingerprint(pipe),
                      config=request.config.as_dict(), targets=list(request.targets),
                      preserved=list(request.preserve), generation=generation,
                      seconds=round(time.perf_counter() - started, 4))
