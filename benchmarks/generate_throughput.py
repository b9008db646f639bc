"""Images/s of eraselab's generation engine against a naive loop that calls the diffusers pipeline once per
probe (what the reference repositories' evaluation scripts do), on the same model, steps and probes, side by
side.

    python benchmarks/generate_throughput.py [--model tiny|miniworld] [--probes 64] [--steps 25] [--rounds 3]
                                             [--no-record]

Rounds alternate naive and engine runs so that load from other processes falls on both alike; each engine run
writes into a fresh store (no cache hits). Also reported:
* pixel agreement with the naive loop (the engine's fixed-size network calls move a few values by one level),
  and a bit-exactness check with network calls shaped like the pipeline's own (2-row UNet, 1-row text
  encoder);
* UNet FLOPs per image (torch's FlopCounterMode) against the machine's sustained float32 GEMM rate.
The result is appended to benchmarks/RESULTS.md under "Generation engine".
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eraselab import generate as engine
from eraselab.atomic import atomic_write_text
from eraselab.models import load_pipeline, tiny_random_pipeline
from eraselab.probes import Probe
from eraselab.store import RunStore

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Generation engine (generate.py, store.py)"
WORDS = ("cat", "dog", "red car", "blue house", "tree", "boat", "church", "golf ball")
MINIWORLD_WORDS = (
    "red circle",
    "blue square",
    "star",
    "green heart",
    "polygon",
    "small yellow arrow",
    "ring",
    "purple hexagon",
)
MODELS = {"tiny": "tiny random SD pipeline", "miniworld": "the shipped miniworld model"}


def make_probes(n: int, steps: int, model: str = "tiny") -> list[Probe]:
    if model == "miniworld":
        return [
            Probe(f"a {MINIWORLD_WORDS[i % len(MINIWORLD_WORDS)]}", seed=i, steps=steps) for i in range(n)
        ]
    return [Probe(f"a photo of a {WORDS[i % len(WORDS)]}", seed=i, steps=steps) for i in range(n)]


def naive(pipe, probes) -> list[np.ndarray]:
    out = []
    for p in probes:
        image = pipe(
            p.prompt,
            negative_prompt=p.negative_prompt or None,
            num_inference_steps=p.steps,
            guidance_scale=p.guidance,
            generator=torch.Generator("cpu").manual_seed(p.seed),
        ).images[0]
        out.append(np.asarray(image))
    return out


def ours(pipe, probes, batch_size=None) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(folder)
        keys = engine.generate(pipe, probes, store, batch_size=batch_size, progress=False)
        images = [np.asarray(im) for im in engine.images_for(store, keys)]
        store.close()
    return images


def pixel_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    diffs = [np.abs(x.astype(int) - y.astype(int)) for x, y in zip(a, b)]
    return {"identical_images": sum(int(d.max() == 0) for d in diffs), "images": len(diffs),
            "max_abs_diff": int(max(d.max() for d in diffs)),
            "differing_values": float(np.mean([(d > 0).mean() for d in diffs]))}


def pipeline_shaped_lanes_match(pipe, probes) -> dict:
    """With the engine's network calls shaped as the pipeline's (UNet on the 2-row CFG pair, text encoder and
    VAE on one row), its arithmetic should reproduce pipe(...) exactly."""
    from eraselab.generation import keys  # the image keys (and so every call) take their lanes from here

    saved = keys.lanes
    keys.lanes = lambda pipe_, h, w: engine.Lanes(unet=2, text=1, vae=1)
    try:
        mine = ours(pipe, probes, batch_size=1)
    finally:
        keys.lanes = saved
    return pixel_agreement(mine, naive(pipe, probes))


def unet_flops_per_row(pipe) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    size = engine.default_image_size(pipe)
    rows = engine.lanes(pipe, size, size).unet
    h = w = size // int(pipe.vae_scale_factor)
    x = torch.randn(rows, pipe.unet.config.in_channels, h, w)
    emb = torch.randn(rows, 77, pipe.text_encoder.config.hidden_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(x, 500, encoder_hidden_states=emb)
    return counter.get_total_flops() / rows


def sustained_gemm_flops(n: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * n ** 3 * runs / (time.perf_counter() - start)


def record(text: str) -> None:
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    if SECTION not in current:
        current = current.rstrip("\n") + f"\n\n{SECTION}\n"
        insert_at = len(current)
    else:
        start = current.index(SECTION) + len(SECTION)
        following = current.find("\n## ", start)
        insert_at = len(current) if following < 0 else following + 1
    entry = text.rstrip("\n") + "\n"
    before, after = current[:insert_at], current[insert_at:]
    if not before.endswith("\n"):
        before += "\n"
    atomic_write_text(RESULTS, before + entry + ("\n" + after.lstrip("\n") if after else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="tiny")
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exact-probes", type=int, default=8, help="probes for the pipeline-shaped check")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    pipe = load_pipeline("miniworld", device="cpu") if args.model == "miniworld" else tiny_random_pipeline(0)
    probes = make_probes(args.probes, args.steps, args.model)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(probes)} probes, {args.steps} steps, {MODELS[args.model]} "
          f"({engine.default_image_size(pipe)} px), torch threads {torch.get_num_threads()}, load {load:.1f}")
    ours(pipe, probes[:2])  # warm-up: oneDNN builds its kernels on the first call of each shape
    naive(pipe, probes[:1])
    naive_rates, engine_rates, last = [], [], {}
    for r in range(args.rounds):
        t = time.perf_counter()
        last["naive"] = naive(pipe, probes)
        naive_rates.append(len(probes) / (time.perf_counter() - t))
        t = time.perf_counter()
        last["engine"] = ours(pipe, probes)
        engine_rates.append(len(probes) / (time.perf_counter() - t))
        print(f"round {r + 1}: naive {naive_rates[-1]:.2f} img/s, engine {engine_rates[-1]:.2f} img/s, "
              f"ratio {engine_rates[-1] / naive_rates[-1]:.1f}x", flush=True)
    agreement = pixel_agreement(last["engine"], last["naive"])
    exact = pipeline_shaped_lanes_match(pipe, probes[:args.exact_probes])
    flops_image = unet_flops_per_row(pipe) * 2 * args.steps  # CFG pair per step
    gemm = sustained_gemm_flops()
    rate64 = statistics.median(engine_rates)
    auto = engine.auto_batch_size(pipe, probes[0], branches=2)
    size = engine.default_image_size(pipe)
    lane = engine.lanes(pipe, size, size)
    fraction = flops_image * rate64 / gemm

    ratios = [e / n for e, n in zip(engine_rates, naive_rates)]
    table = (
        "| | images/s (median of rounds) | all rounds |\n|---|---|---|\n"
        f"| naive loop (pipe() per probe) | {statistics.median(naive_rates):.2f} | "
        f"{', '.join(f'{x:.2f}' for x in naive_rates)} |\n"
        f"| eraselab engine (auto batch) | {rate64:.2f} | {', '.join(f'{x:.2f}' for x in engine_rates)} |\n"
        f"| speed-up | {statistics.median(ratios):.1f}x | {', '.join(f'{x:.1f}x' for x in ratios)} |"
    )
    print(table)
    header = (
        f"- {time.strftime('%Y-%m-%d %H:%M')} `benchmarks/generate_throughput.py`: {len(probes)} probes, "
        f"{args.steps} DDIM steps, CFG 7.5, {MODELS[args.model]} ({size} px); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, load average at start {load:.1f} (shared machine); engine lanes: UNet "
        f"{lane.unet} rows, VAE {lane.vae}, text {lane.text}."
    )
    pixels = (
        f"  Pixels vs the naive loop: {agreement['identical_images']}/{agreement['images']} images "
        f"identical, max |diff| {agreement['max_abs_diff']} level(s), "
        f"{100 * agreement['differing_values']:.3f} % of values differ (the engine's {lane.unet}-row UNet "
        "calls may sum in another order than the pipeline's 2-row calls)."
    )
    exact_line = (f"  With pipeline-shaped calls (UNet 2 rows, text 1, VAE 1; batch 1) on {exact['images']} "
                  f"probes: {exact['identical_images']}/{exact['images']} identical, max |diff| "
                  f"{exact['max_abs_diff']}.")
    flops_line = (
        f"  UNet: {flops_image / 1e9:.3f} GFLOP per image ({args.steps} steps × 2 rows); sustained fp32 "
        f"GEMM (1024²) {gemm / 1e9:.1f} GFLOP/s; the engine at batch {auto} (auto) performs "
        f"{flops_image * rate64 / 1e9:.2f} GFLOP/s of UNet arithmetic = {100 * fraction:.1f} % of it."
    )
    lines = [header, "", table, "", pixels, exact_line, flops_line]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record(text)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
