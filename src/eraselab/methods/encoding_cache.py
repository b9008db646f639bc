"""Text encodings of a whole vocabulary, cached on disk by model and word list (AP/AGE's candidate search).

AP and AGE encode every vocabulary word through the text encoder on each erase (3,000 words: minutes on a
CPU), although the encodings depend only on the text encoder and the word list. They are stored once as a
float32 .npy file named by sha256(model fingerprint, tokenizer length, the words), written to a temporary
file and renamed, so runs and processes can share the folder: a reader sees a complete file or none, and two
writers write the same bytes. The folder is $ERASELAB_CACHE/encodings (default ~/.cache/eraselab/encodings);
the values are exactly what the encoder computes (same chunks as without the cache), so a cached search
picks the same words.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..provenance import sha256_hex

ENV_CACHE = "ERASELAB_CACHE"


def cache_folder() -> Path:
    root = os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "eraselab"
    return Path(root) / "encodings"


def encodings_key(model_fingerprint: str, max_length: int, words: list[str]) -> str:
    return sha256_hex(model_fingerprint, str(max_length), "\n".join(words))[:32]


def vocabulary_encodings(encoder, words: list[str], model_fingerprint: str | None, chunk: int = 256):
    """(n, tokens, d) float32 encodings of `words`, from the cache when there, else computed in chunks of
    `chunk` and stored. Without a fingerprint (an edited or unidentified encoder) nothing is cached."""
    path = None
    if model_fingerprint is not None:
        key = encodings_key(model_fingerprint, int(encoder.tokenizer.model_max_length), words)
        path = cache_folder() / f"{key}.npy"
        cached = _read(path, len(words))
        if cached is not None:
            return torch.from_numpy(cached)
    parts = [encoder.encode_uncached(words[i:i + chunk]).cpu() for i in range(0, len(words), chunk)]
    out = torch.cat(parts) if parts else torch.empty(0)
    if path is not None:
        _write(path, out.numpy())
    return out


def _read(path: Path, rows: int) -> np.ndarray | None:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):  # absent, or damaged: computed again and rewritten
        return None
    if array.dtype != np.float32 or array.ndim != 3 or array.shape[0] != rows:
        return None
    return np.array(array)


def _write(path: Path, array: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache folder only costs the next run the encoding time
        pass
