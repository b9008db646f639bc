"""Deterministic, batched, cached, sharded image generation for Stable-Diffusion-family pipelines.

`generate(pipe, probes, store)` turns probes into PNGs in a RunStore and returns their image keys. It runs its
own denoising loop instead of `pipe.__call__` so that it can

* batch many probes (and the CFG branches of each) into one UNet call per step, with per-probe guidance scales,
  negative prompts and seeds;
* keep every probe's pixels independent of its batch: each probe draws its initial latent (and, for stochastic
  samplers, its step noise) from its own `torch.Generator("cpu").manual_seed(seed)`, and every network call runs on
  a *fixed number of rows* (a "lane", padded when short). CPU kernels (oneDNN convolutions, MKL GEMMs) choose
  their blocking and summation order from the batch size, so the same row computed in batches of 2 and of 16
  differs by ~1e-6; with the shape fixed, a row's result does not depend on its neighbours or its position
  (tests/test_generate.py checks batch sizes 1, 3 and 8 give bit-identical PNGs). The lane sizes are part of the
  image key, as are the device type and dtype;
* skip what the store already holds (content-addressed cache) and resume after a crash;
* share the work between processes (`shard=(index, count)`, or automatically under `accelerate launch`).

The step arithmetic is the diffusers Stable Diffusion pipeline's (same latents, scale_model_input, CFG formula,
scheduler.step arguments, VAE scaling and post-processing), so with lanes of the pipeline's own shapes the engine
reproduces `pipe(...)` bit for bit; benchmarks/generate_throughput.py measures both.
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from .edits import applied_edit
from .errors import EraseLabError, warn_once
from .guidance import Guidance, guidance_for
from .models import default_image_size, fingerprint
from .probes import Probe
from .provenance import library_versions, sha256_hex, stable_json
from .samplers import make_scheduler, sampler_config, step_kwargs
from .store import RunStore, producer_info
from .threads import rebalance_threads

# Rows per network call ("lanes"). They decide the floating-point result, so they are never derived from free
# memory or the batch size, only from the model and image size, and they enter the image key. A lane holds about
# UNET_LANE_PIXELS latent pixels (SD 1.x at 512 px: 16 rows = 8 probes with their CFG pair; the 16-px test model:
# 64 rows, where per-call overhead dominates) and VAE_LANE_PIXELS image pixels (one 512-px decode already fills a
# GPU; the test model decodes 16 images per call).
UNET_LANE_PIXELS, UNET_LANE_LIMITS = 2 ** 16, (4, 64)
VAE_LANE_PIXELS, VAE_LANE_LIMITS = 2 ** 18, (1, 16)
TEXT_LANE = 8
_VAE_FP_ATTR = "_eraselab_vae_fingerprint"


class GenerationHook:
    """The hook protocol (subclassing is optional; every method is optional and looked up with getattr).

    on_batch_start(pipe, probes)   before a batch is denoised; `probes` is the list in this batch. An attention
                                   recorder installs its processors here (`pipe.unet.set_attn_processor`).
    on_unet_call(step_index, timestep, rows)
                                   before each UNet call; `rows` has one entry per row of the call (the call always
                                   has the lane's fixed number of rows): (index into this batch's probes, branch)
                                   with branch "uncond", "cond" or "extra<j>", or None for a padding row.
    on_batch_end(probes, image_keys)
                                   after the batch's images are stored; restore processors here.
    The edit (if any) is applied during all these calls. Hooks must not change the UNet's outputs unless that is
    their purpose (then the image keys, which do not know about hooks, no longer identify the pixels).
    """

    def on_batch_start(self, pipe, probes: list[Probe]) -> None: ...

    def on_unet_call(self, step_index: int, timestep, rows: list) -> None: ...

    def on_batch_end(self, probes: list[Probe], image_keys: list[str]) -> None: ...


# ---- identity ------------------------------------------------------------------------------------------------
def _vae_fingerprint(pipe) -> str:
    fp = getattr(pipe, _VAE_FP_ATTR, None)
    if fp is None:
        h = [f"{name}|{tuple(t.shape)}|{t.dtype}".encode() + t.detach().cpu().contiguous().reshape(-1)
             .view(torch.uint8).numpy().tobytes() for name, t in sorted(pipe.vae.state_dict().items())]
        fp = sha256_hex(*h)[:16]
        setattr(pipe, _VAE_FP_ATTR, fp)
    return fp


def numerics(pipe) -> dict:
    """What besides the weights, the probe and the lanes decides the floating-point result."""
    return {"device": pipe.unet.device.type, "dtype": str(pipe.unet.dtype).replace("torch.", ""),
            "vae": _vae_fingerprint(pipe)}


@dataclass(frozen=True)
class Lanes:
    unet: int
    text: int
    vae: int


def _power_of_two_within(budget: int, limits: tuple[int, int]) -> int:
    return int(min(limits[1], max(limits[0], 2 ** int(math.log2(max(budget, 1))))))


def lanes(pipe, height: int, width: int, rows: int | None = None) -> Lanes:
    """Rows per UNet / text-encoder / VAE call for images of this size (a pure function of model and size).

    `rows` (lane policy "fit"): the UNet rows a whole request needs at this size; the UNet lane then shrinks to
    the smallest power of two that holds them, so two images do not pay for a 16-row lane."""
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    latent_pixels = (height // scale) * (width // scale)
    unet = _power_of_two_within(UNET_LANE_PIXELS // latent_pixels, UNET_LANE_LIMITS)
    if rows is not None:
        unet = min(unet, max(UNET_LANE_LIMITS[0], 2 ** math.ceil(math.log2(max(rows, 1)))))
    return Lanes(unet=unet, text=TEXT_LANE,
                 vae=_power_of_two_within(VAE_LANE_PIXELS // (height * width), VAE_LANE_LIMITS))


LANE_POLICIES = ("fixed", "fit")


def lane_plan(pipe, probes: Sequence[Probe], guidance: Guidance, policy: str) -> dict[tuple[int, int], Lanes]:
    """The lanes of each image size in a request. "fixed": a pure function of model and size, so a probe's pixels
    never depend on what else is generated (what `bench` needs to compare runs). "fit": the UNet lane shrinks to
    the rows the request needs at that size — a handful of images costs what it needs, but a probe's pixels then
    depend on how many images were asked for together (the lane size is in every image key)."""
    if policy not in LANE_POLICIES:
        raise EraseLabError(f"lane policy must be one of {', '.join(LANE_POLICIES)}, not {policy!r}")
    if policy == "fixed":  # nothing to plan: _KeyMaker.lanes falls back to lanes(pipe, h, w)
        return {}
    rows: dict[tuple[int, int], int] = {}
    for p in {p.generation_key(): p for p in probes}.values():
        size = resolved_size(pipe, p)
        rows[size] = rows.get(size, 0) + len(_branches(guidance, p))
    return {size: lanes(pipe, *size, rows=n) for size, n in rows.items()}


def resolved_size(pipe, probe: Probe) -> tuple[int, int]:
    default = default_image_size(pipe)
    return probe.height or default, probe.width or default


class _KeyMaker:
    """Image keys: hash(model fingerprint, edit hash, probe generation key, sampler config, numerics, versions)."""

    def __init__(self, pipe, edit_hash: str, plan: dict[tuple[int, int], Lanes] | None = None):
        self.pipe, self.edit_hash, self.plan = pipe, edit_hash, plan or {}
        self.base = stable_json({"model": fingerprint(pipe), "edit": edit_hash, "numerics": numerics(pipe),
                                 "versions": library_versions()})
        self._samplers: dict[str, str] = {}

    def sampler(self, name: str) -> str:
        if name not in self._samplers:
            self._samplers[name] = stable_json(sampler_config(self.pipe, name))
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
    make = _KeyMaker(pipe, edit.content_hash() if edit is not None else "none", plan)
    return [make(p) for p in probes]


# ---- sharding and batching -----------------------------------------------------------------------------------
def distributed_state():
    """accelerate's PartialState for this process. On a machine without CUDA it must be asked for CPU
    explicitly, or it ignores the launcher's ranks (`accelerate launch --multi_gpu --num_processes N` or
    `torchrun --nproc_per_node N` start the processes; gloo connects them)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """An explicit (index, count), or the process's place under `accelerate launch`/torchrun, or None."""
    if shard is None:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        state = distributed_state()
        shard = (state.process_index, state.num_processes)
    index, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= index < count:
        raise EraseLabError(f"shard {index} of {count} does not exist; pass --shard I/N with 0 <= I < N")
    return None if count == 1 else (index, count)


