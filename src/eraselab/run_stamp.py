"""A finished bench run's stamp: the signature of everything its results depend on, so that a re-run whose
inputs did not change reuses results.json without loading a model (a warm `eraselab demo` in seconds).

The signature is read from file metadata and package metadata only — no weights are read:
- the bench settings (BenchSpec, every field);
- the model: a local folder or file by the size and modification time of each file; a hub id by the commit its
  local cache resolves to (no cache entry: no signature, so the run is never skipped);
- every other setting that names an existing file or folder (suites, domain, evaluator weights) likewise, and
  an evaluator hub id by its cached commit;
- eraselab's own files (code, data, miniworld weights) by size and modification time, and the versions of the
  libraries that change numbers;
- what picks the device (the torch build, visible NVIDIA devices, CUDA_VISIBLE_DEVICES).
A change to any of them — or a results.json that no longer matches its own hash, or a stored edit or image
whose size or modification time changed since the run (a damaged cache is then found and rebuilt by the stages
that check it) — means the run is done again (each stage still reuses its own intact caches).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from .atomic import atomic_write_text
from .models import looks_like_hub_id, resolve_model
from .provenance import library_versions, sha256_hex, stable_json

STAMP = "bench-stamp.json"
_PACKAGE = Path(__file__).resolve().parent


def _files_signature(path: Path) -> list:
    """(relative name, size, mtime in ns) of a file, or of every file under a folder (caches skipped)."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            f = Path(root) / name
            st = f.stat()
            out.append([str(f.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def _hub_commit(repo_id: str) -> str | None:
    """The commit a hub id resolves to in the local cache (refs/main), or None when it is not cached."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def _value_signature(value: str):
    """A setting's signature: its files when it names a path, its cached commit when it is a hub id."""
    path = Path(value).expanduser()
    if path.exists():
        return {"path": str(path.resolve()), "files": _files_signature(path)}
    if looks_like_hub_id(value) and " " not in value:
        commit = _hub_commit(value)
        return {"hub": value, "commit": commit} if commit else None
    return value


def _settings_signature(spec) -> dict | None:
    """Signatures of the settings that name models, files or folders; None when one cannot be signed."""
    kind, model_path = resolve_model(spec.model)
    if kind == "hub":
        commit = _hub_commit(spec.model)
        if commit is None:
            return None
        model = {"hub": spec.model, "commit": commit}
    else:
        model = {"path": str(model_path.resolve()), "files": _files_signature(model_path)}
    named = {}
    for value in [*spec.suites, spec.domain_file or "", spec.evaluator.partition(":")[2],
                  *[str(v) for opts in spec.suite_options.values() for v in opts.values()]]:
        if value:
            sig = _value_signature(value)
            if sig is None:
                return None
            named[value] = sig
    return {"model": model, "named": named}


def _device_signature() -> dict:
    return {"nvidia": sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*")),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}


def signature(spec) -> str | None:
    """The run's input signature, or None when an input cannot be signed (then the run is never skipped)."""
    settings = _settings_signature(spec)
    if settings is None:
        return None
    return sha256_hex(
        stable_json(
            {
                "spec": asdict(spec),
                "settings": settings,
                "versions": library_versions(),
                "eraselab_files": _files_signature(_PACKAGE),
                "device": _device_signature(),
            }
        )
    )


def _run_files(run_dir: Path) -> list:
    """Size and modification time of the run's stored edits and images (a damaged cache must not be
    skipped)."""
    return [[part, _files_signature(run_dir / part)] for part in ("edits", "store/images")
            if (run_dir / part).is_dir()]


def reusable_results(run_dir: Path, sig: str | None) -> dict | None:
    """results.json of an earlier run with the same signature, if it is intact; else None."""
    from .bench import results_hash

    stamp, results_file = run_dir / STAMP, run_dir / "results.json"
    if sig is None or not stamp.is_file() or not results_file.is_file():
        return None
    try:
        recorded = json.loads(stamp.read_text())
        results = json.loads(results_file.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("signature") != sig or results.get("results_hash") != recorded.get("results_hash"):
        return None
    if recorded.get("run_files") != _run_files(run_dir):
        return None
    if results_hash(results) != results.get("results_hash"):  # edited or damaged since it was written
        return None
    return results


def write_stamp(run_dir: Path, sig: str | None, results: dict) -> None:
    """Record the finished run's signature (after results.json is written; none for unsignable inputs)."""
    path = run_dir / STAMP
    if sig is None:
        path.unlink(missing_ok=True)
        return
    atomic_write_text(path, json.dumps({"signature": sig, "results_hash": results["results_hash"],
                                        "run_files": _run_files(run_dir)}))
