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

pytestmark = pytest.mark.slow

SUITE = """\
name: journey
version: 1
targets:
  car:
    sibling: [bus]
"""


def sd14_sized_pipeline():
    """SD 1.4's architecture (its published configs) with random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from eraselab.models import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    from conftest import save_clip_folder, tiny_clip_model

    root = tmp_path_factory.mktemp("sd14")
    started = time.perf_counter()
    pipe = sd14_sized_pipeline()
    sizes = {n: sum(p.numel() for p in getattr(pipe, n).parameters())
             for n in ("unet", "text_encoder", "vae")}
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
