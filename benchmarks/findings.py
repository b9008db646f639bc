"""Run `bench` on miniworld for several targets and methods, and write benchmarks/FINDINGS.md: the published
findings of SEE / EraseBench / AP, the figures miniworld measures for each, and whether they reproduce.

    python benchmarks/findings.py [--targets circle,polygon,"red circle"] [--methods uce,rece,negprompt,...]
                                  [--runs DIR] [--seeds-per-prompt 4]

Runs are cached in --runs (default /tmp/eraselab-findings): re-running reuses edits, images and judgments.
Each finding's verdict is computed from the results by the rule printed beside it — nothing is typed in by hand.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from eraselab.bench import BenchSpec, run_bench
from eraselab.miniworld.world import WORLD

HERE = Path(__file__).resolve().parent


def v(results: dict, method: str, key: str):
    m = results["methods"].get(method, {}).get("metrics", {}).get(key)
    return None if not m else m.get("value")


def fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


TABLE_KEYS = [("target shown %", "target.recognition"), ("synonym evasion %", "see.evasion.synonym"),
              ("parent evasion %", "see.evasion.parent"), ("child evasion %", "see.evasion.child"),
              ("composition evasion %", "see.evasion.composition"), ("sibling drop pp", "see.neighbour_drop.sibling"),
              ("unrelated drop pp", "see.unrelated.drop"), ("leak %", "see.attribute_leak"),
              ("Sens %", "erasebench.sensitivity"), ("HM", "erasebench.hm")]


def target_table(target: str, results: dict) -> list[str]:
    lines = [f"### target: {target}", "",
             "| method | erase s | " + " | ".join(k for k, _ in TABLE_KEYS) + " | attention (target word, target prompts) |",
             "|---" * (len(TABLE_KEYS) + 3) + "|"]
    first = next(iter(results["methods"].values()))["metrics"]
    lines.append("| original | – | " + " | ".join(fmt((first.get(key + ".original") or {}).get("value"))
                                                  for _, key in TABLE_KEYS) + " | – |")
    for method, r in results["methods"].items():
        att = r.get("attention_change", {})
        verdicts = sorted({a.get("target", {}).get("verdict") for w, a in att.items()
                           if w in target.split() and a.get("target")} - {None})
        lines.append(f"| {method} | {r['seconds']:.0f} | " + " | ".join(fmt(v(results, method, key))
                                                                      for _, key in TABLE_KEYS)
                     + f" | {', '.join(verdicts) or '–'} |")
    return lines + [""]


def verdicts(all_results: dict[str, dict]) -> list[str]:
    """Each finding, the rule that decides it, and what the runs show."""
    rows = []

    def add(finding, source, rule, evidence, holds):
        mark = "n/a (not measured)" if holds is None else ("reproduces" if holds else "does not reproduce")
        rows.append(f"| {finding} | {source} | {rule} | {evidence} | **{mark}** |")

    # UCE erases most but preserves least (AP's table: UCE ESR ≈ 100 but the lowest PSR).
    ev, holds = [], []
    for t, r in all_results.items():
        ms = [m for m in r["methods"] if v(r, m, "target.recognition") is not None]
        if "uce" in ms and len(ms) > 1:
            er = {m: v(r, m, "target.recognition") for m in ms}
            pr = {m: v(r, m, "see.neighbour_drop.sibling") for m in ms if v(r, m, "see.neighbour_drop.sibling") is not None}
            most = er["uce"] <= min(er.values())
            least = bool(pr) and "uce" in pr and pr["uce"] >= max(pr.values())
            ev.append(f"{t}: UCE shown {fmt(er['uce'])}% (min {fmt(min(er.values()))}), sibling drop "
                      f"{fmt(pr.get('uce'))} (max {fmt(max(pr.values()) if pr else None)})")
            holds.append(most and least)
    add("UCE erases most but preserves least", "AP (Imagenette ESR/PSR)",
        "UCE has the lowest target-shown % and the largest sibling drop among the methods run",
        "; ".join(ev) or "–", all(holds) if holds else None)

    # AP preserves neighbours better than ESD at similar erasure.
    ev, holds = [], []
    for t, r in all_results.items():
        if {"ap", "esd-x"} <= set(r["methods"]):
            ea, ee = v(r, "ap", "target.recognition"), v(r, "esd-x", "target.recognition")
            pa, pe = v(r, "ap", "see.neighbour_drop.sibling"), v(r, "esd-x", "see.neighbour_drop.sibling")
            ev.append(f"{t}: shown AP {fmt(ea)} vs ESD {fmt(ee)}; sibling drop AP {fmt(pa)} vs ESD {fmt(pe)}")
            if None not in (ea, ee, pa, pe):
                holds.append(abs(ea - ee) <= 15 and pa < pe)
    add("AP preserves neighbours better than ESD at similar erasure", "AP",
        "abs(shown AP − shown ESD) ≤ 15 pp and AP's sibling drop < ESD's", "; ".join(ev) or "–",
        all(holds) if holds else None)

    # Evasion through superclass / subclass / synonym / composition.
    for route, source in (("parent", "SEE (erasing car: 'vehicle' still draws cars)"),
                          ("child", "SEE (erasing vehicle is circumvented by car)"),
                          ("synonym", "SEE / EraseBench generality"),
                          ("composition", "SEE (erasing car does not erase red car)")):
        ev, holds = [], []
        for t, r in all_results.items():
            for m in r["methods"]:
                e = v(r, m, f"see.evasion.{route}")
                shown = v(r, m, "target.recognition")
                if e is not None and shown is not None:
                    ev.append(f"{t}/{m}: {fmt(e)}% vs direct {fmt(shown)}%")
                    holds.append(e > shown + 10)
        add(f"evasion via {route}", source, f"evasion rate exceeds the direct target-shown rate by > 10 pp "
            "for most (method, target) pairs", "; ".join(ev[:6]) + (" …" if len(ev) > 6 else "") or "–",
            (sum(holds) > len(holds) / 2) if holds else None)

    # Attribute leakage: SEE's case is erasing an attributed concept ("red car"), so only such targets count.
    ev, holds = [], []
    for t, r in all_results.items():
        if " " not in t:
            continue
        for m in r["methods"]:
            leak, base = v(r, m, "see.attribute_leak"), (r["methods"][m]["metrics"].get("see.attribute_leak.original")
                                                       or {}).get("value")
            if leak is not None and base is not None:
                ev.append(f"{t}/{m}: {fmt(leak)}% (original {fmt(base)}%)")
                holds.append(leak > base + 5)
    add("attribute leakage (erasing 'red car' turns the bus red)", "SEE",
        "for an attributed target, the leak rate after erasure exceeds the original's by > 5 pp for most methods",
        "; ".join(ev[:6]) or "–", (sum(holds) > len(holds) / 2) if holds else None)

    # Attention concentration / dispersal.
    ev, holds = [], []
    for t, r in all_results.items():
        for m, mr in r["methods"].items():
            for w, by in (mr.get("attention_change") or {}).items():
                if w in t.split() and by.get("target"):
                    ev.append(f"{t}/{m}: {by['target']['verdict']}")
                    holds.append(by["target"]["verdict"] in ("concentrated", "dispersed"))
    # The pairs that show the finding first (the cell is cut at eight), then a count of the rest.
    shown = [e for e, h in zip(ev, holds) if h] + [e for e, h in zip(ev, holds) if not h]
    summary = "; ".join(shown[:8]) + (f" … ({sum(holds)} of {len(holds)} pairs changed)" if holds else "")
    add("attention concentration or dispersal of the target's tokens", "SEE",
        "verdict 'concentrated' or 'dispersed' (entropy and top-5% mass move together past tolerance) for any "
        "(method, target) pair", summary or "–", any(holds) if holds else None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="circle,polygon,red circle")
    ap.add_argument("--methods", default="uce,rece,negprompt,sld")
    ap.add_argument("--extra", action="append", default=[],
                    help="TARGET=METHODS: more methods for one target, e.g. circle=esd-x,ap")
    ap.add_argument("--runs", default="/tmp/eraselab-findings")
    ap.add_argument("--seeds-per-prompt", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "FINDINGS.md"))
    args = ap.parse_args()
    extra = {e.split("=", 1)[0]: e.split("=", 1)[1].split(",") for e in args.extra}
    all_results, timings = {}, {}
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        methods = tuple(dict.fromkeys(args.methods.split(",") + extra.get(target, [])))
        start = time.perf_counter()
        # EraseBench's groups are defined for plain concepts; an attributed target ("red circle") gets SEE only.
        suites = ("see", "erasebench") if " " not in target or target in WORLD.concepts else ("see",)
        spec = BenchSpec(model="miniworld", methods=methods, targets=(target,), suites=suites,
                         seeds_per_prompt=args.seeds_per_prompt)
        all_results[target] = run_bench(spec, Path(args.runs) / target.replace(" ", "_"), progress=False)
        timings[target] = time.perf_counter() - start
    r0 = next(iter(all_results.values()))
    n_seeds = len(r0["seeds"])
    lines = ["# Findings of the reference papers, measured on miniworld", "",
             "Made by `python benchmarks/findings.py " + " ".join(f"--extra '{k}={','.join(v)}'" for k, v in extra.items())
             + f" --targets '{args.targets}' --methods {args.methods}"
             + (f" --seeds-per-prompt {args.seeds_per_prompt}" if args.seeds_per_prompt else "")
             + "`; model fingerprint "
             f"`{r0['model']['fingerprint']}`, evaluator {r0['evaluator']['name']} v{r0['evaluator']['version']} "
             f"(threshold {r0['evaluator']['config'].get('threshold')}), seeds {r0['seeds']}, "
             f"eraselab {r0['eraselab']}, torch {r0['versions'].get('torch')}. Wall time per target (cold or "
             "cached): " + ", ".join(f"{t} {s:.0f} s" for t, s in timings.items()) + ".", "",
             "Values in % (drops in percentage points), from the `see` and `erasebench` suites judged by the oracle; "
             "95% intervals are in each run's results.json.", "",
             "Read with care: the shipped miniworld model meets its quality gates (RESULTS.md, miniworld) but "
             "places two objects by their position words only weakly, and its text encoder puts 'a hexagon' "
             "next to 'a circle', so erasing circle takes hexagons with it (RESULTS.md, Erasure methods); each rate "
             "here "
             f"rests on {n_seeds} seeds × 1–7 prompts (n = {n_seeds}–{7 * n_seeds} images): a rate near 50 % from "
             f"one prompt is known to about ±{98 / n_seeds ** 0.5:.0f} pp (95 %), from seven to "
             f"±{98 / (7 * n_seeds) ** 0.5:.0f} pp. Methods run: "
             + ", ".join(dict.fromkeys(m for r in all_results.values() for m in r["methods"]))
             + ". A verdict says whether this model shows the finding under its rule, not whether the paper is "
             "right.", "",
             "## Verdicts", "", "| finding | source | rule | measured | verdict |", "|---|---|---|---|---|",
             *verdicts(all_results), "", "## Per-target tables", ""]
    for t, r in all_results.items():
        lines += target_table(t, r)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    print(json.dumps({t: list(r["methods"]) for t, r in all_results.items()}))


if __name__ == "__main__":
    main()
