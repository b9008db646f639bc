"""The GenerationHook protocol: observers called around each batch and before each UNet call."""
from __future__ import annotations

from ..probes import Probe


class GenerationHook:
    """The hook protocol (subclassing is optional; every method is optional and looked up with getattr).

    on_batch_start(pipe, probes)
        before a batch is denoised; `probes` is the list in this batch. An attention recorder installs its
        processors here (`pipe.unet.set_attn_processor`).
    on_unet_call(step_index, timestep, rows)
        before each UNet call; `rows` has one entry per row of the call (the call always has the lane's fixed
        number of rows): (index into this batch's probes, branch) with branch "uncond", "cond" or "extra<j>",
        or None for a padding row.
    on_batch_end(probes, image_keys)
        after the batch's images are stored; restore processors here.
    The edit (if any) is applied during all these calls. Hooks must not change the UNet's outputs unless that
    is their purpose (then the image keys, which do not know about hooks, no longer identify the pixels).
    """

    def on_batch_start(self, pipe, probes: list[Probe]) -> None: ...

    def on_unet_call(self, step_index: int, timestep, rows: list) -> None: ...

    def on_batch_end(self, probes: list[Probe], image_keys: list[str]) -> None: ...
