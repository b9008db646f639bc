"""Two processes started by `accelerate launch` share the probes of one `eraselab generate` and one store.

On a machine without GPUs, `accelerate launch --cpu` starts a single process unless mpirun is installed, so
the test uses `--multi_gpu --num_processes 2`, which starts the processes through torchrun; each asks
accelerate's PartialState for CPU and gets its rank (gloo connects them for the final barrier).
"""
import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

from eraselab.generate import generate
from eraselab.probes import Probe
from eraselab.store import RunStore

PROMPTS = ("a cat", "a dog", "a red car")
SEEDS = range(4)


@pytest.fixture(scope="module")
def saved_pipe(tmp_path_factory):
    from eraselab.models import tiny_random_pipeline

    folder = tmp_path_factory.mktemp("tiny_pipe")
    tiny_random_pipeline(0).save_pretrained(str(folder))
    return folder


def test_accelerate_launch_two_cpu_processes_split_the_work(saved_pipe, tmp_path):
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed")
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MASTER_PORT="29517")
    env.pop("WORLD_SIZE", None)
    args = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "eraselab.cli", "generate",
            "--model", str(saved_pipe), *[a for p in PROMPTS for a in ("--prompt", p)],
            "--seeds", f"0-{len(SEEDS) - 1}", "--steps", "2", "--out", str(out), "--no-progress"]
    r = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    store = RunStore(out)
    total = len(PROMPTS) * len(SEEDS)
    db = store._db
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM images").fetchone() == (total, total)
    shards = {}
    for key, producer in db.execute("SELECT key, producer FROM images"):
        import json

        shards.setdefault(tuple(json.loads(producer)["shard"]), set()).add(key)
    # Both processes made images, their shares are disjoint, and together they are complete.
    assert set(shards) == {(0, 2), (1, 2)}
    assert shards[(0, 2)].isdisjoint(shards[(1, 2)]) and len(shards[(0, 2)] | shards[(1, 2)]) == total
    with open(out / "images.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == total and all(store.verify_image(row["image_key"]) for row in rows)

    # The sharded images equal those of one process (which runs with a different thread count here).
    from eraselab.models import load_pipeline

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pipe = load_pipeline(str(saved_pipe))
        single = RunStore(tmp_path / "single")
        probes = [Probe(p, seed=s, steps=2) for p in PROMPTS for s in SEEDS]
        # The command's default lane policy is "fit": every shard plans the lanes of the whole request.
        keys = generate(pipe, probes, single, progress=False, lane_policy="fit")
    finally:
        torch.set_num_threads(before)
    assert keys == [row["image_key"] for row in rows]
    assert all(single.image_path(k).read_bytes() == store.image_path(k).read_bytes() for k in keys)


@pytest.mark.slow
def test_shard_option_without_a_launcher(saved_pipe, tmp_path):
    """`--shard I/N` lets any scheduler (Slurm arrays, two terminals) split a run without accelerate."""
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "eraselab.cli", "generate", "--model", str(saved_pipe),
                               "--prompt", "a cat", "--prompt", "a dog", "--seeds", "0-3", "--steps", "2",
                               "--out", str(out), "--no-progress", "--shard", f"{i}/2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    store = RunStore(out)
    assert store._db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM images").fetchone() == (8, 8)
    assert (out / "images.csv").exists()  # written by whichever shard completed the set
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "eraselab.cli",
            "generate",
            "--model",
            str(saved_pipe),
            "--prompt",
            "a cat",
            "--out",
            str(out),
            "--shard",
            "2/2",
        ],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "shard 2 of 2 does not exist" in bad.stderr
