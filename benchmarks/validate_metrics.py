"""Planted-effect validation of the metrics (issue 19): bias, interval coverage and false positives.

    python benchmarks/validate_metrics.py [--targets circle,star] [--effects null,half,strong] [--repeats 100]
                                          [--precision 10] [--truth-precision 2.5] [--out FILE.json]

For each target and planted effect (eraselab/miniworld/planted.py, validate.py): the truth of every metric on
a large independent draw, then `--repeats` runs at the bench's image counts (--precision, as `eraselab
bench`), each on disjoint seeds. Prints a markdown table of the headline metrics (truth, mean estimate, bias ±
its standard error, coverage of the 95 % interval, mean half-width, n) and the pooled figures over every
metric; the full rows go to --out as JSON. benchmarks/RESULTS.md records the output with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from eraselab.miniworld.validate import EFFECTS, validate

HEADLINE = ("target.recognition", "erasebench.efficacy", "erasebench.generality", "erasebench.sensitivity",
            "erasebench.hm", "see.neighbour_drop.sibling", "see.neighbour_drop.parent", "see.evasion.synonym",
            "see.evasion.composition", "see.evasion.parent", "see.attribute_leak", "see.unrelated.preserved",
            "see.unrelated.drop", "imagenette.esr@1", "imagenette.psr@1")
DROPS = (".neighbour_drop.", "see.unrelated.drop")


def table(target: str, effect: str, rows: list[dict]) -> list[str]:
    by_key = {r["key"]: r for r in rows}
    lines = [
        f"#### {target}, planted effect `{effect}` ({EFFECTS[effect]})",
        "",
        "| metric | truth | mean estimate | bias ± se | coverage | mean half-width | n |",
        "|---" * 7 + "|",
    ]
    for key in HEADLINE:
        r = by_key.get(key)
        if r:
            lines.append(
                f"| {key} | {r['truth']:.1f} | {r['mean']:.1f} | {r['bias']:+.1f} ± {r['bias_se']:.1f} | "
                f"{100 * r['coverage']:.0f} % | {r['half_width']:.1f} | {r['n']} |"
            )
    cover = [r["coverage"] for r in rows]
    inner = [r["coverage"] for r in rows if 2 < r["truth"] < 98]
    biased = [r["key"] for r in rows if r["bias_se"] and abs(r["bias"]) > 3 * r["bias_se"] + 1.0]
    drops = [r["excludes_zero"] for r in rows if any(d in r["key"] for d in DROPS)]
    lines += [
        "",
        (
            f"All {len(rows)} metrics: coverage mean {100 * np.mean(cover):.1f} % (min "
            f"{100 * min(cover):.0f} %); with the truth inside (2, 98): mean {100 * np.mean(inner):.1f} % "
            f"over {len(inner)} metrics; |bias| > 3 se + 1: {', '.join(biased) or 'none'}; drop intervals "
            f"excluding 0: {100 * np.mean(drops):.1f} % of runs."
        ),
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="circle")
    ap.add_argument("--effects", default="null,half,strong")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--precision", type=float, default=10.0)
    ap.add_argument("--truth-precision", type=float, default=2.5)
    ap.add_argument("--out", default="/tmp/eraselab-validation.json")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}; usable CPUs: {len(os.sched_getaffinity(0))}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    from eraselab.evaluators import get_evaluator

    oracle = get_evaluator("oracle")
    everything, lines = {}, []
    for target in args.targets.split(","):
        for effect in args.effects.split(","):
            start = time.perf_counter()
            rows = validate(
                target, EFFECTS[effect], args.repeats, args.precision, args.truth_precision, oracle
            )
            everything[f"{target}/{effect}"] = rows
            lines += table(target, effect, rows)
            print("\n".join(table(target, effect, rows)), flush=True)
            print(f"({time.perf_counter() - start:.0f} s; load average {os.getloadavg()})", flush=True)
    with open(args.out, "w") as f:
        json.dump(everything, f)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
