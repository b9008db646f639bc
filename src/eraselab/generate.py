"""Deterministic, batched, cached, sharded image generation for SD 1.x/2.x, SDXL and Flux pipelines.

`generate(pipe, probes, store)` turns probes into PNGs in a RunStore and returns their image keys. It runs
its own denoising loop instead of `pipe.__call__` so that it can

* batch many probes (and the CFG branches of each) into one UNet call per step, with per-probe guidance
  scales, negative prompts and seeds;
* keep every probe's pixels independent of its batch: each probe draws its noise from its own seeded generator
  and every network call runs on a fixed number of rows (a "lane"; generation/lanes.py says why).
  tests/test_generate.py checks batch sizes 1, 3 and 8 give bit-identical PNGs. The lane sizes are part of the
  image key, as are the device type and dtype;
* skip what the store already holds (content-addressed cache) and resume after a crash;
* share the work between processes (`shard=(index, count)`, or automatically under `accelerate launch`).

This module is the request: keys, cache check, this process's share, batches, storing. The parts live in
eraselab/generation/ (one job each, listed in its __init__); their public names are re-exported here. The step
arithmetic is the diffusers pipeline's (generation/denoise.py), so with lanes of the pipeline's own shapes the
engine reproduces `pipe(...)` bit for bit; benchmarks/generate_throughput.py measures both.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .edit_modules import generation_hooks
from .edits import applied_edit
from .errors import EraseLabError, warn_once
from .generation.denoise import denoise_batch as _denoise  # looked up here at call time (tests patch it)
from .generation.family import check_generation_family, check_supported, generation_family
from .generation.hooks import GenerationHook
from .generation.keys import KeyMaker, image_keys, numerics
from .generation.lanes import (
    LANE_POLICIES,
    TEXT_LANE,
    UNET_LANE_LIMITS,
    UNET_LANE_PIXELS,
    VAE_LANE_LIMITS,
    VAE_LANE_PIXELS,
    Lanes,
    auto_batch_size,
    lane_plan,
    lanes,
    probe_branches,
    resolved_size,
    uses_cfg,
)
from .generation.png import images_for, png_bytes
from .generation.progress import progress_bar, report
from .generation.sharding import distributed_state, group_key, my_share, resolve_shard
from .generation.text_cache import TextEmbeddings
from .guidance import Guidance, guidance_for
from .models import default_image_size, fingerprint
from .probes import Probe
from .provenance import sha256_hex, stable_json
from .store import RunStore, producer_info
from .threads import rebalance_threads

__all__ = [
    "LANE_POLICIES",
    "TEXT_LANE",
    "UNET_LANE_LIMITS",
    "UNET_LANE_PIXELS",
    "VAE_LANE_LIMITS",
    "VAE_LANE_PIXELS",
    "GenerationHook",
    "Guidance",
    "Lanes",
    "auto_batch_size",
    "check_generation_family",
    "check_supported",
    "default_image_size",
    "distributed_state",
    "generate",
    "image_keys",
    "images_for",
    "lane_plan",
    "lanes",
    "numerics",
    "resolve_shard",
    "resolved_size",
]


@dataclass
class _Batch:
    probes: list[Probe]
    keys: list[str]


def generate(pipe, probes: Sequence[Probe], store: RunStore, edit=None, batch_size: int | None = None,
             progress: bool = True, hooks: Sequence = (), shard: tuple[int, int] | None = None,
             run_config: dict | None = None, lane_policy: str = "fixed") -> list[str]:
    """Generate (or find in `store`) one image per probe; return the image keys in probe order.

    Probes already in the store with an intact PNG are skipped without touching the model (a damaged PNG is
    reported and regenerated). `edit` is applied before the first UNet call and reverted afterwards, even on
    error; its `generation` metadata picks the guidance (guidance.guidance_for). `batch_size` is the number
    of probes denoised together (default: one UNet lane's worth, see auto_batch_size); it never changes
    pixels. `hooks` follow the GenerationHook protocol. With `shard=(i, n)` (or under `accelerate launch`)
    this process makes only its share of the missing images; the returned keys still cover every probe, and
    the other shares appear in the store as the other processes finish them. `run_config` is recorded with
    the run (the command line, a benchmark's settings). `lane_policy` is "fixed" (pixels independent of the
    request) or "fit" (cheaper for a few images; see lane_plan).

    Weights changed in place without an Edit are a new model: its fingerprint, and so the keys, change (see
    pipeline_state); an Edit already applied with `edit.apply(pipe)` is recognised and stays applied.
    """
    probes = list(probes)
    if not probes:
        return []
    if not all(isinstance(p, Probe) for p in probes):
        raise EraseLabError("generate() takes Probe objects; build them with "
                            "eraselab.probes.Probe(prompt, seed=…)")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise EraseLabError(f"batch size must be a positive integer, got {batch_size!r}; omit it to choose "
                            "automatically")
    check_supported(pipe)
    # An edit the caller applied beforehand is in the weights already: key the images by it, leave it be.
    in_place = applied_edit(pipe)
    manage_edit = edit is not None and edit is not in_place
    edit = edit if edit is not None else in_place
    if edit is not None:
        edit.check_base(pipe)
    edit_hash = edit.content_hash() if edit is not None else "none"
    guidance = guidance_for(edit.generation if edit is not None else None)
    if edit is not None:  # hooks the edit's own modules run with (SPM's facilitated transport)
        hooks = [*hooks, *generation_hooks(edit.modules)]
    generation_family(pipe).check_request(guidance, probes)
    for reason in dict.fromkeys(filter(None, map(guidance.inactive_reason, probes))):
        warn_once(reason)
    shard = resolve_shard(shard)
    model = fingerprint(pipe)
    make_key = KeyMaker(pipe, edit_hash, lane_plan(pipe, probes, guidance, lane_policy))
    keys = [make_key(p) for p in probes]
    unique = dict(zip(reversed(keys), reversed(probes)))  # first probe per key wins
    unique = {k: unique[k] for k in dict.fromkeys(keys)}

    run_id = sha256_hex(stable_json(run_config or {}), model, edit_hash, *unique)[:16]
    store.start_run(run_id, {"run_config": run_config or {}, "probes": len(probes), "images": len(unique),
                             "numerics": numerics(pipe)}, model, edit_hash)
    store.put_probes(probes)
    mine = my_share(pipe, unique, shard)
    intact, damaged = store.complete_images(mine)
    if damaged:
        report(f"{len(damaged)} stored image(s) failed their sha256 check (truncated or corrupted); "
               "regenerating them")
    store.link_run_images(run_id, [k for k in mine if k in intact])
    todo = [k for k in mine if k not in intact]
    if todo:
        _generate_missing(pipe, _Batch([unique[k] for k in todo], todo), store, edit if manage_edit else None,
                          guidance, batch_size, progress, hooks, shard, run_id, make_key, len(mine))
    if len(store.known_images(unique)) == len(unique):
        store.finish_run(run_id)
    return keys


def _batches(pipe, work: _Batch, guidance: Guidance, batch_size: int | None,
             make_key: KeyMaker) -> list[_Batch]:
    """Batches of probes that share steps, size and sampler, each `batch_size` (or one UNet lane's worth)."""
    groups: dict[tuple, _Batch] = {}
    for p, k in zip(work.probes, work.keys):
        g = groups.setdefault(group_key(pipe, p), _Batch([], []))
        g.probes.append(p)
        g.keys.append(k)
    out = []
    for g in groups.values():
        rows_per_probe = max(len(probe_branches(guidance, p, uses_cfg(pipe))) for p in g.probes)
        size = batch_size or auto_batch_size(pipe, g.probes[0], rows_per_probe,
                                             make_key.lanes(*resolved_size(pipe, g.probes[0])))
        out += [_Batch(g.probes[i:i + size], g.keys[i:i + size]) for i in range(0, len(g.probes), size)]
    return out


def _generate_missing(pipe, work: _Batch, store: RunStore, edit_to_apply, guidance: Guidance, batch_size,
                      progress: bool, hooks, shard, run_id: str, make_key: KeyMaker, total: int) -> None:
    texts = TextEmbeddings(pipe)
    model, edit_hash = fingerprint(pipe), make_key.edit_hash
    producer = producer_info(shard, texts.family.denoiser.device.type)
    label = "generating" + (f" (shard {shard[0] + 1}/{shard[1]})" if shard else "")
    bar, task = progress_bar(progress, total, total - len(work.keys), label)
    if edit_to_apply is not None:
        edit_to_apply.apply(pipe)
    try:
        with bar:
            for batch in _batches(pipe, work, guidance, batch_size, make_key):
                rebalance_threads()
                for hook in hooks:
                    if hasattr(hook, "on_batch_start"):
                        hook.on_batch_start(pipe, batch.probes)
                images = _denoise(pipe, batch.probes, guidance, texts, hooks,
                                  make_key.lanes(*resolved_size(pipe, batch.probes[0])))
                batch_numerics = numerics(pipe)  # hashes checked per call: once per batch, not per image
                entries = [{"key": k, "png": png_bytes(img, k, p, model, edit_hash), "probe": p,
                            "model_fingerprint": model, "edit_hash": edit_hash, "producer": producer,
                            "config": {"sampler": json.loads(make_key.sampler(p.sampler)),
                                       "size": list(resolved_size(pipe, p)), "numerics": batch_numerics,
                                       "lanes": asdict(make_key.lanes(*resolved_size(pipe, p))),
                                       "generation": p.generation_fields()}}
                           for k, p, img in zip(batch.keys, batch.probes, images)]
                # Files, then rows, then the run's links: a kill between any two leaves nothing half-recorded.
                store.put_images(entries)
                store.link_run_images(run_id, batch.keys)
                for hook in hooks:
                    if hasattr(hook, "on_batch_end"):
                        hook.on_batch_end(batch.probes, batch.keys)
                bar.advance(task, len(batch.keys))
    finally:
        if edit_to_apply is not None:
            edit_to_apply.revert(pipe)
