"""How many CPU threads an eraselab process uses, so that parallel jobs on one machine do not collapse.

torch's OpenMP threads busy-wait between parallel regions; two or three processes that each start one
thread per core on a 2-core machine spin against each other, and every one runs 10–15× slower than alone.
The policy:
- the CPUs this process may use are its affinity set (taskset, cgroups via sched_getaffinity), not the
  machine's;
- every eraselab command registers itself in a per-user folder of live jobs and takes its share of those
  CPUs, max(1, cpus // live jobs), counting itself; long loops re-take it as jobs come and go;
- idle OpenMP threads keep their default (spinning) wait: OMP_WAIT_POLICY=PASSIVE made a lone miniworld
  ESD run 3× slower (benchmarks/RESULTS.md), so the cure for oversubscription is fewer threads, not
  sleeping ones;
- `eraselab --threads N` or ERASELAB_THREADS=N overrides the share; an OMP_NUM_THREADS the user set is
  respected.
It must run before torch is imported (OpenMP reads its environment once), which the CLI does first thing.
"""
from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

from .errors import EraseLabError

ENV_THREADS = "ERASELAB_THREADS"


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def registry_folder() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"eraselab-jobs-{uid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with a reused pid: it exists
        return True
    return True


def live_jobs(folder: Path | None = None) -> list[int]:
    """Pids of registered eraselab jobs still running (files of finished or killed jobs are removed)."""
    folder = folder or registry_folder()
    pids = []
    for entry in folder.glob("*.job") if folder.is_dir() else ():
        try:
            pid = int(entry.stem)
        except ValueError:
            continue
        if _alive(pid):
            pids.append(pid)
        else:
            entry.unlink(missing_ok=True)
    return sorted(pids)


def register_job(folder: Path | None = None) -> Path | None:
    """Record this process as a running job until it exits; None where the folder cannot be written."""
    folder = folder or registry_folder()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{os.getpid()}.job"
        path.touch()
    except OSError:
        return None
    atexit.register(lambda: path.unlink(missing_ok=True))
    return path


def parse_threads(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise EraseLabError(f"threads must be a positive integer, got {value!r}; e.g. --threads 1")
    return n


def choose_threads(requested: int | None = None, folder: Path | None = None) -> int:
    """The requested count, else this process's share of the usable CPUs among the live eraselab jobs."""
    if requested is not None:
        return requested
    return max(1, usable_cpus() // max(1, len(live_jobs(folder))))


def apply_thread_policy(requested: int | None = None) -> int:
    """Register this job and set the thread count for torch/OpenMP/MKL through the environment, before torch
    is imported. A host that imported torch already (a notebook, the test suite) keeps its own setting.
    Returns the count in force."""
    import sys

    requested = requested if requested is not None else parse_threads(os.environ.get(ENV_THREADS))
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if requested is not None:
            torch.set_num_threads(requested)
        return torch.get_num_threads()
    register_job()
    if requested is None and os.environ.get("OMP_NUM_THREADS"):
        return parse_threads(os.environ["OMP_NUM_THREADS"]) or 1
    threads = choose_threads(requested)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    _state["shared"] = requested is None  # the share follows the other jobs (rebalance_threads)
    return threads


_state = {"shared": False, "checked": 0.0}
REBALANCE_EVERY_S = 5.0


def rebalance_threads() -> None:
    """Re-take this job's share when other eraselab jobs started or ended since (at most every few seconds):
    jobs started together each saw fewer neighbours than there are. Called from the long loops (training
    steps, generation batches); a no-op unless the CLI's policy chose the count."""
    import time

    now = time.monotonic()
    if not _state["shared"] or now - _state["checked"] < REBALANCE_EVERY_S:
        return
    _state["checked"] = now
    import torch

    threads = choose_threads()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
