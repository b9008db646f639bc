"""report.html: one page (inline CSS) with the headline table, plots, glossary, image grids and provenance.

Images and plots are linked by relative path inside the run folder, or, with `self_contained`, embedded as
data: URIs so report.html is a single file that can be moved or mailed on its own (it grows by the images'
size).
"""
from __future__ import annotations

import base64
import json
import os
from collections import OrderedDict
from pathlib import Path

from .. import metric_info
from ..atomic import atomic_write_text
from ..errors import EraseLabError
from . import plots
from .headline import UNREADABLE_HALF_WIDTH, Column, format_number, half_width, has_value, headline, is_number
from .markdown import markdown_summary
from .vocabulary import (
    ASPECT_DEFINITIONS,
    ASPECT_ORDER,
    ATTENTION_TERMS,
    aspect_goal,
    aspect_label,
    judged_shown,
    relation_label,
    verdict,
)

ASSETS = "report_assets"
ORIGINAL = "original"
PROMPTS_OPEN = 12  # prompts shown per aspect before the rest fold into "more prompts"
# What the report reads from results.json (bench.run_bench writes them all).
RESULT_FIELDS = ("targets", "model", "evaluator", "versions", "methods", "images", "sampler", "seeds",
                 "suite_ids", "results_hash")
UNIT_TEXT = {"%": "% of images", "pp": "percentage points", "s": "seconds", "count": "count", "": "score"}
# Declarations with no unit of their own whose scale a reader needs spelled out.
UNIT_OVERRIDES = {"quality.frechet": "squared distance in the evaluator's feature space (lower = closer to "
                                    "the original model's images)"}
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
EXTRA_GLOSSARY_KEYS = ("target.recognition", "erasebench.efficacy", "erasebench.sensitivity",
                       "see.unrelated.preserved", "imagenette.psr@1", "see.neighbour_drop.distance=1")


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
        raise EraseLabError(f"{path} is not a bench results file (no {missing[0]!r}); re-run `eraselab bench "
                            f"--out {run_dir}`")
    return results


def missing_files(run_dir: Path, results: dict) -> list[str]:
    """Files results.json names (images, attention maps) missing from the run folder, in order, once each."""
    named = [d["image"] for e in results["images"] for d in e["variants"].values()]
    named += [a["file"] for a in (results.get("attention") or {}).values() if a.get("file")]
    return [f for f in dict.fromkeys(named) if not (run_dir / f).is_file()]


class Linker:
    """The src of an image in the page: a path relative to report.html, or the file itself as a data: URI."""

    def __init__(self, run_dir: Path, embed: bool):
        self.run_dir, self.embed = run_dir, embed

    def src(self, path: str | Path) -> str:
        full = self.run_dir / path
        if not self.embed:
            return Path(os.path.relpath(full, self.run_dir)).as_posix()
        mime = MIME.get(full.suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(full.read_bytes()).decode('ascii')}"


