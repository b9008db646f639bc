"""GPU figures on real-sized models with random weights: generation throughput, denoiser efficiency, erase
time.

    python benchmarks/gpu.py [--families sd14,sdxl,flux] [--out DIR] [--probes N] [--esd-iterations N]
                             [--dtypes fp16,bf16] [--smoke]

For each family, on its published architecture (eraselab.shaped_models; random weights, so no download):
* the card's dense matrix-product rate (8192³, median of 10 after warm-up) per dtype: the ceiling;
* per dtype: images/s of eraselab's engine (`generate`, a fresh store, every probe missing) against the
  diffusers pipeline called once per probe (what the reference repositories' evaluation scripts do), same
  probes, seeds, steps and size;
* per dtype: the engine's first denoiser call (one lane: probes × their guidance branches), replayed: FLOPs by
  torch's FlopCounterMode, time by CUDA events (median of 10) → TFLOP/s and the share of the ceiling;
* erasure with the reference recipes (preset sd): UCE's closed-form edit in seconds; ESD-x in float32 (as the
  official training scripts run it), seconds per iteration over --esd-iterations after the first. A method
  that refuses a family is recorded with its one-line reason.
Every figure goes to DIR/gpu.json as it is measured (a run cut short keeps what it had). `--smoke` runs the
same code on the CPU with tiny pipelines of each family in minutes: a check before a GPU is lent, not a speed
figure. RESULTS.md gets the figures by hand, with the card's name.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from eraselab import generate as engine
from eraselab.errors import EraseLabError
from eraselab.probes import Probe
from eraselab.store import RunStore

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
WORDS = ("cat", "dog", "red car", "blue house", "tree", "boat", "church", "golf ball")
# Per family: image size, steps, guidance as the model cards use them, probes per measurement, and the dtype
# its weights are drawn in (Flux's 17 B parameters in float32 would be 68 GB).
FAMILIES = {"sd14": {"size": 512, "steps": 25, "guidance": 7.5, "probes": 32, "build_dtype": torch.float32},
            "sdxl": {"size": 1024, "steps": 25, "guidance": 5.0, "probes": 8, "build_dtype": torch.float32},
            "flux": {"size": 1024, "steps": 28, "guidance": 3.5, "probes": 8, "build_dtype": torch.bfloat16}}


class Record:
    """Figures measured so far, written to disk after each one."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))
        print(f"{key}: {value}", flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds of fn(): CUDA events on a GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_ceiling(device, dtype) -> float:
    """TFLOP/s of an 8192×8192×8192 matrix product on random data."""
    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device) / 1e12


def probes_for(n: int, steps: int, size: int, guidance: float) -> list[Probe]:
    return [Probe(f"a photo of a {WORDS[i % len(WORDS)]}", seed=i, steps=steps, width=size, height=size,
                  guidance=guidance) for i in range(n)]


def per_prompt(pipe, probes) -> None:
    for p in probes:
        pipe(p.prompt, num_inference_steps=p.steps, guidance_scale=p.guidance, height=p.height, width=p.width,
             generator=torch.Generator("cpu").manual_seed(p.seed))


