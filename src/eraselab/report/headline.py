"""The headline table: the few numbers per method a reader looks at first (terminal, Markdown and HTML).

Each column is a metric key of results.json that a declaration (metric_info) puts in the headline, in
declaration order; its label, direction, unit and definition come from that declaration, so the table, the
glossary and the tooltips use one vocabulary. Columns whose metric no method has (none of the run's suites
declares it) are dropped. A rate or drop whose 95 % interval is wider than ±UNREADABLE_HALF_WIDTH
points is marked unreadable (too few images) and never highlighted as the best of its column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..metric_info import describe, headline_keys

COLUMN_KEYS = headline_keys()
UNREADABLE_HALF_WIDTH = 10.0  # percentage points


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    better: str | None  # "lower", "higher" or None (from the declaration's direction)
    unit: str
    definition: str

    @property
    def arrow(self) -> str:
        return {"lower": "↓", "higher": "↑"}.get(self.better or "", "")

    @property
    def is_rate(self) -> bool:
        return self.unit in ("%", "pp")


def column(key: str) -> Column:
    info = describe(key)
    if info is None:  # an undeclared key still shows, without a direction to highlight by
        return Column(key, key, None, "", "")
    return Column(key, info.label, info.direction, info.unit, info.definition)


COLUMNS = tuple(column(k) for k in COLUMN_KEYS)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def has_value(cell: dict | None) -> bool:
    return bool(cell) and is_number(cell.get("value"))


def half_width(cell: dict | None) -> float | None:
    """The interval's half-width: results.json's "half_width" when present, else computed from low/high."""
    if not cell:
        return None
    if is_number(cell.get("half_width")):
        return float(cell["half_width"])
    if is_number(cell.get("low")) and is_number(cell.get("high")):
        return (float(cell["high"]) - float(cell["low"])) / 2
    return None


def unreadable(cell: dict | None, col: Column) -> bool:
    hw = half_width(cell)
    return has_value(cell) and col.is_rate and hw is not None and hw > UNREADABLE_HALF_WIDTH


def _metric(method_result: dict, key: str) -> dict | None:
    if key == "seconds":
        s = method_result.get("seconds")
        return None if not is_number(s) else {"value": float(s), "low": None, "high": None, "n": None}
    return method_result.get("metrics", {}).get(key)


def headline(results: dict, keys=None) -> dict:
    """{"columns": [Column…], "rows": [{"method", "cells": [metric dict | None], "best": [bool],
    "unreadable": [bool]}], "original": [metric dict | None]} — `original` holds each metric on the unedited
    model where it exists. `keys` limits the columns to those metric keys (the terminal's narrower table)."""
    methods = results.get("methods", {})
    cols = [c for c in COLUMNS if (keys is None or c.key in keys)
            and any(has_value(_metric(r, c.key)) for r in methods.values())]
    rows = [{"method": m, "cells": [_metric(r, c.key) for c in cols]} for m, r in methods.items()]
    for j, c in enumerate(cols):
        for r in rows:
            r.setdefault("unreadable", []).append(unreadable(r["cells"][j], c))
        readable = [r["cells"][j]["value"] for r in rows
                    if has_value(r["cells"][j]) and not r["unreadable"][j]]
        # No highlight when every method ties (nothing stands out) or the column has no direction.
        best = None
        if c.better in ("lower", "higher") and len(set(readable)) > 1:
            best = (min if c.better == "lower" else max)(readable)
        for r in rows:
            cell = r["cells"][j]
            r.setdefault("best", []).append(best is not None and has_value(cell) and not r["unreadable"][j]
                                            and cell["value"] == best and len(rows) > 1)
    original = []
    for c in cols:
        found = next((r.get("metrics", {}).get(c.key + ".original") for r in methods.values()
                      if has_value(r.get("metrics", {}).get(c.key + ".original"))), None)
        original.append(found)
    return {"columns": cols, "rows": rows, "original": original}


def format_number(v) -> str:
    """A value as the tables print it; "–" for None, NaN and infinities (never "nan")."""
    if not is_number(v):
        return "–"
    return f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def format_cell(cell: dict | None, with_interval: bool = True) -> str:
    if not has_value(cell):
        return "–"
    text = format_number(cell["value"])
    if with_interval and is_number(cell.get("low")) and is_number(cell.get("high")):
        text += f" [{format_number(cell['low'])}, {format_number(cell['high'])}]"
    return text
