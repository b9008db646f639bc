"""The thread policy: parallel eraselab jobs share the CPUs instead of spinning against each other."""
import os
import subprocess
import sys

import pytest

from eraselab.errors import EraseLabError
from eraselab.threads import choose_threads, live_jobs, parse_threads, register_job, usable_cpus


def test_each_live_job_takes_its_share_of_the_usable_cpus(tmp_path):
    cpus = usable_cpus()
    assert choose_threads(folder=tmp_path) == cpus  # alone (not even registered yet)
    register_job(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"{sleeper.pid}.job").touch()
        assert live_jobs(tmp_path) == sorted([os.getpid(), sleeper.pid])
        assert choose_threads(folder=tmp_path) == max(1, cpus // 2)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert live_jobs(tmp_path) == [os.getpid()]  # a finished job's file is cleaned up
    assert not (tmp_path / f"{sleeper.pid}.job").exists()
    assert choose_threads(3, folder=tmp_path) == 3


def test_bad_thread_counts_are_refused():
    assert parse_threads("2") == 2 and parse_threads(None) is None
    for bad in ("0", "-1", "many"):
        with pytest.raises(EraseLabError, match="threads must be a positive integer"):
            parse_threads(bad)


def test_a_cli_job_sets_openmp_threads_before_torch_loads():
    code = ("import os, sys; from eraselab.cli import main; rc = main(['--threads', '1', 'methods']); "
            "import torch; print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "1 1"


def test_a_running_job_takes_its_share_again_when_others_start(tmp_path, monkeypatch):
    import torch

    import eraselab.threads as threads

    monkeypatch.setattr(threads, "registry_folder", lambda: tmp_path)
    monkeypatch.setattr(threads, "_state", {"shared": True, "checked": 0.0})
    register_job(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    before = torch.get_num_threads()
    try:
        (tmp_path / f"{sleeper.pid}.job").touch()
        torch.set_num_threads(usable_cpus())
        threads.rebalance_threads()
        assert torch.get_num_threads() == max(1, usable_cpus() // 2)
    finally:
        sleeper.kill()
        sleeper.wait()
        torch.set_num_threads(before)
    monkeypatch.setattr(threads, "_state", {"shared": False, "checked": 0.0})
    threads.rebalance_threads()  # a count the user or host chose is left alone
    assert torch.get_num_threads() == before
