"""Reuse an Edit already made for the same request (method, targets, preserved, config, base model).

A cached edit lives in a folder holding the Edit (edit.json + edit.safetensors) and `request.json`; the
request is written last, so a folder whose erase was interrupted is simply made again. A corrupted cached
edit is reported and rebuilt, never used.

The request includes a hash of the erasure methods' source code, so an edit cached by an earlier eraselab (or
a locally patched method) is made again instead of being reused under a new implementation.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from .atomic import atomic_write_text
from .edits import Edit
from .errors import EraseLabError
from .provenance import stable_json

REQUEST_FILE = "request.json"


@lru_cache(maxsize=1)
def methods_code_hash() -> str:
    """sha256 over the source of every module in eraselab/methods (and the Edit format they produce)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted((package / "methods").glob("*.py")) + [package / "edits.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def request_record(method: str, targets, preserve, config: dict, base_fingerprint: str) -> dict:
    return {"method": method, "targets": list(targets), "preserve": list(preserve), "config": config,
            "base_fingerprint": base_fingerprint, "methods_code": methods_code_hash()}


def load_cached_edit(folder: Path, request: dict, warn=print) -> Edit | None:
    """The edit in `folder` if it was made for exactly `request` and loads cleanly; None otherwise."""
    req_path = folder / REQUEST_FILE
    if not req_path.exists():
        return None
    try:
        recorded = json.loads(req_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        recorded = None
    if recorded is None or stable_json(recorded) != stable_json(request):
        return None
    try:
        return Edit.load(folder)
    except EraseLabError as exc:
        warn(f"cached edit in {folder} is unusable ({exc}); making it again")
        req_path.unlink(missing_ok=True)
        return None


def save_cached_edit(folder: Path, edit: Edit, request: dict) -> None:
    edit.save(folder)
    atomic_write_text(folder / REQUEST_FILE, json.dumps(request, indent=1, default=str))
