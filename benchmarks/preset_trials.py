"""Trials of a method's miniworld preset over many target classes, judged by the rule of the all-classes
effect table (benchmarks/findings.py): a target passes when the oracle finds it in ≤ 20 % as many
"a <target>" images as on the original model, and the mean drop over its SEE unrelated classes is ≤ 20 pp.

    python benchmarks/preset_trials.py --method mace --split tuning [--configs '[{}, {"lr": 6e-3}]']
                                       [--targets circle,star]
                                       [--seeds 24] [--unrelated-seeds 16]

Presets are chosen on the tuning half of miniworld's 14 classes and checked on the held-out half (issue 19):
run `--split tuning` with candidate configs (each a dict of config overrides on top of the preset), pick one,
then run that one with `--split held-out`. One line per config: classes passed, erase seconds, and per class
the target's rate relative to the original, the mean unrelated drop and the unrelated class hurt most.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

# The split of miniworld's classes for choosing presets (issue 19): each half holds round shapes, polygons and
# symbols. Presets chosen before this split (on circle alone) say so in benchmarks/RESULTS.md.
TUNING_CLASSES = ("circle", "ellipse", "semicircle", "square", "pentagon", "star", "arrow")
HELD_OUT_CLASSES = ("ring", "triangle", "diamond", "hexagon", "cross", "heart", "crescent")
SPLITS = {"tuning": TUNING_CLASSES, "held-out": HELD_OUT_CLASSES, "all": TUNING_CLASSES + HELD_OUT_CLASSES}
UNRELATED = 6  # SEE's cap on unrelated concepts per target (suites/see.py max_per_relation)


def main() -> None:
    import eraselab
    from eraselab.miniworld.oracle import Oracle
    from eraselab.miniworld.rates import shown_rate
    from eraselab.miniworld.world import WORLD
    from eraselab.store import RunStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True)
    ap.add_argument("--split", choices=sorted(SPLITS), default="tuning")
    ap.add_argument("--targets", default="", help="comma-separated classes of --split to run (default: "
                    "all of them), for screening costly methods on part of the tuning half")
    ap.add_argument("--configs", default="[{}]", help="JSON list of config-override dicts ({} = the preset)")
    ap.add_argument("--seeds", type=int, default=24, help="seeds of the target prompt")
    ap.add_argument("--unrelated-seeds", type=int, default=16, help="seeds of each unrelated class's prompt")
    args = ap.parse_args()
    configs = json.loads(args.configs)
    targets = SPLITS[args.split]
    if args.targets:
        chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
        outside = [t for t in chosen if t not in targets]
        if outside:
            raise SystemExit(f"--targets {','.join(outside)} not in the {args.split} half "
                             f"({', '.join(targets)}); pick classes of that half or another --split")
        targets = tuple(chosen)

    pipe = eraselab.load_pipeline("miniworld", device="cpu")
    store, oracle = RunStore(tempfile.mkdtemp()), Oracle.load(device=pipe.device)

    def rate(concept: str, edit, n: int) -> float:
        return shown_rate(pipe, store, oracle, concept, edit, n)

    unrelated = {t: WORLD.unrelated(t)[:UNRELATED] for t in targets}
    base_target = {t: rate(t, None, args.seeds) for t in targets}
    base_unrelated = {c: rate(c, None, args.unrelated_seeds) for t in targets for c in unrelated[t]}
    print(f"{args.method} on the {args.split} classes; original rates:",
          ", ".join(f"{t} {r:.2f}" for t, r in base_target.items()), flush=True)
    for cfg in configs:
        passes, cells, seconds = 0, [], 0.0
        for t in targets:
            start = time.perf_counter()
            edit = eraselab.erase(pipe, args.method, [t], progress=False, **cfg)
            seconds += time.perf_counter() - start
            kept = rate(t, edit, args.seeds) / max(base_target[t], 1e-9)
            after = {c: rate(c, edit, args.unrelated_seeds) for c in unrelated[t]}
            drop = 100 * sum(base_unrelated[c] - after[c] for c in unrelated[t]) / len(unrelated[t])
            worst = max(unrelated[t], key=lambda c: base_unrelated[c] - after[c])
            ok = kept <= 0.2 and drop <= 20
            passes += ok
            cells.append(f"{t}: {kept:.2f} drop {drop:.0f} (worst {worst} {base_unrelated[worst]:.2f}→"
                         f"{after[worst]:.2f}){'' if ok else ' ✗'}")
        print(json.dumps(cfg), f"passes {passes}/{len(targets)}", f"erase {seconds:.0f} s |",
              "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
