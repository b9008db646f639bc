"""The erasure front door: validation and one-line errors, presets, the CLI, and the no-training methods."""
import json
from types import SimpleNamespace

import pytest
import torch

import eraselab
from eraselab.cli import main
from eraselab.edits import Edit
from eraselab.errors import EraseLabError
from eraselab.guidance import guidance_for
from eraselab.methods import build_request, method_names
from eraselab.methods.params import in_group
from eraselab.methods.sld import STRENGTHS


def test_every_method_of_the_issue_is_registered():
    # A subset: later issues register more methods.
    assert {"esd-x", "esd-u", "esd-x-strict", "uce", "ap", "age", "rece", "ca", "negprompt",
            "sld"} <= set(method_names())


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="nope", targets=["circle"]), "unknown method 'nope'"),
    (dict(method="uce", targets=[]), "no target concept"),
    (dict(method="uce", targets=["  "]), "target concept is empty"),
    (dict(method="uce", targets=["circle"], preserve=["Circle"]), "both a target and a preserved"),
    (dict(method="uce", targets=["circle"], lamb=0.5), "unknown config key 'lamb'"),
    (dict(method="uce", targets=["circle"], lam="big"), "config lam must be float"),
    (dict(method="esd-x", targets=["circle"], iterations=2.5), "config iterations must be int"),
    (dict(method="esd-x", targets=["circle"], iterations=0), "iterations must be positive"),
    (dict(method="uce", targets=["circle"], tokens="all"), "tokens must be one of"),
    (dict(method="sld", targets=["circle"], strength="extreme"), "strength must be one of"),
    (dict(method="uce", targets=["circle"], preset="huge"), "preset must be one of"),
])
def test_bad_input_gives_one_line_errors(kwargs, message):
    with pytest.raises(EraseLabError, match=message) as info:
        build_request(**kwargs)
    assert "\n" not in str(info.value)


def test_model_without_cross_attention_is_refused():
    no_unet = SimpleNamespace(text_encoder=None)
    with pytest.raises(EraseLabError, match="no UNet"):
        eraselab.erase(no_unet, "uce", ["circle"])
    plain = SimpleNamespace(unet=torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3)))
    with pytest.raises(EraseLabError, match="no text cross-attention"):
        eraselab.erase(plain, "esd-x", ["circle"])


def test_cli_strings_are_parsed_by_type():
    _, req = build_request("esd-x", ["circle"], iterations="7", lr="3e-4", preset="sd")
    assert req.config.iterations == 7 and req.config.lr == 3e-4
    _, req = build_request("uce", "circle", check="false")
    assert req.config.check is False and req.targets == ["circle"]


def test_preset_follows_the_model(tiny_pipe_factory):
    tiny = tiny_pipe_factory(0)
    _, req = build_request("esd-x", ["circle"], pipe=tiny)
    assert req.config.preset == "miniworld" and req.config.iterations == 150  # tiny UNet → miniworld preset
    _, req = build_request("esd-x", ["circle"], pipe=tiny, preset="sd")
    assert req.config.iterations == 1000 and req.config.lr == 1e-5  # the paper's defaults
    assert req.config.anchor_unconditional == 0  # and the paper's loss
    _, req = build_request("esd-x", ["circle"], pipe=tiny, iterations=3)
    assert req.config.iterations == 3 and req.config.lr == 3e-4  # user values win over the preset


class _NoWeights(SimpleNamespace):
    """A pipeline stand-in without weights (inference-time methods read none); unlike SimpleNamespace it can
    be weakly referenced, which eraselab's per-pipeline state needs."""


def test_negative_prompt_edit():
    pipe = _NoWeights(unet=None)
    edit = eraselab.erase(pipe, "negprompt", ["circle", "red star"])
    assert edit.tensors == {} and edit.generation == {
        "kind": "negative_prompt",
        "negative_prompt": "circle, red star",
    }
    assert guidance_for(edit.generation).negative_prompt("") == "circle, red star"


@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_sld_guidance_matches_diffusers_safe_pipeline(strength):
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    pipe = _NoWeights(unet=None)
    edit = eraselab.erase(pipe, "sld", ["nudity"], strength=strength)
    hook = guidance_for(edit.generation)
    assert hook.extra_prompts() == ["nudity"]
    p = STRENGTHS[strength]
    g = torch.Generator().manual_seed(0)
    state, momentum = {}, None
    for step in range(20):
        eps_u, eps_t, eps_s = (0.05 * torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        ours = hook.combine(eps_u, eps_t, [eps_s], 7.5, step, state)
        guided, momentum = StableDiffusionPipelineSafe.perform_safety_guidance(
            None, True, momentum, eps_t - eps_u, (eps_t, eps_u, eps_s), step, p["guidance_scale"],
            p["warmup_steps"], p["threshold"], p["momentum_scale"], p["momentum_beta"])
        assert torch.allclose(ours, eps_u + 7.5 * guided, atol=1e-6), (strength, step)


def test_ca_trains_cross_attention_kv_towards_an_anchor(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    with pytest.raises(EraseLabError, match="needs an anchor"):
        eraselab.erase(pipe, "ca", ["circle"], progress=False)
    edit = eraselab.erase(
        pipe,
        "ca",
        ["circle"],
        anchor="shape",
        iterations=3,
        anchor_images=2,
        sample_steps=2,
        batch_size=2,
        lr=1e-4,
        progress=False,
    )
    assert edit.extras["anchor"] == "shape"
    assert edit.tensors and all(in_group(n.removeprefix("unet."), "x-strict") for n in edit.tensors)
    assert len(edit.extras["loss_curve"]) == 3


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from eraselab.models import tiny_random_pipeline

    folder = tmp_path_factory.mktemp("model")
    tiny_random_pipeline(0).save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_cli_writes_an_edit_and_refuses_to_overwrite(saved_model, tmp_path, capsys):
    out = tmp_path / "edit"
    args = [
        "erase",
        "--model",
        str(saved_model),
        "--method",
        "uce",
        "--target",
        "circle",
        "--preserve",
        "star",
        "--config",
        "lam=0.3",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    edit = Edit.load(out)
    assert edit.method == "uce" and edit.config["lam"] == 0.3 and edit.preserved == ["star"]
    assert json.loads((out / "edit.json").read_text())["seconds"] > 0
    assert main(args) == 2
    assert "already holds an edit" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--method", "uce", "--target", "circle", "--config", "nonsense=1"], "unknown config key"),
    (["--method", "uce", "--target", "circle", "--config", "lam"], "is not key=value"),
    (["--method", "uce", "--target", ""], "target concept is empty"),
    (["--method", "uce"], "no target concept"),
    (["--method", "ca", "--target", "circle"], "needs an anchor"),  # fails after the model is loaded
])
def test_cli_failures_write_nothing(saved_model, tmp_path, capsys, extra, message):
    out = tmp_path / "edit"
    assert main(["erase", "--model", str(saved_model), *extra, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: diffusers' loading bars
    assert err.startswith("error: ") and message in err
    assert not out.exists()


def test_methods_command_lists_every_method(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in method_names():
        assert name in text
