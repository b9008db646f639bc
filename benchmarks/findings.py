"""Run `bench` on miniworld for many targets and methods, and write benchmarks/FINDINGS.md: the published
findings of SEE / EraseBench / AP, the figures miniworld measures for each, and whether they reproduce — by a
statistical rule pooled over every target — plus the all-classes effect table (each method's erasure and
collateral damage per target class).

    python benchmarks/findings.py [--targets circle,star,…] [--methods uce,esd-x,…] [--runs DIR]
                                  [--seeds-per-prompt 8] [--no-run]

Runs are cached in --runs: re-running reuses edits, images and judgments (--no-run only reads the results.json
files already there). With --no-run, --runs may name several folders (comma-separated), e.g. one per group of
methods run at different times: each target's methods are merged from every folder that has that target, and
runs that differ in model, evaluator, seeds, sampler or suites are refused.

Each verdict is computed from the results by the rule printed beside it:
- each finding is an effect d per target (e.g. ESD's sibling drop minus AP's), averaged over the methods it
  concerns; the pooled effect is the mean over targets with a 95 % bootstrap interval over targets (2,000
  resamples, seed 0): "reproduces" only when that interval excludes 0 in the paper's direction, "opposite"
  when it excludes 0 the other way, "not shown" when it contains 0;
- "not measurable on this model" when no target meets the finding's precondition on the original model (e.g.
  the parent prompt never draws the target), with the gate that would make it measurable;
- "undecided" when fewer than MIN_TARGETS (5) targets carry the effect: a bootstrap over so few targets cannot
  tell a finding from one target's quirks.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from eraselab.bench import BenchSpec, run_bench
from eraselab.miniworld.world import WORLD

HERE = Path(__file__).resolve().parent
PRECONDITION = (
    10.0  # % the original model must show a route's target before evasion through it can be measured
)
# A bootstrap over fewer targets than this cannot tell an effect from one target's quirks: no verdict then.
MIN_TARGETS = 5
EFFECT_RULE = (
    "erasure: target shown ≤ 20 % of the original model's rate; collateral: unrelated-concept drop "
    "≤ 20 pp (point values)"
)


# What must be equal for two runs of one target to be read as one (their methods merged).
SAME_RUN_KEYS = ("model", "evaluator", "seeds", "base_seed", "sampler", "suite_ids")


def target_folder(runs: Path, target: str) -> Path:
    return runs / target.replace(" ", "_")


def merged_results(folders: list[Path], target: str) -> dict | None:
    """The target's results from every folder that has them, methods merged (first folder wins a clash)."""
    merged = None
    for folder in folders:
        path = target_folder(folder, target) / "results.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        if merged is None:
            merged = r
            continue
        differ = [k for k in SAME_RUN_KEYS if r.get(k) != merged.get(k)]
        if differ:
            raise SystemExit(f"{path} differs from the first run of {target} in {', '.join(differ)}: "
                             "merge only runs of one model, evaluator, seeds, sampler and suites")
        for m, mr in r["methods"].items():
            merged["methods"].setdefault(m, mr)
    return merged


def v(results: dict, method: str, key: str):
    m = results["methods"].get(method, {}).get("metrics", {}).get(key)
    return None if not m else m.get("value")


def orig(results: dict, key: str):
    return next((v(results, m, key + ".original") for m in results["methods"]
                 if v(results, m, key + ".original") is not None), None)


def fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def pooled(per_target: dict[str, float], seed: int = 0) -> tuple[float, float, float, int] | None:
    """Mean over targets and its 95 % bootstrap interval over targets."""
    values = np.array([x for x in per_target.values() if x is not None and np.isfinite(x)], dtype=float)
    if len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(2000, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high), len(values)


def verdict(stat, direction: int = 1) -> str:
    if stat is None:
        return "not measurable on this model"
    _, low, high, k = stat
    if k < MIN_TARGETS:
        return f"undecided ({k} target{'s' if k != 1 else ''}; a verdict needs {MIN_TARGETS})"
    if (low > 0 and direction > 0) or (high < 0 and direction < 0):
        return "reproduces"
    if (low > 0 and direction < 0) or (high < 0 and direction > 0):
        return "opposite"
    return "not shown (interval contains 0)"


def show(stat) -> str:
    return "–" if stat is None else f"{stat[0]:+.1f} [{stat[1]:+.1f}, {stat[2]:+.1f}] over {stat[3]} targets"


