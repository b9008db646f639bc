"""How cost grows (issue 7): bench wall time at 1×, 2×, 4× probes, and UCE time at 1, 10, 100 targets, on
miniworld, measured in one run; plus the peak RSS of the process. Appends a section to benchmarks/RESULTS.md
with --record.

    HF_HUB_OFFLINE=1 python benchmarks/scaling.py [--record]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import eraselab
from eraselab.bench import BenchSpec, run_bench
from eraselab.miniworld.world import WORLD

HERE = Path(__file__).resolve().parent


def bench_seconds(seeds: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        spec = BenchSpec(
            model="miniworld",
            methods=("uce",),
            targets=("circle",),
            suites=("see", "erasebench"),
            seeds_per_prompt=seeds,
            attention=False,
        )
        start = time.perf_counter()
        results = run_bench(spec, out, say=lambda m: None, progress=False)
        return time.perf_counter() - start, len(results["images"])


def uce_seconds(pipe, n_targets: int) -> float:
    words = [*WORLD.concepts, *(f"{c} {k}" for c in WORLD.colors for k in WORLD.classes)]
    start = time.perf_counter()
    eraselab.erase(pipe, "uce", words[:n_targets], progress=False, auto_preserve="none", check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    bench = {s: bench_seconds(s) for s in (1, 2, 4)}
    pipe = eraselab.load_pipeline("miniworld")
    uce_seconds(pipe, 1)  # warm-up: first text-encoder call
    uce = {n: uce_seconds(pipe, n) for n in (1, 10, 100)}
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    base_t, base_n = bench[1]
    lines = [
        "",
        "## Scaling (benchmarks/scaling.py)",
        "",
        (
            'miniworld, `bench` with uce on "circle", suites see + erasebench, no attention maps, cold run '
            "folder each time (erase, generate original + edited, judge, metrics, results):"
        ),
        "",
        "| probes | images per variant | wall s | × of 1× time | × of 1× probes |",
        "|---|---|---|---|---|",
    ]
    for s, (t, n) in bench.items():
        lines.append(f"| {s}× | {n} | {t:.1f} | {t / base_t:.2f} | {n / base_n:.1f} |")
    lines += [
        "",
        "UCE erase time by number of targets (closed form; collapse check off so only the solve is timed):",
        "",
        "| targets | seconds |",
        "|---|---|",
    ]
    lines += [f"| {n} | {t:.3f} |" for n, t in uce.items()]
    lines += ["", f"Peak RSS of this process (model, oracle, three benches): {rss_gb:.2f} GB.", ""]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
