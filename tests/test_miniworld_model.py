"""The shipped miniworld model: loads offline as a StableDiffusionPipeline, generates, and is far above chance
on a quick oracle check that a random-init pipeline of the same architecture fails."""
import json

import pytest

from eraselab.models import load_pipeline, miniworld_weights_dir


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("miniworld")


@pytest.fixture(scope="module")
def oracle():
    from eraselab.miniworld.oracle import Oracle

    return Oracle.load()


def test_shipped_weights_are_a_small_sd_pipeline(pipe):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.scheduler, DDIMScheduler)
    assert len(pipe.tokenizer) == 49408 and pipe.text_encoder.config.vocab_size == 49408
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    total = sum(p.stat().st_size for p in miniworld_weights_dir().rglob("*") if p.is_file())
    assert total <= 40 * 2 ** 20


def test_training_record_names_command_and_seed():
    rec = json.loads((miniworld_weights_dir() / "TRAINING.json").read_text())
    assert rec["command"].startswith("eraselab miniworld train") and "--seed" in rec["command"]
    assert rec["diffusion_steps"] > 0 and "diffusion" in rec["final_losses"]


def test_pipeline_call_generates_32px_images(pipe):
    import torch

    out = pipe("a red circle", num_inference_steps=4, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)


def test_quick_check_passes_for_shipped_model_and_fails_for_random_init(pipe, oracle):
    from eraselab.miniworld.score import quick_check
    from eraselab.miniworld.train import random_pipeline

    trained = quick_check(pipe, oracle)
    assert trained["passed"], trained
    broken = quick_check(random_pipeline(seed=1), oracle)
    assert not broken["passed"], broken
    assert broken["object_acc"] < 0.3


def test_shown_rate_counts_the_images_whose_oracle_row_holds_the_class(pipe, oracle, tmp_path):
    """shown_rate, the effect tests' and preset trials' one count: a fixed oracle answer gives the share of
    rows naming the class, and the real oracle sees the shipped model's circles on most seeds."""
    from eraselab.miniworld.rates import shown_rate
    from eraselab.store import RunStore

    store = RunStore(tmp_path / "store")
    answers = [[{"class": "circle"}], [{"class": "star"}], [], [{"class": "star"}, {"class": "circle"}]]

    class Fixed:
        def predict(self, images):
            assert len(images) == 4
            return [{"objects": a} for a in answers]

    assert shown_rate(pipe, store, Fixed(), "circle", None, seeds=4) == 0.5
    assert shown_rate(pipe, store, oracle, "circle", None, seeds=4) >= 0.5


def test_warm_start_continues_from_the_shipped_weights(pipe, tmp_path):
    """`train --init miniworld` starts from the shipped UNet/text encoder, keeps the VAE, and records where it
    started; a few seconds of training move the weights a little, not back to a random init."""
    import torch

    from eraselab.miniworld.train import TrainConfig, train

    shipped = json.loads((miniworld_weights_dir() / "TRAINING.json").read_text())
    cfg = TrainConfig(seed=0, minutes=0.04, n_images=100, init="miniworld", checkpoint_every_s=1e9)
    record = train(tmp_path / "warm", cfg)
    assert record["warm_start"]["source"] == "miniworld"
    assert record["warm_start"]["diffusion_steps"] == shipped["diffusion_steps"]
    assert record["vae_steps"] == 0 and record["diffusion_steps"] > shipped["diffusion_steps"]
    assert "--init miniworld" in record["command"]
    warm = load_pipeline(str(tmp_path / "warm"))
    for a, b in zip(warm.vae.state_dict().values(), pipe.vae.state_dict().values()):
        assert torch.equal(a, b)
    moved = [(a - b).abs().max().item() for a, b in zip(warm.unet.state_dict().values(),
                                                        pipe.unet.state_dict().values())]
    assert 0 < max(moved) < 0.05, max(moved)


@pytest.mark.parametrize("pair_share", [0.0, 1.0])
def test_step_budget_and_pair_share_decide_how_long_and_on_which_scenes(tmp_path, monkeypatch, pair_share):
    """`--steps N` trains exactly N diffusion steps (whatever the clock says); `--pair-share` draws that share
    of every batch from two-object scenes (0: only single objects, 1: only pairs)."""
    from eraselab.miniworld import train as train_module
    from eraselab.miniworld.train import TrainConfig, train

    layouts = []
    real_caption = train_module.caption_with_phrases
    monkeypatch.setattr(train_module, "caption_with_phrases", lambda scene, rng: layouts.append(scene.layout)
                        or real_caption(scene, rng))
    cfg = TrainConfig(seed=0, minutes=1e-6, n_images=100, init="miniworld", steps=3, pair_share=pair_share,
                      batch=8, cfg_dropout=0.0, checkpoint_every_s=1e9)
    record = train(tmp_path / "run", cfg)
    assert record["diffusion_steps"] - record["warm_start"]["diffusion_steps"] == 3
    assert len(layouts) == 3 * 8
    assert all((layout != "single") == bool(pair_share) for layout in layouts), layouts
    assert f"--steps 3 --pair-share {pair_share:g}" in record["command"]


@pytest.mark.slow
def test_score_reports_every_gate(pipe, oracle):
    from eraselab.miniworld.score import TARGETS, score

    result = score(pipe=pipe, oracle=oracle, seeds=1, steps=20, heldout_n=300)
    assert set(TARGETS) <= set(result) and result["seconds"] > 0
    assert result["object_acc"] > 0.5 and result["superclass_member_rate"] > 0.5
