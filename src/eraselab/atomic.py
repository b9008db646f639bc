"""Crash-safe file writes: write to a temporary file in the same folder, fsync, then rename over the target.

The temporary file is created private (mode 0600); before the rename it gets the mode any other tool would
give a new file (0666 less the user's umask), so colleagues on a shared server can read reports and images."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import EraseLabError


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it, racing other
    threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Either the whole new content is at `path` afterwards or the old content is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EraseLabError(
            f"cannot write to {path.parent}: {exc.strerror}; choose a writable --out folder"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
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
