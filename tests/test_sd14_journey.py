"""The real-checkpoint journey at Stable Diffusion 1.4's exact sizes (slow: ~25 minutes on 2 CPU cores).

A diffusers folder with SD 1.4's architecture and random weights (UNet 860 M, CLIP-L text 123 M, VAE 84 M):
- `eraselab erase` with uce and with esd-x for two iterations, then `eraselab generate` of 2 images (4 steps,
  512 px) with the esd-x edit;
- with a small local random CLIP folder as the evaluator, a two-prompt YAML suite, 2 steps and one method
  (uce): `eraselab bench` runs to report.html, and a bench SIGKILLed mid-generation and run again ends with
  the same results.json as an uninterrupted run.
Seconds and peak memory of each command are printed (benchmarks/RESULTS.md records them).
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


def run_measured(argv: list[str], folder: Path) -> tuple[float, float]:
    """Run one CLI command to completion; its wall seconds and its own peak RSS in GB (wait4's rusage)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    started = time.perf_counter()
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    assert os.waitstatus_to_exitcode(status) == 0, (folder / "stderr.txt").read_text()[-3000:]
    return seconds, usage.ru_maxrss / 2 ** 20


def test_erase_uce_and_esd_x_then_generate_with_the_edit(journey):
    cli = [sys.executable, "-m", "eraselab.cli"]
    model = str(journey / "model")
    figures = {}
    figures["erase uce"] = run_measured(
        [
            *cli,
            "erase",
            "--model",
            model,
            "--method",
            "uce",
            "--target",
            "car",
            "--out",
            str(journey / "uce"),
        ],
        journey / "logs-uce",
    )
    # Two iterations of the reference recipe; the rollout's sampler takes 4 DDIM steps instead of 50 so that
    # one iteration stays within minutes of CPU.
    figures["erase esd-x (2 iterations)"] = run_measured(
        [*cli, "erase", "--model", model, "--method", "esd-x", "--target", "car", "--config", "iterations=2",
         "--config", "ddim_steps=4", "--out", str(journey / "esd")], journey / "logs-esd")
    figures["generate 2 images (4 steps, 512 px)"] = run_measured(
        [*cli, "generate", "--model", model, "--edit", str(journey / "esd"), "--prompt", "a photo of a car",
         "--seeds", "0,1", "--steps", "4", "--size", "512", "--lanes", "fit", "--no-progress",
         "--out", str(journey / "generated")], journey / "logs-generate")
    for folder in ("uce", "esd"):
        edit = json.loads((journey / folder / "edit.json").read_text())
        assert (
            edit["method"] in ("uce", "esd-x") and (journey / folder / "edit.safetensors").stat().st_size > 0
        )
    esd = json.loads((journey / "esd" / "edit.json").read_text())
    assert esd["config"]["iterations"] == 2
    images = sorted((journey / "generated").rglob("*.png"))
    assert len(images) == 2
    from PIL import Image

    assert all(Image.open(i).size == (512, 512) for i in images)
    for name, (seconds, peak_gb) in figures.items():
        print(f"{name}: {seconds:.0f} s, peak RSS {peak_gb:.1f} GB")


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
