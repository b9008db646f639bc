"""report.html: a self-contained page (inline CSS; images and plots by relative path inside the run folder)."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import EraseLabError
from . import plots
from .headline import format_cell, headline
from .markdown import markdown_summary

ASPECT_ORDER = ("target", "synonym", "parent", "child", "sibling", "composition", "leak", "unrelated")
PROMPTS_PER_ASPECT = 8
ASSETS = "report_assets"
# What the report reads from results.json (bench.run_bench writes them all).
RESULT_FIELDS = ("targets", "model", "evaluator", "versions", "methods", "images", "sampler", "seeds", "suite_ids",
                 "results_hash")


def load_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.exists():
        raise EraseLabError(f"{run_dir} has no results.json; run `eraselab bench --out {run_dir}` first")
    try:
        results = json.loads(path.read_bytes())
    except ValueError as exc:  # bad JSON or bad UTF-8
        raise EraseLabError(f"{path} is damaged ({exc}); re-run `eraselab bench --out {run_dir}`") from exc
    missing = [k for k in RESULT_FIELDS if not isinstance(results, dict) or k not in results]
    if missing:
        raise EraseLabError(f"{path} is not a bench results file (no {missing[0]!r}); re-run `eraselab bench --out "
                            f"{run_dir}`")
    return results


def _grids(results: dict) -> list[tuple[str, list[dict]]]:
    """Rows per aspect (first seed of each prompt, at most PROMPTS_PER_ASPECT), in the SEE aspect order."""
    by: "OrderedDict[str, list]" = OrderedDict()
    seen = set()
    for e in results["images"]:
        key = (e["aspect"], e["prompt"])
        if key in seen:
            continue
        seen.add(key)
        rows = by.setdefault(e["aspect"], [])
        if len(rows) < PROMPTS_PER_ASPECT:
            rows.append(e)
    order = {a: i for i, a in enumerate(ASPECT_ORDER)}
    return sorted(by.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def _attention_rows(results: dict) -> list[dict]:
    rows = []
    for method, r in results["methods"].items():
        for word, by_aspect in (r.get("attention_change") or {}).items():
            for aspect, cmp in by_aspect.items():
                d = cmp.get("delta", {})
                rows.append({"method": method, "word": word, "aspect": aspect, "verdict": cmp.get("verdict"),
                             "d_entropy": d.get("normalized_entropy", 0.0), "d_top": d.get("top5_mass", 0.0)})
    return rows


def write_report(run_dir: str | Path) -> Path:
    """Write report.html, report.md and the plots into `run_dir` (a folder written by `eraselab bench`)."""
    import jinja2

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    assets = run_dir / ASSETS
    figures = [(plots.tradeoff, "tradeoff.png", "erasure vs preservation", ""),
               (plots.distance_curve, "distance.png", "recognition drop vs hierarchy distance", ""),
               (plots.aspect_profile, "aspects.png", "side-effect profile per aspect", "wide")]
    made = []
    for fn, name, alt, cls in figures:
        path = fn(results, assets / name)
        if path is not None:
            made.append({"src": _rel(path, run_dir), "alt": alt, "cls": cls})
    attention_figs = [{"src": _rel(f["path"], run_dir), "prompt": f["prompt"]}
                      for f in plots.attention_heatmaps(run_dir, results, assets)]
    env = jinja2.Environment(loader=jinja2.PackageLoader("eraselab", "report/templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    variants = list(results["images"][0]["variants"]) if results["images"] else []
    html = env.get_template("report.html.j2").render(
        **results, head=headline(results), fmt=format_cell, plots=made, attention_figs=attention_figs,
        attention_rows=_attention_rows(results), grids=_grids(results), variants=variants)
    atomic_write_text(run_dir / "report.html", html)
    atomic_write_text(run_dir / "report.md", markdown_summary(results))
    return run_dir / "report.html"


def _rel(path: Path, run_dir: Path) -> str:
    return Path(os.path.relpath(path, run_dir)).as_posix()