def with_engine(pipe, probes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine.generate(pipe, probes, RunStore(folder), progress=False)


def images_per_second(fn, pipe, probes, device) -> float:
    fn(pipe, probes[:2])  # warm-up: kernels chosen, caches filled
    sync(device)
    t0 = time.perf_counter()
    fn(pipe, probes)
    sync(device)
    return len(probes) / (time.perf_counter() - t0)


def denoiser(pipe) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def denoiser_rate(pipe, probes, device) -> dict:
    """The engine's first denoiser call, captured and replayed: rows, GFLOP, TFLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    net, captured = denoiser(pipe), []

    def capture(module, args, kwargs):
        if not captured:
            captured.append((args, kwargs))

    handle = net.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with_engine(pipe, [p for p in probes[:1]])
    finally:
        handle.remove()
    args, kwargs = captured[0]
    rows = next(t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)).shape[0]
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            net(*args, **kwargs)
        flops = counter.get_total_flops()
        seconds = timed(lambda: net(*args, **kwargs), device)
    return {"rows": rows, "gflop": round(flops / 1e9, 1), "tflops": round(flops / seconds / 1e12, 2)}


def erase_seconds(pipe, method: str, **config):
    """Seconds of one erasure with the reference recipe, or the method's one-line refusal."""
    from eraselab.methods import erase
    from eraselab.models import fingerprint

    fingerprint(pipe)  # outside the timer, as erase() does
    try:
        edit = erase(
            pipe,
            method,
            ["car"],
            preserve=["bus", "truck"] if method == "uce" else (),
            progress=False,
            preset="sd",
            **config,
        )
    except EraseLabError as exc:
        return f"refused: {exc}"
    return edit.seconds


def build(family: str, device, smoke: bool):
    if smoke:
        from eraselab.models import tiny_random_pipeline
        from eraselab.tiny_families import tiny_random_flux_pipeline, tiny_random_sdxl_pipeline

        tiny = {"sd14": lambda: tiny_random_pipeline(sd1_shapes=True), "sdxl": tiny_random_sdxl_pipeline,
                "flux": tiny_random_flux_pipeline}
        return tiny[family]()
    from eraselab.shaped_models import SHAPED

    return SHAPED[family](device=device, dtype=FAMILIES[family]["build_dtype"])


def measure(family: str, args, device, rec: Record) -> None:
    from eraselab.shaped_models import parameter_counts

    settings = dict(FAMILIES[family])
    if args.smoke:
        settings.update(size=0, steps=2, probes=3)  # size 0: the tiny pipeline's own
    if args.probes:
        settings["probes"] = args.probes
    t0 = time.perf_counter()
    pipe = build(family, device, args.smoke)
    rec.put(f"{family}.build_seconds", round(time.perf_counter() - t0, 1))
    rec.put(f"{family}.parameters", parameter_counts(pipe))
    probes = probes_for(settings["probes"], settings["steps"], settings["size"], settings["guidance"])
    rec.put(f"{family}.probes", {k: settings[k] for k in ("probes", "steps", "size", "guidance")})
    for name in args.dtypes.split(","):
        pipe.to(device=device, dtype=DTYPES[name])
        naive = images_per_second(per_prompt, pipe, probes, device)
        ours = images_per_second(with_engine, pipe, probes, device)
        rec.put(f"{family}.images_per_s.{name}", {"per_prompt_pipeline": round(naive, 3),
                                                  "engine": round(ours, 3), "ratio": round(ours / naive, 2)})
        rate = denoiser_rate(pipe, probes, device)
        ceiling = rec.data.get(f"matmul_tflops.{name}")
        rate["share_of_matmul"] = round(rate["tflops"] / ceiling, 3) if ceiling else None
        rec.put(f"{family}.denoiser_call.{name}", rate)
        if device.type == "cuda":
            rec.put(f"{family}.peak_memory_gb.{name}", round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))
            torch.cuda.reset_peak_memory_stats()
    erase_dtype = torch.bfloat16 if family == "flux" and not args.smoke else torch.float32
    pipe.to(device=device, dtype=erase_dtype)
    rec.put(f"{family}.uce_seconds", erase_seconds(pipe, "uce"))
    if family == "flux":
        rec.put(f"{family}.esd_x", erase_seconds(pipe, "esd-x", iterations=1))  # expected: refused
    else:
        one = erase_seconds(pipe, "esd-x", iterations=1)
        many = erase_seconds(pipe, "esd-x", iterations=1 + args.esd_iterations)
        if isinstance(one, str) or isinstance(many, str):
            rec.put(f"{family}.esd_x", one if isinstance(one, str) else many)
        else:
            rec.put(f"{family}.esd_x", {"seconds_per_iteration": round((many - one) / args.esd_iterations, 3),
                                        "first_iteration_seconds": round(one, 2),
                                        "iterations_timed": args.esd_iterations, "dtype": "float32"})
    if device.type == "cuda":
        rec.put(f"{family}.peak_memory_gb.erase", round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))
        torch.cuda.reset_peak_memory_stats()
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="sd14")
    ap.add_argument("--out", type=Path, default=Path("gpu-bench"))
    ap.add_argument("--probes", type=int, default=0, help="probes per measurement (0: the family's default)")
    ap.add_argument("--esd-iterations", type=int, default=20)
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--smoke", action="store_true", help="tiny pipelines on the CPU: checks the script only")
    args = ap.parse_args(argv)
    families = args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown family {unknown[0]!r}; pass some of {', '.join(FAMILIES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rec = Record(args.out / "gpu.json")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.dtypes, args.esd_iterations = "fp32", 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 figures are float32, as the reference scripts
        rec.put("card", torch.cuda.get_device_name(0))
        for name in args.dtypes.split(","):
            rec.put(f"matmul_tflops.{name}", round(matmul_ceiling(device, DTYPES[name]), 1))
    rec.put("versions", {"torch": torch.__version__, "python": platform.python_version(),
                         "diffusers": __import__("diffusers").__version__,
                         "transformers": __import__("transformers").__version__})
    for family in families:
        measure(family, args, device, rec)
    print(json.dumps(rec.data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
