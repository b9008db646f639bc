"""GPU figures on a real-sized model with random weights: generation throughput, UNet efficiency, erase time.

    python benchmarks/gpu.py [--out DIR] [--probes 32] [--steps 25] [--size 512] [--esd-iterations 20]
                             [--dtypes fp16,bf16] [--smoke]

On Stable Diffusion 1.4's architecture (eraselab.shaped_models; random weights, so no download) it measures:
* the card's dense matrix-product rate (8192³ products, median of 10 after warm-up) in bf16 and fp16: the
  ceiling the UNet's rate is compared with;
* per dtype: images/s of eraselab's engine (`generate`, a fresh store, every probe missing) against the diffusers
  pipeline called once per probe (what the reference repositories' evaluation scripts do), same probes, seeds
  and steps; the engine's batch is its default (one UNet lane);
* per dtype: one UNet call of the engine's lane (classifier-free guidance doubles the rows): FLOPs counted by
  torch's FlopCounterMode, time by CUDA events (median of 10) → TFLOP/s and the share of the measured ceiling;
* ESD-x (reference recipe, float32 as the official training scripts run it): seconds per iteration over
  `--esd-iterations` iterations after the first (which includes one-time set-up); UCE (reference recipe, one
  target, two preserved concepts): seconds for the whole closed-form edit.
Every figure goes to DIR/gpu.json as it is measured (a run cut short keeps what it had) and a table is printed
last. `--smoke` runs the whole script on the CPU with the tiny SD-1-shaped pipeline in seconds (a check that it
works before a GPU is lent). RESULTS.md gets the figures by hand, with the card's name.
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
from eraselab.generation.lanes import lanes
from eraselab.probes import Probe
from eraselab.store import RunStore

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
WORDS = ("cat", "dog", "red car", "blue house", "tree", "boat", "church", "golf ball")


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


def matmul_ceiling(device, dtype, n: int) -> float:
    """TFLOP/s of an n×n×n matrix product on random data."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device) / 1e12


def probes_for(n: int, steps: int, size: int) -> list[Probe]:
    return [Probe(f"a photo of a {WORDS[i % len(WORDS)]}", seed=i, steps=steps, width=size, height=size)
            for i in range(n)]


def per_prompt(pipe, probes) -> None:
    for p in probes:
        generator = torch.Generator("cpu").manual_seed(p.seed)
        pipe(p.prompt, num_inference_steps=p.steps, guidance_scale=p.guidance, height=p.height, width=p.width,
             generator=generator)


def with_engine(pipe, probes, batch_size=None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine.generate(pipe, probes, RunStore(folder), batch_size=batch_size, progress=False)


def images_per_second(fn, pipe, probes, device) -> float:
    fn(pipe, probes[:2])  # warm-up: kernels chosen, caches filled
    sync(device)
    t0 = time.perf_counter()
    fn(pipe, probes)
    sync(device)
    return len(probes) / (time.perf_counter() - t0)


def unet_rate(pipe, rows: int, size: int, device) -> tuple[float, float]:
    """(TFLOP/s, GFLOP per call) of one UNet call with `rows` rows at `size` pixels."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, dtype = pipe.unet, pipe.unet.dtype
    latent = size // pipe.vae_scale_factor
    x = torch.randn(rows, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    t = torch.full((rows,), 500, device=device)
    ctx = torch.randn(rows, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            unet(x, t, encoder_hidden_states=ctx)
        flops = counter.get_total_flops()
        seconds = timed(lambda: unet(x, t, encoder_hidden_states=ctx), device)
    return flops / seconds / 1e12, flops / 1e9


def erase_seconds(pipe, method: str, **config) -> float:
    from eraselab.methods import erase
    from eraselab.models import fingerprint

    fingerprint(pipe)  # outside the timer, as erase() does
    edit = erase(pipe, method, ["car"], preserve=["bus", "truck"] if method == "uce" else (), progress=False,
                 preset="sd", **config)
    return edit.seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-bench"))
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--esd-iterations", type=int, default=20)
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script, not speed")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rec = Record(args.out / "gpu.json")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 figures are float32, as the reference scripts run
        rec.put("card", torch.cuda.get_device_name(0))
    rec.put("versions", {"torch": torch.__version__, "python": platform.python_version(),
                         "diffusers": __import__("diffusers").__version__,
                         "transformers": __import__("transformers").__version__})
    if args.smoke:
        from eraselab.models import tiny_random_pipeline

        args.probes, args.steps, args.size, args.esd_iterations, args.dtypes = 4, 2, 64, 2, "fp32"
        def build():
            return tiny_random_pipeline(sd1_shapes=True)
    else:
        from eraselab.shaped_models import sd14_shaped_pipeline as build
    for name in args.dtypes.split(","):
        if device.type == "cuda":
            rec.put(f"matmul_tflops.{name}", round(matmul_ceiling(device, DTYPES[name], 8192), 1))

    t0 = time.perf_counter()
    with torch.device(device):  # random weights drawn where they will live: seconds instead of a minute on a CPU
        pipe = build()
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # its tables on the CPU, as loaded
    rec.put("build_seconds", round(time.perf_counter() - t0, 1))
    from eraselab.shaped_models import parameter_counts

    rec.put("parameters", parameter_counts(pipe))
    probes = probes_for(args.probes, args.steps, args.size)
    for name in args.dtypes.split(","):
        pipe.to(device=device, dtype=DTYPES[name])
        rows = lanes(pipe, args.size, args.size).unet  # the engine's fixed UNet call: probes × their CFG pair
        rec.put(f"engine_unet_rows.{name}", rows)
        naive = images_per_second(per_prompt, pipe, probes, device)
        ours = images_per_second(with_engine, pipe, probes, device)
        rec.put(f"images_per_s.{name}", {"per_prompt_pipeline": round(naive, 3), "engine": round(ours, 3),
                                         "ratio": round(ours / naive, 2), "probes": len(probes),
                                         "steps": args.steps, "size": args.size})
        tflops, gflop = unet_rate(pipe, rows, args.size, device)
        ceiling = rec.data.get(f"matmul_tflops.{name}")
        rec.put(f"unet_call.{name}", {"rows": rows, "gflop": round(gflop, 1), "tflops": round(tflops, 2),
                                      "share_of_matmul": round(tflops / ceiling, 3) if ceiling else None})
        if device.type == "cuda":
            rec.put(f"peak_memory_gb.{name}", round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))
            torch.cuda.reset_peak_memory_stats()

    pipe.to(device=device, dtype=torch.float32)
    uce = erase_seconds(pipe, "uce")
    rec.put("uce_seconds", round(uce, 2))
    one = erase_seconds(pipe, "esd-x", iterations=1)
    many = erase_seconds(pipe, "esd-x", iterations=1 + args.esd_iterations)
    rec.put("esd_x", {"seconds_per_iteration": round((many - one) / args.esd_iterations, 3),
                      "first_iteration_seconds": round(one, 2), "iterations_timed": args.esd_iterations,
                      "recipe": "esd-x reference (sd preset), float32"})
    if device.type == "cuda":
        rec.put("peak_memory_gb.esd_fp32", round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))
    print(json.dumps(rec.data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
