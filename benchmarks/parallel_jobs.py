"""Do parallel eraselab jobs share the CPUs, or spin against each other? (issue 16)

Runs the same eraselab command once alone, then N copies at the same time (each with the default thread
policy: its share of the usable CPUs among running eraselab jobs), and reports each copy's wall time against
the lone run. Target: N = 2 copies on 2 cores each finish in ≤ 2.2× the lone time. The machine's load before
the run is printed with the figures (benchmarks/RESULTS.md records them).

    python benchmarks/parallel_jobs.py                       # `eraselab miniworld score`, 2 copies
    python benchmarks/parallel_jobs.py --copies 3 -- erase --model miniworld --method uce --target circle
    --out X
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def run_copies(argv: list[str], copies: int, env: dict) -> list[float]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(copies):
            args = [a.replace("{i}", str(i)).replace("{tmp}", tmp) for a in argv]
            procs.append(subprocess.Popen([sys.executable, "-m", "eraselab.cli", *args], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        ends = []
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"a copy failed: {err[-2000:]}")
            ends.append(time.perf_counter() - started)
    return ends


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("command", nargs="*", default=["miniworld", "score", "--json"])
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average before: {os.getloadavg()}; usable CPUs: {len(os.sched_getaffinity(0))}", flush=True)
    alone = run_copies(args.command, 1, env)[0]
    print(f"alone: {alone:.1f} s", flush=True)
    together = run_copies(args.command, args.copies, env)
    ratios = [t / alone for t in together]
    print(f"{args.copies} at once: " + ", ".join(f"{t:.1f} s ({r:.2f}×)" for t, r in zip(together, ratios)))
    print(f"worst ratio {max(ratios):.2f}× (target ≤ 2.2× for 2 copies on 2 cores); load average after: "
          f"{os.getloadavg()}")


if __name__ == "__main__":
    main()
