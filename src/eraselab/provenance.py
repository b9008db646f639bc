"""What produced a result: library versions and stable hashing helpers shared by every record."""
from __future__ import annotations

import hashlib
import json
import platform
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of the libraries whose drift changes pixels or numbers."""
    versions = {"python": platform.python_version()}
    for name in ("eraselab", "torch", "diffusers", "transformers", "numpy", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def stable_json(obj) -> str:
    """Canonical JSON (sorted keys, no spaces) so equal content always hashes equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_hex(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\x00")  # separator: ("ab","c") and ("a","bc") must differ
    return h.hexdigest()