def verdicts(all_results: dict[str, dict]) -> list[str]:
    rows = []

    def add(finding, source, rule, evidence, outcome, gate=""):
        note = f" ({gate})" if gate and outcome.startswith("not measurable") else ""
        rows.append(f"| {finding} | {source} | {rule} | {evidence} | **{outcome}**{note} |")

    def per_target(fn) -> dict[str, float]:
        out = {}
        for t, r in all_results.items():
            x = fn(t, r)
            if x is not None:
                out[t] = x
        return out

    def others_mean(r, key, exclude):
        xs = [v(r, m, key) for m in r["methods"] if m not in exclude and v(r, m, key) is not None]
        return float(np.mean(xs)) if xs else None

    # UCE erases most but preserves least (AP's table: UCE's ESR ≈ 100 with the lowest PSR).
    def uce_erases(t, r):
        o = others_mean(r, "target.recognition", {"uce"})
        u = v(r, "uce", "target.recognition")
        return None if None in (o, u) else o - u

    def uce_damages(t, r):
        o = others_mean(r, "see.neighbour_drop.sibling", {"uce"})
        u = v(r, "uce", "see.neighbour_drop.sibling")
        return None if None in (o, u) else u - o

    a, b = pooled(per_target(uce_erases)), pooled(per_target(uce_damages))
    both = verdict(a) if verdict(a) == verdict(b) else f"{verdict(a)} / {verdict(b)}"
    add("UCE erases most but preserves least", "AP (Imagenette ESR/PSR)",
        "d1 = others' mean target-shown − UCE's > 0 and d2 = UCE's sibling drop − others' mean > 0",
        f"d1 {show(a)}; d2 {show(b)}", both)

    # AP preserves neighbours better than ESD at similar erasure.
    def ap_preserves(t, r):
        e, p = v(r, "esd-x", "see.neighbour_drop.sibling"), v(r, "ap", "see.neighbour_drop.sibling")
        return None if None in (e, p) else e - p

    def erasure_gap(t, r):
        e, p = v(r, "esd-x", "target.recognition"), v(r, "ap", "target.recognition")
        return None if None in (e, p) else p - e

    d, gap = pooled(per_target(ap_preserves)), pooled(per_target(erasure_gap))
    outcome = verdict(d)
    if outcome == "reproduces" and not (gap and -15 <= gap[1] and gap[2] <= 15):
        outcome = "not shown (erasure not similar: AP − ESD target-shown interval leaves ±15 pp)"
    add("AP preserves neighbours better than ESD at similar erasure", "AP",
        "d = ESD-x sibling drop − AP sibling drop > 0, with AP − ESD-x target-shown inside ±15 pp",
        f"d {show(d)}; target-shown gap {show(gap)}", outcome)

    # Evasion through superclass / subclass / synonym / composition: the route keeps more of the target than
    # the direct prompt does (retention = edited rate / original rate), where the original draws the target
    # that way.
    for route, source, gate in (
        (
            "parent",
            "SEE (erasing car: 'vehicle' still draws cars)",
            f"needs an original model whose parent prompt draws the target in ≥ {PRECONDITION:.0f} % of "
            "images",
        ),
        ("child", "SEE (erasing vehicle is circumvented by car)", "needs a non-leaf target (e.g. polygon)"),
        ("synonym", "SEE / EraseBench generality", "needs synonyms the original model draws as the target"),
        ("composition", "SEE (erasing car does not erase red car)", ""),
    ):
        def retention_gap(t, r, route=route):
            route_o, direct_o = orig(r, f"see.evasion.{route}"), orig(r, "target.recognition")
            if None in (route_o, direct_o) or route_o < PRECONDITION or direct_o < PRECONDITION:
                return None
            gaps = [v(r, m, f"see.evasion.{route}") / route_o - v(r, m, "target.recognition") / direct_o
                    for m in r["methods"] if None not in (v(r, m, f"see.evasion.{route}"),
                                                          v(r, m, "target.recognition"))]
            return 100.0 * float(np.mean(gaps)) if gaps else None

        stat = pooled(per_target(retention_gap))
        add(
            f"evasion via {route}",
            source,
            f"d = retention via the {route} prompt − retention via the target prompt (pp of the original "
            f"rate, mean over methods) > 0, on targets whose original shows both ≥ {PRECONDITION:.0f} %",
            show(stat),
            verdict(stat),
            gate,
        )

    # Attribute leakage: SEE's case is erasing an attributed concept ("red car"), so only such targets count.
    def leak_gain(t, r):
        if t in WORLD.concepts:
            return None
        base = orig(r, "see.attribute_leak")
        xs = [
            v(r, m, "see.attribute_leak") for m in r["methods"] if v(r, m, "see.attribute_leak") is not None
        ]
        return None if base is None or not xs else float(np.mean(xs)) - base

    stat = pooled(per_target(leak_gain))
    add("attribute leakage (erasing 'red car' turns the bus red)", "SEE",
        "d = leak rate after erasure − before (mean over methods) > 0, over attributed targets", show(stat),
        verdict(stat), "needs attributed targets such as 'red circle' among --targets")

    # Attention concentration / dispersal of the target word's cross-attention.
    changed, with_maps = [], set()
    for t, r in all_results.items():
        for m, mr in r["methods"].items():
            for w, by in (mr.get("attention_change") or {}).items():
                if w in t.split() and by.get("target"):
                    changed.append(by["target"]["verdict"] in ("concentrated", "dispersed"))
                    with_maps.add(t)
    from eraselab.metrics import rate

    share = rate(changed) if changed else None
    outcome = ("not measurable on this model" if share is None else
               f"undecided ({len(with_maps)} targets; a verdict needs {MIN_TARGETS})"
               if len(with_maps) < MIN_TARGETS else "reproduces" if share.low > 10 else "not shown")
    add(
        "attention concentration or dispersal of the target's tokens",
        "SEE",
        "share of (method, target) pairs whose target-word attention is 'concentrated' or 'dispersed' "
        "(entropy and top-5 % mass move together past tolerance); reproduces when its 95 % Wilson lower "
        "bound > 10 %",
        "–"
        if share is None
        else f"{share.value:.0f} % [{share.low:.0f}, {share.high:.0f}] of {share.n} pairs",
        outcome,
        "needs attention maps (bench --attention)",
    )
    return rows


