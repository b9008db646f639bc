"""Image identity: everything that decides a probe's pixels, hashed into its image key.

A key is hash(model fingerprint, edit hash, probe generation key, sampler config, image size, lanes,
numerics (device, dtype, VAE weights), library versions, and for families other than SD the family's
settings that decide pixels, e.g. SDXL's time ids and zeroed empty negative prompt). Equal keys mean equal
PNGs, which is what lets the store act as a content-addressed cache.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch

from ..guidance import guidance_for
from ..models import fingerprint
from ..pipeline_state import state_of
from ..probes import Probe
from ..provenance import library_versions, sha256_hex, stable_json
from .family import generation_family
from .lanes import Lanes, lane_plan, lanes, resolved_size


def _vae_fingerprint(pipe) -> str:
    """The VAE's weights' hash, cached while they are unchanged (see pipeline_state)."""
    tensors = pipe.vae.state_dict()
    return state_of(pipe).vae.get(tensors, lambda: _hash_vae(tensors))


def _hash_vae(tensors: dict[str, torch.Tensor]) -> str:
    h = [f"{name}|{tuple(t.shape)}|{t.dtype}".encode() + t.detach().cpu().contiguous().reshape(-1)
         .view(torch.uint8).numpy().tobytes() for name, t in sorted(tensors.items())]
    return sha256_hex(*h)[:16]


def numerics(pipe) -> dict:
    """What besides the weights, the probe and the lanes decides the floating-point result."""
    denoiser = denoiser_of(pipe)
    return {"device": denoiser.device.type, "dtype": str(denoiser.dtype).replace("torch.", ""),
            "vae": _vae_fingerprint(pipe)}


def denoiser_of(pipe) -> torch.nn.Module:
    """The UNet, or the transformer of a pipeline that has no UNet."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


class KeyMaker:
    """Image keys for one request: the per-model part is hashed once, the per-probe part per call."""

    def __init__(self, pipe, edit_hash: str, plan: dict[tuple[int, int], Lanes] | None = None):
        self.pipe, self.edit_hash, self.plan = pipe, edit_hash, plan or {}
        base = {"model": fingerprint(pipe), "edit": edit_hash, "numerics": numerics(pipe),
                "versions": library_versions()}
        family = generation_family(pipe).key_settings()
        if family:  # SD keys stay as they were before other families existed, so stored images stay valid
            base["family"] = family
        self.base = stable_json(base)
        self._samplers: dict[str, str] = {}

    def sampler(self, name: str) -> str:
        if name not in self._samplers:
            self._samplers[name] = stable_json(generation_family(self.pipe).sampler_config(name))
        return self._samplers[name]

    def __call__(self, probe: Probe) -> str:
        h, w = resolved_size(self.pipe, probe)
        return sha256_hex(self.base, probe.generation_key(), self.sampler(probe.sampler), f"{h}x{w}",
                          stable_json(asdict(self.lanes(h, w))))[:32]

    def lanes(self, h: int, w: int) -> Lanes:
        return self.plan.get((h, w)) or lanes(self.pipe, h, w)


def image_keys(pipe, probes: Sequence[Probe], edit=None, lane_policy: str = "fixed") -> list[str]:
    """The keys `generate` would give these probes (without generating anything)."""
    plan = lane_plan(pipe, probes, guidance_for(edit.generation if edit is not None else None), lane_policy)
    make = KeyMaker(pipe, edit.content_hash() if edit is not None else "none", plan)
    return [make(p) for p in probes]
