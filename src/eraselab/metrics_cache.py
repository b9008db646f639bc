"""Metric summaries cached by the hash of everything they depend on, so a warm run recomputes nothing.

A summary depends on the judgments of the original and the edited model (with their probes' labels), the
targets, the concept hierarchy and aliases the metrics recognise concepts by, the evaluator's k, the image
features behind the Fréchet distance, and the code of the metrics themselves. All of it goes into the key; the
summary is stored as JSON under <run>/metrics/<key>.json (written atomically; a damaged file is recomputed).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .provenance import sha256_hex, stable_json

CODE_FILES = ("metrics.py", "metric_info.py", "hierarchy.py")


def metrics_code_hash() -> str:
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in CODE_FILES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def table_hash(table) -> str:
    """Hash of a judgment table: each probe (generation fields and labels) with its row."""
    return sha256_hex(stable_json([[p.to_dict(), row] for p, row in table]))


def features_hash(features) -> str | None:
    if features is None:
        return None
    digest = hashlib.sha256()
    for array in features:
        a = np.ascontiguousarray(array, dtype=np.float64)
        digest.update(str(a.shape).encode() + a.tobytes())
    return digest.hexdigest()


def cached_summary(folder: Path, inputs: dict, compute: Callable[[], dict]) -> dict:
    """compute() once per distinct `inputs` (JSON-able; hashes of tables and features, settings)."""
    key = sha256_hex(stable_json({**inputs, "code": metrics_code_hash()}))[:24]
    path = Path(folder) / f"{key}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # damaged or unreadable: recompute and rewrite
    summary = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary))
    return summary
