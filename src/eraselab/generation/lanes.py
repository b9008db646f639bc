"""Lanes: the fixed number of rows each network call runs, the rows a probe needs, running a network in lanes.

CPU kernels (oneDNN convolutions, MKL GEMMs) choose their blocking and summation order from the batch size, so
the same row computed in batches of 2 and of 16 differs by ~1e-6. Every network call therefore runs on a fixed
number of rows (padded when short); a row's result then depends neither on its neighbours nor on its position.
The lane sizes decide the floating-point result, so they are never derived from free memory or the batch size,
only from the model and image size (or, under lane policy "fit", the request), and they enter the image key.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import EraseLabError
from ..guidance import Guidance
from ..models import default_image_size
from ..probes import Probe

# A lane holds about UNET_LANE_PIXELS latent pixels (SD 1.x at 512 px: 16 rows = 8 probes with their CFG pair;
# the 16-px test model: 64 rows, where per-call overhead dominates) and VAE_LANE_PIXELS image pixels (one
# 512-px decode already fills a GPU; the test model decodes 16 images per call).
UNET_LANE_PIXELS, UNET_LANE_LIMITS = 2 ** 16, (4, 64)
VAE_LANE_PIXELS, VAE_LANE_LIMITS = 2 ** 18, (1, 16)
TEXT_LANE = 8

LANE_POLICIES = ("fixed", "fit")


@dataclass(frozen=True)
class Lanes:
    unet: int
    text: int
    vae: int


def _power_of_two_within(budget: int, limits: tuple[int, int]) -> int:
    return int(min(limits[1], max(limits[0], 2 ** int(math.log2(max(budget, 1))))))


def resolved_size(pipe, probe: Probe) -> tuple[int, int]:
    """(height, width) of the probe's image: its own, or the model's default."""
    default = default_image_size(pipe)
    return probe.height or default, probe.width or default


def lanes(pipe, height: int, width: int, rows: int | None = None) -> Lanes:
    """Rows per UNet / text-encoder / VAE call for images of this size (a pure function of model and size).

    `rows` (lane policy "fit"): the UNet rows a whole request needs at this size; the UNet lane then shrinks
    to the smallest power of two that holds them, so two images do not pay for a 16-row lane."""
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    latent_pixels = (height // scale) * (width // scale)
    unet = _power_of_two_within(UNET_LANE_PIXELS // latent_pixels, UNET_LANE_LIMITS)
    if rows is not None:
        unet = min(unet, max(UNET_LANE_LIMITS[0], 2 ** math.ceil(math.log2(max(rows, 1)))))
    return Lanes(unet=unet, text=TEXT_LANE,
                 vae=_power_of_two_within(VAE_LANE_PIXELS // (height * width), VAE_LANE_LIMITS))


def probe_branches(guidance: Guidance, probe: Probe, cfg: bool = True) -> list[tuple[str, str]]:
    """(branch name, text) rows for one probe. Plain CFG at guidance <= 1 runs the conditional branch only, as
    the diffusers pipeline does; so do families without classifier-free guidance (`cfg=False`, Flux)."""
    if not cfg or (type(guidance) is Guidance and probe.guidance <= 1):
        return [("cond", probe.prompt)]
    rows = [("uncond", guidance.negative_prompt(probe.negative_prompt)), ("cond", probe.prompt)]
    rows += [(f"extra{j}", text) for j, text in enumerate(guidance.extra_prompts())]
    return rows


def lane_plan(pipe, probes: Sequence[Probe], guidance: Guidance, policy: str) -> dict[tuple[int, int], Lanes]:
    """The lanes of each image size in a request. "fixed": a pure function of model and size, so a probe's
    pixels never depend on what else is generated (what `bench` needs to compare runs). "fit": the UNet lane
    shrinks to the rows the request needs at that size — a handful of images costs what it needs, but a
    probe's pixels then depend on how many images were asked for together (the lane size is in every image
    key)."""
    if policy not in LANE_POLICIES:
        raise EraseLabError(f"lane policy must be one of {', '.join(LANE_POLICIES)}, not {policy!r}")
    if policy == "fixed":  # nothing to plan: KeyMaker.lanes falls back to lanes(pipe, h, w)
        return {}
    rows: dict[tuple[int, int], int] = {}
    for p in {p.generation_key(): p for p in probes}.values():
        size = resolved_size(pipe, p)
        rows[size] = rows.get(size, 0) + len(probe_branches(guidance, p, uses_cfg(pipe)))
    return {size: lanes(pipe, *size, rows=n) for size, n in rows.items()}


def uses_cfg(pipe) -> bool:
    """Whether the pipeline's family runs classifier-free guidance branches (Flux: no)."""
    from .family import generation_family

    return generation_family(pipe).classifier_free_guidance


def auto_batch_size(pipe, probe: Probe, branches: int, lane: Lanes | None = None) -> int:
    """Probes per batch: as many as fill one UNet lane with their branches (at least 1).

    The UNet runs in fixed lanes whatever the batch, so a larger batch is not faster; a lane-sized one stores
    its images as soon as they are made, so an interrupted run keeps all but the batch in flight (the first
    images land after one lane's denoising loop) and memory never grows with the number of prompts."""
    lane = lane or lanes(pipe, *resolved_size(pipe, probe))
    return max(1, lane.unet // max(1, branches))


def in_lanes(fn: Callable, inputs: Sequence[torch.Tensor], lane: int,
             before: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """fn(*chunks) over row chunks of exactly `lane` rows (the last padded with copies of row 0), rows in
    order."""
    n = inputs[0].shape[0]
    outs = []
    for start in range(0, n, lane):
        chunk = [x[start:start + lane] for x in inputs]
        short = lane - chunk[0].shape[0]
        if short:
            chunk = [torch.cat([c, x[:1].expand(short, *x.shape[1:])]) for c, x in zip(chunk, inputs)]
        if before is not None:
            before(start, start + lane)
        outs.append(fn(*chunk)[:lane - short])
    return torch.cat(outs)