def write_report(run_dir: str | Path, self_contained: bool = False) -> Path:
    """Write report.html, report.md and the plots into `run_dir` (a folder written by `eraselab bench`).
    Refuses (EraseLabError) when images that results.json names are missing, before writing anything."""
    import jinja2

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    missing = missing_files(run_dir, results)
    if missing:
        raise EraseLabError(f"{len(missing)} file(s) that {run_dir / 'results.json'} names are missing "
                            f"(first: {missing[0]}); run `eraselab evaluate --run {run_dir}` to regenerate "
                            f"them, then `eraselab report` again")
    stamp = _stamp(run_dir, self_contained)
    if _up_to_date(run_dir, stamp):
        return run_dir / "report.html"
    link = Linker(run_dir, self_contained)
    assets = run_dir / ASSETS
    figures = [(plots.tradeoff, "tradeoff.png", "erasure vs preservation, with 95 % intervals"),
               (plots.distance_curve, "distance.png",
                "recognition drop vs hierarchy distance, with 95 % intervals"),
               (plots.aspect_profile, "aspects.png", "side effects per probe aspect, with 95 % intervals")]
    made = [_figure(link, path, alt) for fn, name, alt in figures if (path := fn(results, assets / name))]
    attention_figs = [_figure(link, f["path"], f"attention of the target word over the images of "
                                               f"'{f['prompt']}', seed {f['seed']}")
                      for f in plots.attention_heatmaps(run_dir, results, assets)]
    head = headline(results)
    env = jinja2.Environment(loader=jinja2.PackageLoader("eraselab", "report/templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    variants = list(results["images"][0]["variants"]) if results["images"] else []
    html = env.get_template("report.html.j2").render(
        **results,
        columns=[_column_view(c) for c in head["columns"]],
        original_row=[_cell_view(o, c, False, False) for o, c in zip(head["original"], head["columns"])],
        method_rows=[
            {
                "method": r["method"],
                "cells": [
                    _cell_view(cell, c, b, u)
                    for cell, c, b, u in zip(r["cells"], head["columns"], r["best"], r["unreadable"])
                ],
            }
            for r in head["rows"]
        ],
        unreadable_half_width=UNREADABLE_HALF_WIDTH,
        plots=made,
        attention_figs=attention_figs,
        attention_rows=_attention_rows(results),
        grids=_grids(results, variants, link),
        variants=variants,
        glossary=_glossary(results, head["columns"]),
        aspect_terms=_aspect_terms(results),
        attention_terms=ATTENTION_TERMS,
        every_metric=_every_metric(results),
        sampler_settings=[_sampler(s) for s in results["sampler"]],
        num=format_number,
        self_contained=self_contained,
    )
    atomic_write_text(run_dir / "report.html", html)
    atomic_write_text(run_dir / "report.md", markdown_summary(results))
    written = sorted(str(p.relative_to(run_dir)) for p in assets.rglob("*") if p.is_file())
    atomic_write_text(run_dir / STAMP, json.dumps({**stamp, "files": written}))
    return run_dir / "report.html"


# What a written report was made from; a warm run whose results and report code are unchanged keeps it.
STAMP = ".report-stamp.json"


def _stamp(run_dir: Path, self_contained: bool) -> dict:
    import hashlib

    code = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".j2"):
            code.update(path.name.encode() + b"\0" + path.read_bytes())
    results = hashlib.sha256((run_dir / "results.json").read_bytes()).hexdigest()
    return {"results": results, "code": code.hexdigest()[:16], "self_contained": self_contained}


def _up_to_date(run_dir: Path, stamp: dict) -> bool:
    try:
        recorded = json.loads((run_dir / STAMP).read_text())
    except (OSError, ValueError):
        return False
    files = ["report.html", "report.md", *recorded.get("files", [])]
    return {k: recorded.get(k) for k in stamp} == stamp and all((run_dir / f).is_file() for f in files)


def _figure(link: Linker, path: Path, alt: str) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    return {"src": link.src(Path(os.path.relpath(path, link.run_dir))), "alt": alt, "width": width,
            "height": height}


# ---- headline ----------------------------------------------------------------------------------------------
def _direction_text(direction: str | None) -> str:
    return {"lower": "lower is better", "higher": "higher is better"}.get(direction or "",
                                                                          "no better direction")


def _unit_text(key: str, unit: str) -> str:
    return UNIT_OVERRIDES.get(key) if key in UNIT_OVERRIDES else UNIT_TEXT.get(unit, unit)


def _column_view(c: Column) -> dict:
    title = f"{c.label}: {c.definition}. Unit: {_unit_text(c.key, c.unit)}; {_direction_text(c.better)}."
    return {"label": c.label, "arrow": c.arrow, "title": title, "key": c.key}


def _cell_view(cell: dict | None, col: Column, best: bool, unreadable: bool) -> dict:
    """What one headline cell shows: value, interval, n, its tooltip and its shading."""
    if not has_value(cell):
        return {"text": "–", "ci": "", "n": "", "cls": "empty", "title": "no images behind this value"}
    n = cell.get("n")
    ci = ""
    if is_number(cell.get("low")) and is_number(cell.get("high")):
        ci = f"[{format_number(cell['low'])}, {format_number(cell['high'])}]"
    parts = [f"{col.label} = {format_number(cell['value'])} {col.unit}".rstrip()]
    if ci:
        method = cell.get("interval")
        parts.append(f"95 % interval {ci}" + (f" ({method})" if method else ""))
    if is_number(n):
        parts.append(f"n = {int(n)} image{'s' if n != 1 else ''}")
    if unreadable:
        parts.append(f"too few images to read: the interval is ±{format_number(half_width(cell))} "
                     f"{col.unit}, wider than ±{UNREADABLE_HALF_WIDTH:g}")
    cls = "unreadable" if unreadable else ("best" if best else "")
    return {"text": format_number(cell["value"]), "ci": ci, "n": f"n={int(n)}" if is_number(n) else "",
            "cls": cls, "title": " · ".join(parts)}


# ---- every metric ------------------------------------------------------------------------------------------
def _every_metric(results: dict) -> dict:
    """Every metric key of results.json (the original's value beside each method's), so no number is
    hidden."""
    methods = list(results.get("methods", {}))
    keys = sorted({k for r in results["methods"].values() for k in r.get("metrics", {})
                   if not k.endswith(".original")})
    rows = []
    for key in keys:
        info = metric_info.describe(key)
        col = Column(key, info.label if info else key, info.direction if info else None,
                     info.unit if info else "", info.definition if info else "")
        original = next((r["metrics"].get(key + ".original") for r in results["methods"].values()
                         if r.get("metrics", {}).get(key + ".original")), None)
        cells = [original] + [results["methods"][m]["metrics"].get(key) for m in methods]
        rows.append({"key": key, "label": col.label, "definition": col.definition,
                     "cells": [_cell_view(c, col, False, False) for c in cells]})
    return {"methods": methods, "rows": rows}


# ---- glossary ----------------------------------------------------------------------------------------------
def _glossary(results: dict, columns: list[Column]) -> list[dict]:
    """The metrics the page shows (table columns, plot axes), each with its declaration."""
    present = {k for r in results["methods"].values() for k in r.get("metrics", {})} | {"seconds"}
    keys = [c.key for c in columns] + [k for k in EXTRA_GLOSSARY_KEYS if k in present]
    if any(k.startswith("see.neighbour_drop.distance=") for k in present):
        keys.append("see.neighbour_drop.distance=1")
    intervals = getattr(metric_info, "INTERVALS", {})
    rows, seen = [], set()
    for key in keys:
        info = metric_info.describe(key)
        if info is None or info.label in seen:
            continue
        seen.add(info.label)
        label = info.label.replace("distance=1", "distance=d") if "distance=" in key else info.label
        # Erase seconds are a measurement, not an estimate: no interval.
        method = getattr(info, "interval", None) if key != "seconds" else None
        shown_key = "see.neighbour_drop.distance=<d>" if "distance=" in key else key
        rows.append({"label": label, "key": shown_key,
                     "direction": _direction_text(info.direction), "unit": _unit_text(key, info.unit),
                     "definition": info.definition, "interval": intervals.get(method, method or "")})
    return rows


def _aspect_terms(results: dict) -> list[dict]:
    present = {e["aspect"] for e in results["images"]}
    return [{"label": aspect_label(a), "key": a, "goal": aspect_goal(a),
             "definition": ASPECT_DEFINITIONS.get(a, "")} for a in _ordered_aspects(present)]


def _ordered_aspects(aspects) -> list[str]:
    order = {a: i for i, a in enumerate(ASPECT_ORDER)}
    return sorted(aspects, key=lambda a: (order.get(a, len(order)), a))


# ---- image grids -------------------------------------------------------------------------------------------
def _grids(results: dict, variants: list[str], link: Linker) -> list[dict]:
    """Per aspect, every prompt with every seed's image per variant, each with its good/bad verdict."""
    evaluator = results["evaluator"].get("name", "evaluator")
    targets = results.get("targets", [])
    # Suites may share a probe (same prompt and seed, hence the same image): it is shown once, naming both.
    by: OrderedDict[str, OrderedDict[str, OrderedDict]] = OrderedDict()
    suites: dict[tuple, list[str]] = {}
    for e in results["images"]:
        prompts = by.setdefault(e["aspect"], OrderedDict())
        prompts.setdefault(e["prompt"], OrderedDict()).setdefault(e["seed"], e)
        suites.setdefault((e["aspect"], e["prompt"]), []).append(e.get("suite", "").split("/")[0])
    grids = []
    for aspect in _ordered_aspects(by):
        prompts, tally = [], {v: [0, 0] for v in variants if v != ORIGINAL}
        for prompt, by_seed in by[aspect].items():
            entries = [by_seed[seed] for seed in sorted(by_seed)]
            cells = []
            for v in variants:
                images = []
                for e in entries:
                    d = e["variants"].get(v)
                    if d is None:
                        continue
                    cls, caption = verdict(aspect, v == ORIGINAL, judged_shown(e, d, targets))
                    if v in tally and cls in ("good", "bad"):
                        tally[v][0] += cls == "good"
                        tally[v][1] += 1
                    labels = ", ".join(d.get("labels") or []) or "nothing"
                    images.append({"src": link.src(d["image"]), "seed": e["seed"], "cls": cls,
                                   "caption": caption, "labels": f"{evaluator}: {labels}",
                                   "alt": f"{v}, '{prompt}', seed {e['seed']}: {caption}"})
                cells.append({"variant": v, "images": images})
            first = entries[0]
            prompts.append({"prompt": prompt, "relation": relation_label(first.get("relation", "")),
                            "concepts": ", ".join(first.get("concepts") or []), "cells": cells,
                            "suites": ", ".join(dict.fromkeys(x for x in suites[(aspect, prompt)] if x)),
                            "seeds": len(entries)})
        grids.append({"aspect": aspect, "label": aspect_label(aspect), "goal": aspect_goal(aspect),
                      "open_prompts": prompts[:PROMPTS_OPEN], "more_prompts": prompts[PROMPTS_OPEN:],
                      "images": sum(p["seeds"] for p in prompts),
                      "tally": [{"variant": v, "good": g, "judged": n} for v, (g, n) in tally.items() if n]})
    return grids


def _attention_rows(results: dict) -> list[dict]:
    rows = []
    for method, r in results["methods"].items():
        for word, by_aspect in (r.get("attention_change") or {}).items():
            for aspect, cmp in by_aspect.items():
                d = cmp.get("delta", {})
                rows.append({"method": method, "word": word, "aspect": aspect_label(aspect),
                             "verdict": cmp.get("verdict") or "–",
                             "d_entropy": _signed(d.get("normalized_entropy")),
                             "d_top": _signed(d.get("top5_mass"))})
    return rows


def _signed(x) -> str:
    return f"{x:+.3f}" if is_number(x) else "–"


# ---- provenance --------------------------------------------------------------------------------------------
def _sampler(setting: str | dict) -> str:
    """One sampler setting of results.json as words; height/width 0 (the model's default size) says so."""
    try:
        s = json.loads(setting) if isinstance(setting, str) else dict(setting)
    except (ValueError, TypeError):
        return str(setting)
    h, w = s.pop("height", None), s.pop("width", None)
    parts = [f"{k} {v}" for k, v in sorted(s.items())]
    if h or w:
        parts.append(f"size {h or 'model default'} × {w or 'model default'} px")
    else:
        parts.append("size: model default")
    return ", ".join(parts)
