"""The headline table: the few numbers per method a reader looks at first, shared by terminal and HTML.

Each column names a metric key of results.json, a label, and whether lower or higher is better, so the best
value per column can be highlighted. Columns whose metric no method has are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    better: str  # "lower" or "higher"
    note: str = ""


COLUMNS = (
    Column("target.recognition", "target shown %", "lower", "share of target-prompt images showing the target"),
    Column("imagenette.esr@1", "ESR-1 %", "higher", "AP protocol erasure success (top-1)"),
    Column("imagenette.psr@1", "PSR-1 %", "higher", "AP protocol preservation success (top-1)"),
    Column("erasebench.efficacy", "Efficacy %", "lower", "EraseBench: target recognised on target prompts"),
    Column("erasebench.generality", "Generality %", "lower", "EraseBench: target recognised on paraphrases"),
    Column("erasebench.sensitivity", "Sensitivity %", "higher", "EraseBench: related non-targets recognised"),
    Column("erasebench.hm", "HM", "higher", "harmonic mean of 100−Eff, 100−Gen, Sens"),
    Column("see.neighbour_drop.sibling", "sibling drop pp", "lower", "SEE: recognition lost on siblings"),
    Column("see.evasion.composition", "evasion: composition %", "lower", "SEE: target still shown via 'a red …'"),
    Column("see.evasion.synonym", "evasion: synonym %", "lower", "SEE: target still shown via a synonym"),
    Column("see.evasion.parent", "evasion: parent %", "lower", "SEE: target still shown via its superclass"),
    Column("see.attribute_leak", "attribute leak %", "lower", "SEE: erased concept's attribute moved to the other object"),
    Column("see.unrelated.preserved", "unrelated kept %", "higher", "SEE: unrelated concepts still recognised"),
    Column("nudity.exposed@0.5", "exposed@0.5 %", "lower", "NudeNet exposed share at threshold 0.5"),
    Column("quality.frechet", "Fréchet", "lower", "distance of edited vs original features"),
    Column("seconds", "erase s", "lower", "seconds to make the edit"),
)


def _metric(method_result: dict, key: str) -> dict | None:
    if key == "seconds":
        s = method_result.get("seconds")
        return None if s is None else {"value": float(s), "low": None, "high": None, "n": None}
    return method_result.get("metrics", {}).get(key)


def headline(results: dict, keys=None) -> dict:
    """{"columns": [Column…], "rows": [{"method", "cells": [metric dict | None], "best": [bool]}],
    "original": [metric dict | None]} — `original` holds each metric on the unedited model where it exists.
    `keys` limits the columns to those metric keys (the terminal's narrower table)."""
    methods = results.get("methods", {})
    cols = [c for c in COLUMNS if (keys is None or c.key in keys) and any(_metric(r, c.key) and _metric(r, c.key).get("value") is not None
                                      for r in methods.values())]
    rows = [{"method": m, "cells": [_metric(r, c.key) for c in cols]} for m, r in methods.items()]
    for j, c in enumerate(cols):
        values = [r["cells"][j]["value"] for r in rows if r["cells"][j] and r["cells"][j].get("value") is not None]
        # No highlight when every method ties: nothing stands out.
        best = (min if c.better == "lower" else max)(values) if len(set(values)) > 1 else None
        for r in rows:
            cell = r["cells"][j]
            r.setdefault("best", []).append(cell is not None and best is not None and cell.get("value") == best
                                            and len(rows) > 1)
    original = []
    for c in cols:
        found = next((r.get("metrics", {}).get(c.key + ".original") for r in methods.values()
                      if r.get("metrics", {}).get(c.key + ".original")), None)
        original.append(found)
    return {"columns": cols, "rows": rows, "original": original}


def format_cell(cell: dict | None, with_interval: bool = True) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    v = cell["value"]
    text = f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    if with_interval and cell.get("low") is not None and cell.get("high") is not None:
        text += f" [{cell['low']:.1f}, {cell['high']:.1f}]"
    return text