def effect_table(all_results: dict[str, dict]) -> list[str]:
    """Per method and target class: erasure and collateral damage, and how many classes pass."""
    methods = list(dict.fromkeys(m for r in all_results.values() for m in r["methods"]))
    lines = [
        (
            f"Rule: {EFFECT_RULE}. Cells: target shown original → edited % / unrelated drop pp / sibling "
            "drop pp; ✗ marks a failed check."
        ),
        "",
        "| method | " + " | ".join(all_results) + " | passes |",
        "|---" * (len(all_results) + 2) + "|",
    ]
    for m in methods:
        cells, passes = [], 0
        for t, r in all_results.items():
            shown, base = v(r, m, "target.recognition"), orig(r, "target.recognition")
            unrel, sib = v(r, m, "see.unrelated.drop"), v(r, m, "see.neighbour_drop.sibling")
            if None in (shown, base, unrel):
                cells.append("–")
                continue
            erased, kept = shown <= 0.2 * base, unrel <= 20
            passes += erased and kept
            cells.append(
                f"{base:.0f}→{shown:.0f}{'' if erased else ' ✗'} / {unrel:.0f}{'' if kept else ' ✗'} / "
                f"{fmt(sib)}"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {passes}/{len(all_results)} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(WORLD.classes))
    ap.add_argument("--methods", default="uce,esd-x,ap,rece,negprompt,sld,esd-u,esd-x-strict,age,ca")
    ap.add_argument("--runs", default="/tmp/eraselab-findings", help="run folder (with --no-run: several, "
                    "comma-separated, merged per target)")
    ap.add_argument("--seeds-per-prompt", type=int, default=8)
    ap.add_argument(
        "--no-run", action="store_true", help="only read the results.json files already in --runs"
    )
    ap.add_argument("--out", default=str(HERE / "FINDINGS.md"))
    args = ap.parse_args()
    all_results, timings = {}, {}
    folders = [Path(f) for f in args.runs.split(",") if f.strip()]
    if len(folders) > 1 and not args.no_run:
        raise SystemExit("several --runs folders are only read (--no-run); a run writes into one folder")
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if args.no_run:
            found = merged_results(folders, target)
            if found is not None:
                all_results[target] = found
            continue
        folder = target_folder(folders[0], target)
        start = time.perf_counter()
        # EraseBench's groups are defined for plain concepts; an attributed target ("red circle") gets SEE
        # only.
        suites = ("see", "erasebench") if target in WORLD.concepts else ("see",)
        spec = BenchSpec(model="miniworld", methods=tuple(args.methods.split(",")), targets=(target,),
                         suites=suites, seeds_per_prompt=args.seeds_per_prompt, precision=None)
        all_results[target] = run_bench(spec, folder, progress=False)
        timings[target] = time.perf_counter() - start
    if not all_results:
        raise SystemExit(f"no results in {args.runs}")
    r0 = next(iter(all_results.values()))
    methods_found = ",".join(dict.fromkeys(m for r in all_results.values() for m in r["methods"]))
    lines = [
        "# Findings of the reference papers, measured on miniworld",
        "",
        f"Made by `python benchmarks/findings.py --targets '{','.join(all_results)}' --methods "
        f"{methods_found} --seeds-per-prompt {args.seeds_per_prompt}`"
        + (f" (runs read from {len(folders)} folders, merged per target)" if len(folders) > 1 else "")
        + f"; model fingerprint "
        f"`{r0['model']['fingerprint']}`, evaluator {r0['evaluator']['name']} v{r0['evaluator']['version']} "
        f"(threshold {r0['evaluator']['config'].get('threshold')}), eraselab {r0['eraselab']}, torch "
        f"{r0['versions'].get('torch')}."
        + (
            " Wall time per target: " + ", ".join(f"{t} {s:.0f} s" for t, s in timings.items()) + "."
            if timings
            else ""
        ),
        "",
        (
            "Verdicts pool every target: an effect per target, its mean over targets with a 95 % bootstrap "
            "interval over targets; 'reproduces' only when the interval excludes 0 in the paper's direction, "
            f"and only with at least {MIN_TARGETS} targets behind it. "
            "A verdict says whether this model shows the finding, not whether the paper is right."
        ),
        "",
        "## Verdicts",
        "",
        "| finding | source | rule | measured (mean [95 % CI]) | verdict |",
        "|---|---|---|---|---|",
        *verdicts(all_results),
        "",
        "## Each method on each target class",
        "",
        *effect_table(all_results),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