def _group_key(pipe, probe: Probe) -> tuple:
    return (probe.steps, *resolved_size(pipe, probe), probe.sampler)


def _my_share(pipe, unique: dict[str, Probe], shard) -> list[str]:
    """This process's keys. Keys are ordered by group first, then dealt round-robin, so that every shard gets a
    share of every (steps, size, sampler) group and the shards finish at about the same time."""
    order = {}
    keys = sorted(unique, key=lambda k: order.setdefault(_group_key(pipe, unique[k]), len(order)))
    return keys if shard is None else keys[shard[0]::shard[1]]


def _branches(guidance: Guidance, probe: Probe) -> list[tuple[str, str]]:
    """(branch name, text) rows for one probe. Plain CFG at guidance <= 1 runs the conditional branch only, as
    the diffusers pipeline does."""
    if type(guidance) is Guidance and probe.guidance <= 1:
        return [("cond", probe.prompt)]
    rows = [("uncond", guidance.negative_prompt(probe.negative_prompt)), ("cond", probe.prompt)]
    rows += [(f"extra{j}", text) for j, text in enumerate(guidance.extra_prompts())]
    return rows


def auto_batch_size(pipe, probe: Probe, branches: int, lane: Lanes | None = None) -> int:
    """Probes per batch: as many as fill one UNet lane with their branches (at least 1).

    The UNet runs in fixed lanes whatever the batch, so a larger batch is not faster; a lane-sized one stores
    its images as soon as they are made, so an interrupted run keeps all but the batch in flight (the first
    images land after one lane's denoising loop) and memory never grows with the number of prompts."""
    lane = lane or lanes(pipe, *resolved_size(pipe, probe))
    return max(1, lane.unet // max(1, branches))


# ---- network calls in fixed lanes ----------------------------------------------------------------------------
def _in_lanes(fn: Callable, inputs: Sequence[torch.Tensor], lane: int,
              before: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """fn(*chunks) over row chunks of exactly `lane` rows (the last padded with copies of row 0); rows in order."""
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


class _TextEmbeddings:
    """Encodes each distinct string once per generate() call, in fixed lanes, the way diffusers' encode_prompt
    does for SD 1.x/2.x (max-length padding, truncation, last hidden state)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.cache: dict[str, torch.Tensor] = {}
        config = pipe.text_encoder.config
        self.use_mask = bool(getattr(config, "use_attention_mask", False))

    def encode(self, texts: Iterable[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if not todo:
            return
        tok = self.pipe.tokenizer(todo, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")
        device = self.pipe.text_encoder.device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)

        def run(ids_chunk, mask_chunk):
            return self.pipe.text_encoder(ids_chunk, attention_mask=mask_chunk if self.use_mask else None)[0]

        embeds = _in_lanes(run, [ids, mask], TEXT_LANE).to(self.pipe.text_encoder.dtype)
        for text, e in zip(todo, embeds):
            self.cache[text] = e

    def stack(self, texts: list[str]) -> torch.Tensor:
        self.encode(texts)
        return torch.stack([self.cache[t] for t in texts])


# ---- the denoising loop --------------------------------------------------------------------------------------
@dataclass
class _Batch:
    probes: list[Probe]
    keys: list[str]


def check_supported(pipe) -> None:
    """Refuse, in one line, pipelines the generation engine cannot run (so nothing is made for them)."""
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, n, None) is None]
    if missing and not (missing == ["unet"] and getattr(pipe, "transformer", None) is not None):
        raise EraseLabError(f"the pipeline has no {missing[0]}; eraselab generates with Stable Diffusion 1.x/2.x "
                            "style pipelines (UNet + VAE + CLIP text encoder)")
    check_family(pipe)


def check_family(pipe) -> None:
    """Refuse model families the engine does not support yet (SDXL, transformer-based, guidance-embedded)."""
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        raise EraseLabError("transformer-based pipelines (Flux/SD3-style) are not supported yet; use an SD 1.x/2.x "
                            "model")
    unet_config = getattr(getattr(pipe, "unet", None), "config", {})
    if getattr(pipe, "text_encoder_2", None) is not None or unet_config.get("addition_embed_type"):
        raise EraseLabError("SDXL-style pipelines (two text encoders, added time ids) are not supported by the "
                            "generation engine yet; use an SD 1.x/2.x model")
    if unet_config.get("time_cond_proj_dim") is not None:
        raise EraseLabError("guidance-embedded (LCM-style) UNets are not supported by the generation engine; "
                            "use an SD 1.x/2.x model")


@torch.no_grad()
def _denoise(pipe, probes: list[Probe], guidance: Guidance, texts: _TextEmbeddings, hooks, lane: Lanes) -> list:
    """Denoise one batch (same steps, size and sampler) and return PIL images in probe order."""
    first = probes[0]
    h, w = resolved_size(pipe, first)
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    device, dtype = pipe.unet.device, pipe.text_encoder.dtype
    scheduler = make_scheduler(pipe, first.sampler)
    scheduler.set_timesteps(first.steps, device=device)

    from diffusers.utils.torch_utils import randn_tensor

    # One generator per probe, seeded as a user seeds `pipe(generator=...)`: latents first, then step noise.
    generators = [torch.Generator("cpu").manual_seed(p.seed) for p in probes]
    shape = (len(probes), pipe.unet.config.in_channels, h // scale, w // scale)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype) * scheduler.init_noise_sigma

    rows = [(i, branch, text) for i, p in enumerate(probes) for branch, text in _branches(guidance, p)]
    row_probe = torch.tensor([r[0] for r in rows], device=device)
    embeds = texts.stack([r[2] for r in rows]).to(device)
    where = {(i, branch): n for n, (i, branch, _) in enumerate(rows)}
    n_extra = len(guidance.extra_prompts())
    # Probes sharing a guidance scale are combined together; plain-CFG probes at guidance <= 1 take ε_cond.
    by_scale: dict[float, list[int]] = {}
    cond_only = []
    for i, p in enumerate(probes):
        (by_scale.setdefault(float(p.guidance), []) if (i, "uncond") in where else cond_only).append(i)
    states = {g: {} for g in by_scale}
    extra_step_args = step_kwargs(scheduler, generators)
    call_hooks = [hk.on_unet_call for hk in hooks if hasattr(hk, "on_unet_call")]
    lane_rows = [(r[0], r[1]) for r in rows]

    for step_index, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents[row_probe], t)

        def before(start, stop, _step=step_index, _t=t):
            layout = [lane_rows[n] if n < len(lane_rows) else None for n in range(start, stop)]
            for call in call_hooks:
                call(_step, _t, layout)

        eps_rows = _in_lanes(lambda x, e, _t=t: pipe.unet(x, _t, encoder_hidden_states=e, return_dict=False)[0],
                             [model_input, embeds], lane.unet, before if call_hooks else None)
        eps = torch.empty_like(latents)
        if cond_only:
            eps[cond_only] = eps_rows[[where[(i, "cond")] for i in cond_only]]
        for g, members in by_scale.items():
            uncond = eps_rows[[where[(i, "uncond")] for i in members]]
            cond = eps_rows[[where[(i, "cond")] for i in members]]
            extra = [eps_rows[[where[(i, f"extra{j}")] for i in members]] for j in range(n_extra)]
            eps[members] = guidance.combine(uncond, cond, extra, g, step_index, states[g])
        latents = scheduler.step(eps, t, latents, **extra_step_args, return_dict=False)[0]

    bad = [i for i in range(len(probes)) if not bool(torch.isfinite(latents[i]).all())]
    if bad:
        p = probes[bad[0]]
        raise EraseLabError(f"sampling {p.prompt!r} (seed {p.seed}) at guidance {p.guidance} produced non-finite "
                            "latents (NaN/inf), which would be stored as black images; lower --guidance (7.5 is "
                            "usual) or check the edit")
    vae_scale = pipe.vae.config.scaling_factor
    decoded = _in_lanes(lambda z: pipe.vae.decode(z / vae_scale, return_dict=False)[0],
                        [latents.to(pipe.vae.dtype)], lane.vae)
    return pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True] * len(probes))


def _png_bytes(image, key: str, probe: Probe, model: str, edit_hash: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    # Who made the file travels with it (deterministic text, so equal pixels still give equal bytes).
    info.add_text("eraselab", stable_json({"key": key, "probe": probe.generation_fields(), "model": model,
                                           "edit": edit_hash}))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _progress(enabled: bool, total: int, done: int, label: str):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class ImagesPerSecond(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} img/s" if task.speed else "… img/s", style="progress.data.speed")

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), ImagesPerSecond(),
                        TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not enabled)
    task = progress.add_task(label, total=total, completed=done)
    return progress, task


def _report(message: str) -> None:
    print(f"eraselab: {message}", file=sys.stderr)


def generate(pipe, probes: Sequence[Probe], store: RunStore, edit=None, batch_size: int | None = None,
             progress: bool = True, hooks: Sequence = (), shard: tuple[int, int] | None = None,
             run_config: dict | None = None, lane_policy: str = "fixed") -> list[str]:
    """Generate (or find in `store`) one image per probe; return the image keys in probe order.

    Probes already in the store with an intact PNG are skipped without touching the model (a damaged PNG is
    reported and regenerated). `edit` is applied before the first UNet call and reverted afterwards, even on
    error; its `generation` metadata picks the guidance (guidance.guidance_for). `batch_size` is the number of
    probes denoised together (default: one UNet lane's worth, see auto_batch_size); it never changes pixels.
    `hooks` follow the GenerationHook protocol. With `shard=(i, n)` (or under `accelerate launch`) this process
    makes only its share of the missing images; the returned keys still cover every probe, and the other shares
    appear in the store as the other processes finish them. `run_config` is recorded with the run (the command
    line, a benchmark's settings). `lane_policy` is "fixed" (pixels independent of the request) or "fit"
    (cheaper for a few images; see lane_plan).

    Weights changed in place without an Edit are invisible to the keys (the model fingerprint is computed once
    per loaded pipeline), so pass changes as an Edit; an Edit already applied with `edit.apply(pipe)` is
    recognised and stays applied.
    """
    probes = list(probes)
    if not probes:
        return []
    if not all(isinstance(p, Probe) for p in probes):
        raise EraseLabError("generate() takes Probe objects; build them with eraselab.probes.Probe(prompt, seed=…)")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise EraseLabError(f"batch size must be a positive integer, got {batch_size!r}; omit it to choose "
                            "automatically")
    check_supported(pipe)
    # An edit the caller applied beforehand is in the weights already: key the images by it, leave it in place.
    in_place = applied_edit(pipe)
    manage_edit = edit is not None and edit is not in_place
    edit = edit if edit is not None else in_place
    if edit is not None:
        edit.check_base(pipe)
    edit_hash = edit.content_hash() if edit is not None else "none"
    guidance = guidance_for(edit.generation if edit is not None else None)
    for reason in dict.fromkeys(filter(None, map(guidance.inactive_reason, probes))):
        warn_once(reason)
    shard = resolve_shard(shard)
    model = fingerprint(pipe)
    make_key = _KeyMaker(pipe, edit_hash, lane_plan(pipe, probes, guidance, lane_policy))
    keys = [make_key(p) for p in probes]
    unique = dict(zip(reversed(keys), reversed(probes)))  # first probe per key wins
    unique = {k: unique[k] for k in dict.fromkeys(keys)}

    run_id = sha256_hex(stable_json(run_config or {}), model, edit_hash, *unique)[:16]
    store.start_run(run_id, {"run_config": run_config or {}, "probes": len(probes), "images": len(unique),
                             "numerics": numerics(pipe)}, model, edit_hash)
    store.put_probes(probes)
    mine = _my_share(pipe, unique, shard)
    intact, damaged = store.complete_images(mine)
    if damaged:
        _report(f"{len(damaged)} stored image(s) failed their sha256 check (truncated or corrupted); "
                "regenerating them")
    store.link_run_images(run_id, [k for k in mine if k in intact])
    todo = [k for k in mine if k not in intact]
    if todo:
        _generate_missing(pipe, _Batch([unique[k] for k in todo], todo), store, edit if manage_edit else None,
                          guidance, batch_size, progress, hooks, shard, run_id, make_key, len(mine))
    if len(store.known_images(unique)) == len(unique):
        store.finish_run(run_id)
    return keys


def _batches(pipe, work: _Batch, guidance: Guidance, batch_size: int | None, make_key: _KeyMaker) -> list[_Batch]:
    groups: dict[tuple, _Batch] = {}
    for p, k in zip(work.probes, work.keys):
        g = groups.setdefault(_group_key(pipe, p), _Batch([], []))
        g.probes.append(p)
        g.keys.append(k)
    out = []
    for g in groups.values():
        size = batch_size or auto_batch_size(pipe, g.probes[0], max(len(_branches(guidance, p)) for p in g.probes),
                                             make_key.lanes(*resolved_size(pipe, g.probes[0])))
        out += [_Batch(g.probes[i:i + size], g.keys[i:i + size]) for i in range(0, len(g.probes), size)]
    return out


def _generate_missing(pipe, work: _Batch, store: RunStore, edit_to_apply, guidance: Guidance, batch_size,
                      progress: bool, hooks, shard, run_id: str, make_key: _KeyMaker, total: int) -> None:
    texts = _TextEmbeddings(pipe)
    model, edit_hash = fingerprint(pipe), make_key.edit_hash
    producer = producer_info(shard, pipe.unet.device.type)
    label = "generating" + (f" (shard {shard[0] + 1}/{shard[1]})" if shard else "")
    bar, task = _progress(progress, total, total - len(work.keys), label)
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
                entries = [{"key": k, "png": _png_bytes(img, k, p, model, edit_hash), "probe": p,
                            "model_fingerprint": model, "edit_hash": edit_hash, "producer": producer,
                            "config": {"sampler": json.loads(make_key.sampler(p.sampler)),
                                       "size": list(resolved_size(pipe, p)), "numerics": numerics(pipe),
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


def images_for(store: RunStore, keys: Sequence[str]) -> list:
    """PIL images for image keys, in order (raises a one-line error for a key not in the store)."""
    from PIL import Image

    out = []
    for key in keys:
        img = Image.open(io.BytesIO(store.load_png(key)))
        img.load()
        out.append(img)
    return out
