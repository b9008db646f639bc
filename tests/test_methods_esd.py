"""ESD: the training target, the parameter groups each variant trains, that training lowers the loss, and the
unconditional anchor."""
import pytest
import torch
import torch.nn.functional as F

import eraselab
from eraselab.errors import EraseLabError
from eraselab.methods import esd as esd_module
from eraselab.methods.diffusion import NoiseSchedule, ddim_rollout, latent_shape
from eraselab.methods.esd import esd_target, paper_eta
from eraselab.methods.params import in_group
from eraselab.models import compute_fingerprint


def test_target_formula_in_both_conventions():
    g = torch.Generator().manual_seed(0)
    e0, ep = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for eta in (0.0, 1.0, 2.5):
        paper = esd_target(e0, ep, eta)
        assert torch.allclose(paper, e0 - eta * (ep - e0))
        diffusers = esd_target(e0, ep, eta + 1, convention="diffusers")
        assert torch.allclose(diffusers, ep - (eta + 1) * (ep - e0))
        assert torch.allclose(paper, diffusers, atol=1e-6)  # η′ = η + 1
        assert paper_eta(eta + 1) == eta
    assert torch.allclose(esd_target(e0, ep, 1.0), 2 * e0 - ep)  # the paper's default η = 1


@pytest.mark.parametrize("eta", [1.0, 2.5])
def test_training_uses_the_target_formula(tiny_pipe_factory, monkeypatch, eta):
    pipe = tiny_pipe_factory(0)
    seen = {}
    real_rollout, real_mse = esd_module.rollout, F.mse_loss

    def rollout(*args, **kw):
        seen["z"] = real_rollout(*args, **kw)
        return seen["z"]

    def sample(self, generator, pairing="in-bin"):
        seen["t"] = 700
        return 3, 700

    def mse(pred, target):
        seen.setdefault("targets", []).append(target.detach().clone())
        return real_mse(pred, target)

    monkeypatch.setattr(esd_module, "rollout", rollout)
    monkeypatch.setattr(esd_module.F, "mse_loss", mse)
    monkeypatch.setattr(NoiseSchedule, "sample_step_and_timestep", sample)
    eraselab.erase(
        pipe, "esd-x", ["circle"], iterations=1, ddim_steps=5, negative_guidance=eta, progress=False
    )
    tok = pipe.tokenizer(["", "circle"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():  # the pipe is back to the original weights, i.e. θ*
        u, c = pipe.text_encoder(tok.input_ids)[0]
        e0 = pipe.unet(seen["z"], 700, encoder_hidden_states=u[None]).sample
        ep = pipe.unet(seen["z"], 700, encoder_hidden_states=c[None]).sample
    assert torch.allclose(seen["targets"][0], e0 - eta * (ep - e0), atol=1e-5)


@pytest.mark.parametrize("method,group", [("esd-x", "x"), ("esd-u", "u"), ("esd-x-strict", "x-strict")])
def test_only_the_intended_parameter_group_changes(tiny_pipe_factory, method, group):
    pipe = tiny_pipe_factory(0)
    fp = compute_fingerprint(pipe)
    edit = eraselab.erase(
        pipe, method, ["circle", "star"], iterations=2, ddim_steps=4, lr=1e-3, progress=False
    )
    expected = {f"unet.{n}" for n, _ in pipe.unet.named_parameters() if in_group(n, group)}
    assert set(edit.tensors) == expected
    if group == "x-strict":
        assert all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in edit.tensors)
    if group == "x":
        assert all(".attn2." in n for n in edit.tensors) and any("to_out" in n for n in edit.tensors)
    if group == "u":
        assert not any(".attn2." in n or "time_embedding" in n or "conv_out" in n for n in edit.tensors)
        assert any("attn1" in n for n in edit.tensors) and any("resnets" in n for n in edit.tensors)
    assert compute_fingerprint(pipe) == fp  # the caller's pipeline is left as it was
    assert all(p.requires_grad for p in pipe.unet.parameters())


@torch.no_grad()
def rolled_out_latents(pipe, seed: int):
    """The "" and "circle" embeddings, and two latents rolled out (CFG 3) to each step of a 5-step DDIM
    schedule."""
    schedule = NoiseSchedule.from_pipe(pipe, 5)
    tok = pipe.tokenizer(["", "circle"], padding="max_length", max_length=77, return_tensors="pt")
    u, c = pipe.text_encoder(tok.input_ids)[0]
    g = torch.Generator().manual_seed(seed)
    points = [
        (
            ddim_rollout(
                pipe.unet, schedule, torch.randn(latent_shape(pipe, 2), generator=g), c, u, stop, 3.0
            ),
            int(schedule.timesteps[stop]),
        )
        for stop in range(5)
    ]
    return u, c, points


def test_training_lowers_the_esd_loss(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    u, c, points = rolled_out_latents(pipe, 123)
    batches = []
    with torch.no_grad():
        for z, t in points:
            e0 = pipe.unet(z, t, encoder_hidden_states=u.expand(2, -1, -1)).sample
            ep = pipe.unet(z, t, encoder_hidden_states=c.expand(2, -1, -1)).sample
            batches.append((z, t, e0 - (ep - e0)))

    def held_out_loss():
        with torch.no_grad():
            return sum(
                float(F.mse_loss(pipe.unet(z, t, encoder_hidden_states=c.expand(2, -1, -1)).sample, target))
                for z, t, target in batches
            )

    before = held_out_loss()
    edit = eraselab.erase(pipe, "esd-x", ["circle"], iterations=40, ddim_steps=5, lr=1e-4, progress=False)
    edit.apply(pipe)
    try:
        after = held_out_loss()
    finally:
        edit.revert(pipe)
    assert after < 0.5 * before, (before, after)
    assert edit.extras["loss_last"] < edit.extras["loss_first"]
    assert len(edit.extras["loss_curve"]) == 40


def test_anchor_unconditional_keeps_the_unconditional_prediction(tiny_pipe_factory):
    """The anchor term (λ‖ε_θ(∅) − ε*(∅)‖²) must hold ε(∅) nearer the original than the paper's loss does,
    while the conditional prediction still moves."""
    pipe = tiny_pipe_factory(0)
    u, c, points = rolled_out_latents(pipe, 5)

    def predictions():
        with torch.no_grad():
            return [(pipe.unet(z, t, encoder_hidden_states=u.expand(2, -1, -1)).sample,
                     pipe.unet(z, t, encoder_hidden_states=c.expand(2, -1, -1)).sample) for z, t in points]

    base = predictions()

    def drift(anchor):
        edit = eraselab.erase(pipe, "esd-x", ["circle"], iterations=30, ddim_steps=5, lr=1e-4,
                              anchor_unconditional=anchor, progress=False)
        assert edit.config["anchor_unconditional"] == anchor
        edit.apply(pipe)
        try:
            now = predictions()
        finally:
            edit.revert(pipe)
        return (sum(float(F.mse_loss(a[0], b[0])) for a, b in zip(now, base)),
                sum(float(F.mse_loss(a[1], b[1])) for a, b in zip(now, base)))

    free_u, _ = drift(0.0)
    anchored_u, anchored_c = drift(10.0)
    assert free_u > 0
    assert anchored_u < 0.2 * free_u, (free_u, anchored_u)  # measured: 66× smaller
    assert anchored_c > anchored_u, (anchored_c, anchored_u)  # the erased prediction still moves


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_anchor_unconditional_must_be_a_non_negative_number(tiny_pipe_factory, value):
    with pytest.raises(EraseLabError, match="anchor_unconditional"):
        eraselab.erase(tiny_pipe_factory(0), "esd-x", ["circle"], iterations=1, anchor_unconditional=value,
                       progress=False)
