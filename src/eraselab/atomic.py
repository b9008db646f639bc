"""Crash-safe file writes: write to a temporary file in the same folder, fsync, then rename over the target."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import EraseLabError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Either the whole new content is at `path` afterwards or the old content is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EraseLabError(f"cannot write to {path.parent}: {exc.strerror}; choose a writable --out folder") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise EraseLabError(f"writing {path} failed: {exc.strerror}; free disk space or choose another --out "
                            "folder (earlier results are intact)") from exc


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
