"""A bench's variants (the original model and one per method) prepared in parallel worker processes.

Why: a small model cannot keep several CPU cores busy from one process. miniworld's UNet works on 8 × 8
latents, so its calls are dominated by per-operator overhead and a second thread barely helps
(benchmarks/RESULTS.md), while the variants are independent: each method's erase, and each variant's images
and attention maps, depend only on the spec. So on the CPU, for small models, the bench hands each variant to
a worker process that erases (if it is a method), generates its images and records its attention maps into the
run folder's caches, exactly as the sequential bench would; the bench then goes on as always and finds every
edit, image and map cached. Nothing the workers write differs in kind from what the bench writes itself: the
edit cache (edit_cache.py), the shared image store (SQLite WAL, safe for several writers: store.py) and the
attention files are all safe to fill from several processes and to resume after a kill.

The workers divide the bench's own thread share among themselves (the bench process waits meanwhile), so
the thread policy (threads.py) stays in force for the group. `--jobs 1` (or ERASELAB_JOBS=1) turns this off.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .errors import EraseLabError

ENV_JOBS = "ERASELAB_JOBS"


def parse_jobs(value) -> int | None:
    """None for automatic, else a positive worker count."""
    if value is None or value == "" or value == "auto":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise EraseLabError(
            f"jobs must be a positive integer or auto, got {value!r}; pass --jobs 1 to prepare the variants "
            "in one process, or --jobs auto"
        )
    return n


def importable(cls) -> bool:
    """Whether a worker process can import `cls` by its module and name (not one defined in a notebook, a
    script run as __main__, or inside a function)."""
    return cls.__module__ != "__main__" and "<locals>" not in cls.__qualname__


def worker_modules(methods) -> list[str] | None:
    """The modules that register `methods`, for a worker to import; None when one cannot be imported there
    (then the bench runs its variants itself)."""
    from .methods import get_method

    classes = [get_method(name) for name in methods]
    if not all(importable(c) for c in classes):
        return None
    return sorted({c.__module__ for c in classes})


def plan_workers(requested: int | None, pipe, device, variants: int, methods) -> int:
    """How many worker processes prepare the variants; 1 means the bench does it itself."""
    import torch

    from .models import SMALL_MODEL_PARAMETERS
    from .shaped_models import parameter_counts

    if requested is None:
        requested = parse_jobs(os.environ.get(ENV_JOBS))
    if requested == 1 or variants < 2 or torch.device(device).type != "cpu":
        return 1
    if worker_modules(methods) is None:
        return 1
    if requested is None:
        if sum(parameter_counts(pipe).values()) > SMALL_MODEL_PARAMETERS:
            return 1
        requested = torch.get_num_threads()
    return max(1, min(requested, variants))


def expected_cost(spec, pipe, name: str) -> float:
    """A rough order for the queue, longest first: training methods by their iterations, then the rest."""
    from .bench import ORIGINAL
    from .methods import build_request

    if name == ORIGINAL:
        return 0.0
    config = spec.method_config.get(name, {})
    _, request = build_request(
        name, spec.targets, spec.preserve, pipe=pipe, domain=spec.user_domain(), **config
    )
    return float(getattr(request.config, "iterations", 0) or 0)


def prepare_variants(spec, pipe, run_dir: Path, names: list[str], workers: int, threads: int, say) -> None:
    """Erase, generate and record attention for each variant in `names` in `workers` processes."""
    import multiprocessing

    from .bench import ORIGINAL

    modules = worker_modules([n for n in names if n != ORIGINAL]) or []
    queue = sorted(names, key=lambda n: -expected_cost(spec, pipe, n))
    each = max(1, threads // workers)
    say(
        f"preparing {len(names)} variants in {workers} worker processes "
        f"({each} thread{'s' * (each > 1)} each)"
    )
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch/OpenMP state
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(each, modules)
    )
    try:
        pending = {pool.submit(_prepare_variant, spec, str(run_dir), name): name for name in queue}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                name = pending.pop(future)
                say(f"{name}: ready in {future.result():.0f} s")
    except BrokenProcessPool as exc:
        raise EraseLabError(
            "a bench worker process died (out of memory?); run again with --jobs 1 to prepare the "
            "variants one at a time (finished edits and images are kept)"
        ) from exc
    except BaseException:
        # A failed variant (or Ctrl-C) ends the bench now, not when the other workers' long erases end. Their
        # caches are written atomically, so stopping them mid-way is as safe as a killed bench: it resumes.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- in the worker process ---------------------------------------------------------------------------------
_worker: dict = {}


def _start_worker(threads: int, modules: list[str]) -> None:
    # Before torch is imported: OpenMP reads its thread count once.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import importlib

    import torch

    torch.set_num_threads(threads)
    for module in modules:
        importlib.import_module(module)


def _say(message: str) -> None:
    print(f"· {message}", flush=True)


def _prepare_variant(spec, run_dir: str, name: str) -> float:
    from .bench import ORIGINAL, build_probes, make_edit, prepare_images
    from .models import load_pipeline

    started = time.perf_counter()
    if _worker.get("model") != spec.model:
        _worker.update(model=spec.model, pipe=load_pipeline(spec.model, device="cpu"))
    pipe, run_dir = _worker["pipe"], Path(run_dir)
    probes = build_probes(spec)
    edit = (
        None
        if name == ORIGINAL
        else make_edit(pipe, spec, run_dir, name, spec.user_domain(), _say, progress=False)
    )
    prepare_images(pipe, spec, run_dir, probes, name, edit, progress=False)
    return time.perf_counter() - started
