"""The real-checkpoint journey at Stable Diffusion 1.4's exact sizes (slow: ~15 minutes on 2 CPU cores).

A diffusers folder with SD 1.4's architecture and random weights (UNet 860 M, CLIP-L text 123 M, VAE 84 M),
a small local random CLIP folder as the evaluator, a two-prompt YAML suite, 2 steps, one method (uce):
- `eraselab bench` runs to report.html;
- a bench SIGKILLed mid-generation and run again ends with the same results.json as an uninterrupted run.
Seconds and peak memory are printed (benchmarks/RESULTS.md records them).
"""
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eraselab.shaped_models import parameter_counts, sd14_shaped_pipeline

pytestmark = pytest.mark.slow

SUITE = """\
name: journey
version: 1
targets:
  car:
    sibling: [bus]
"""


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    from conftest import save_clip_folder, tiny_clip_model

    root = tmp_path_factory.mktemp("sd14")
    started = time.perf_counter()
    pipe = sd14_shaped_pipeline()
    sizes = parameter_counts(pipe)
    assert 855e6 < sizes["unet"] < 865e6 and 120e6 < sizes["text_encoder"] < 126e6, sizes
    pipe.save_pretrained(root / "model")
    del pipe
    print(f"built and saved the SD-1.4-sized folder in {time.perf_counter() - started:.0f} s; sizes {sizes}")
    save_clip_folder(root / "clip", *tiny_clip_model())
    (root / "suite.yaml").write_text(SUITE)
    return root


def bench_argv(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "eraselab.cli", "bench", "--model", str(root / "model"), "--methods", "uce",
            "--target", "car", "--suites", str(root / "suite.yaml"), "--evaluator", f"clip:{root / 'clip'}",
            "--seeds-per-prompt", "1", "--steps", "2", "--no-attention", "--out", str(out)]


def run(argv, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def finish(proc: subprocess.Popen) -> tuple[float, str]:
    started = time.perf_counter()
    out, err = proc.communicate(timeout=3600)
    assert proc.returncode == 0, err[-3000:]
    return time.perf_counter() - started, out


def test_bench_runs_to_the_report_and_a_killed_run_resumes_to_the_same_results(journey):
    whole = journey / "whole"
    seconds, _ = finish(run(bench_argv(journey, whole)))
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    assert (whole / "results.json").exists()
    report = subprocess.run([sys.executable, "-m", "eraselab.cli", "report", "--run", str(whole)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert report.returncode == 0, report.stderr
    assert (whole / "report.html").exists()
    print(f"uninterrupted bench: {seconds:.0f} s, peak RSS {peak_gb:.1f} GB")

    killed = journey / "killed"
    proc = run(bench_argv(journey, killed))
    store = killed / "store"
    # Kill as soon as the first images are stored: the original model's batch is done, the rest is not.
    while proc.poll() is None and not any(store.rglob("*.png")):
        time.sleep(0.5)
    assert proc.poll() is None, "the bench finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list(store.rglob("*.png")))
    assert kept >= 1 and not (killed / "results.json").exists()
    seconds_resumed, _ = finish(run(bench_argv(journey, killed)))
    print(f"killed after {kept} image(s); the re-run finished in {seconds_resumed:.0f} s")

    first = json.loads((whole / "results.json").read_text())
    again = json.loads((killed / "results.json").read_text())
    assert again["results_hash"] == first["results_hash"]
