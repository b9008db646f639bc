"""What the inference-time methods share: an Edit with no tensors whose `generation` hook changes sampling."""
from __future__ import annotations

from .. import edits
from ..models import fingerprint


def guidance_edit(pipe, method: str, request, generation: dict) -> edits.Edit:
    """An inference-time method erases nothing ahead of generation, so its erase time is 0 (its cost is in
    sampling: the extra guidance branches)."""
    return edits.Edit(tensors={}, method=method, base_fingerprint=fingerprint(pipe),
                      config=request.config.as_dict(), targets=list(request.targets),
                      preserved=list(request.preserve), generation=generation, seconds=0.0)
