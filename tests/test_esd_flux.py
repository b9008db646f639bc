"""ESD-x and ESD-x-strict on Flux (methods/esd_flux.py, recipe "flux"): eraselab's own port of esd_sdxl.py
(rohitgandikota/erasing@25613d27892326e0c7770f7f3555bea4be150089) to flow matching; no official Flux ESD
exists, so the reference below is the formula itself, re-derived with diffusers' FluxPipeline:

- the rollout is FluxPipeline itself (the frozen transformer, the target prompt, guidance 3.5, stopped after
  run_till steps of its FlowMatchEulerDiscreteScheduler);
- at t = timesteps[run_till], v*(x_t, c) and v*(x_t, ∅) of the frozen transformer with FluxPipeline.
  encode_prompt's T5 states and pooled CLIP output ("" for ∅), the guidance embedded on -dev only;
- loss MSE(v_θ(x_t, c), v*(∅) − η (v*(c) − v*(∅))) with the paper's η 1, and its gradient by autograd.

Nothing below uses eraselab's text encoding, rollout, parameter selection or loss.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eraselab
from eraselab.edits import Edit
from eraselab.errors import EraseLabError

TOL = 1e-5
STEPS = 10
SIDE = 32  # 16×16 latents, 64 packed tokens
GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, the recipe's


def rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module", params=[True, False], ids=["dev", "schnell"])
def flux(request):
    from eraselab.tiny_families import tiny_random_flux_pipeline

    return tiny_random_flux_pipeline(0, guidance_embeds=request.param)


def text_projection_names(transformer, method):
    """The joint attention's text-stream projections of the double-stream blocks, weights and biases."""
    wanted = {"esd-x": ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
              "esd-x-strict": ("add_k_proj", "add_v_proj")}[method]
    return [f"transformer_blocks.{i}.attn.{p}.{n}" for i in range(len(transformer.transformer_blocks))
            for p in wanted for n in ("weight", "bias")]


def run_two_steps(pipe, method, monkeypatch, seed):
    """Two eraselab ESD steps on Flux; what the second one drew, rolled out and computed, and every
    transformer weight just before the session restored them."""
    from esd_step_recorder import record_esd_steps

    from eraselab.methods import esd_flux
    from eraselab.methods.training import TrainingSession

    seen = record_esd_steps(monkeypatch, esd_flux.FluxSteps)
    real_finish = TrainingSession.finish

    def finish(self, *args, **kwargs):
        seen["trained"] = {n: p.detach().clone() for n, p in self.unet.named_parameters()}
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(TrainingSession, "finish", finish)
    edit = eraselab.erase(pipe, method, ["cat"], iterations=2, ddim_steps=STEPS, lr=1e-3, image_size=SIDE,
                          seed=seed, progress=False)
    return edit, seen


def flux_rollout_reference(pipe, base, noise, prompt, stop):
    """FluxPipeline(prompt, guidance_scale=3.5) with the frozen transformer, stopped after `stop` steps."""
    from diffusers import FluxPipeline

    ref = FluxPipeline(**{**pipe.components, "transformer": base,
                          "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)})
    ref.set_progress_bar_config(disable=True)
    if stop == 0:
        return noise

    def stop_after(p, i, t, kwargs):
        if i + 1 == stop:
            p._interrupt = True
        return {}

    with torch.no_grad():
        return ref(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise.clone(),
                   height=SIDE, width=SIDE, output_type="latent", callback_on_step_end=stop_after).images


def flux_timesteps(pipe, seq_len):
    """The timesteps FluxPipeline sets: sigmas linspace(1, 1/S, S), shifted by mu from the token count."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    c = sched.config
    mu = calculate_shift(seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    return retrieve_timesteps(sched, STEPS, "cpu", sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)[0]


@pytest.mark.parametrize("method", ["esd-x", "esd-x-strict"])
def test_esd_on_flux_step_matches_the_flow_matching_formula(flux, method, monkeypatch):
    guided = bool(flux.transformer.config.guidance_embeds)
    edit, seen = run_two_steps(flux, method, monkeypatch, seed=1)
    cfg = edit.config
    assert (cfg["recipe"], cfg["negative_guidance"], cfg["rollout_guidance"], cfg["rollout_model"]) == (
        "flux", 1.0, GUIDANCE, "frozen")
    assert "no official reference" in edit.extras["recipe"]["summary"]
    names = text_projection_names(flux.transformer, method)
    assert sorted(seen["grads"]) == sorted(names)
    assert seen["stop"] > 0  # the rollout runs
    base = copy.deepcopy(flux.transformer)  # θ*: the pipe's weights (erase restored them)
    trained = copy.deepcopy(flux.transformer)
    params = dict(trained.named_parameters())
    with torch.no_grad():
        for n, v in seen["theta"].items():
            params[n].copy_(v)
    assert any(rel(v, dict(base.named_parameters())[n]) > 1e-6 for n, v in seen["theta"].items())  # θ1 ≠ θ*
    z = flux_rollout_reference(flux, base, seen["noise"], "cat", seen["stop"])
    assert rel(seen["z"], z) <= TOL, rel(seen["z"], z)

    t = flux_timesteps(flux, z.shape[1])[seen["stop"]]
    with torch.no_grad():
        c_states, c_pooled, text_ids = flux.encode_prompt("cat", prompt_2=None, device="cpu")
        n_states, n_pooled, _ = flux.encode_prompt("", prompt_2=None, device="cpu")
    image_ids = flux._prepare_latent_image_ids(1, SIDE // 4, SIDE // 4, "cpu", torch.float32)

    def loss_and_gradient(g):
        guidance = torch.full([1], g) if guided else None

        def velocity(model, states, pooled):
            return model(hidden_states=z, timestep=t.expand(1) / 1000, guidance=guidance,
                         pooled_projections=pooled, encoder_hidden_states=states, txt_ids=text_ids,
                         img_ids=image_ids, return_dict=False)[0]

        with torch.no_grad():
            v_c, v_null = velocity(base, c_states, c_pooled), velocity(base, n_states, n_pooled)
        eta = 1.0  # the recipe's paper η
        loss = F.mse_loss(velocity(trained, c_states, c_pooled), v_null - eta * (v_c - v_null))
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        return loss, torch.cat([g.flatten() for g in grads])

    loss, ref = loss_and_gradient(GUIDANCE)
    ours = torch.cat([seen["grads"][n].flatten() for n in names])
    loss = float(loss.detach())
    print(f"{method} on Flux-{'dev' if guided else 'schnell'}: stop {seen['stop']}, latent rel "
          f"{rel(seen['z'], z):.2e}, loss rel {abs(seen['loss'] - loss) / loss:.2e}, gradient max "
          f"rel {rel(ours, ref):.2e}")
    assert abs(seen["loss"] - loss) <= TOL * loss
    assert rel(ours, ref) <= TOL
    if guided:  # the embedded guidance matters: another value gives another gradient
        assert rel(loss_and_gradient(1.0)[1], ref) > 1e-3


@pytest.mark.parametrize("method", ["esd-x", "esd-x-strict"])
def test_esd_on_flux_changes_only_the_text_projections(flux, method, monkeypatch):
    edit, seen = run_two_steps(flux, method, monkeypatch, seed=0)
    names = set(text_projection_names(flux.transformer, method))
    base = dict(flux.transformer.named_parameters())
    changed = {n for n, v in seen["trained"].items() if not torch.equal(v, base[n])}
    assert changed == names  # while training, nothing else moved (single-stream blocks included)
    assert set(edit.tensors) == {f"transformer.{n}" for n in names}
    assert all(torch.equal(edit.tensors[f"transformer.{n}"], seen["trained"][n]) for n in names)
    assert eraselab.edits.applied_edit(flux) is None
    assert all(torch.equal(v, base[n]) for n, v in dict(flux.transformer.named_parameters()).items())


def test_esd_on_flux_refuses_what_it_cannot_train(flux):
    for config, message in (({"parameter_group": "u"}, "parameter group x or x-strict"),
                            ({"rollout_sampler": "ddim"}, "rollout_sampler=pipeline, timestep_pairing=exact"),
                            ({"recipe": "sdxl"}, "recipe 'sdxl' reproduces code for sdxl models, not flux")):
        with pytest.raises(EraseLabError, match=message) as info:
            eraselab.erase(flux, "esd-x", ["cat"], progress=False, **config)
        assert "\n" not in str(info.value)
    with pytest.raises(EraseLabError, match="runs on SD 1.x/2.x models, not on this Flux pipeline"):
        eraselab.erase(flux, "esd-u", ["cat"], progress=False)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from eraselab.tiny_families import tiny_random_flux_pipeline

    folder = tmp_path_factory.mktemp("tiny_flux_esd")
    tiny_random_flux_pipeline(0).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("method,tensors", [("esd-x", 8), ("esd-x-strict", 4)])
def test_cli_erase_esd_on_a_saved_flux_folder(flux_folder, method, tensors, tmp_path, capsys):
    from eraselab.cli import main
    from eraselab.generate import generate, images_for
    from eraselab.models import load_pipeline
    from eraselab.probes import Probe
    from eraselab.store import RunStore

    out = tmp_path / "edit"
    settings = [a for c in ("iterations=2", "ddim_steps=3", "image_size=16", "lr=0.05")
                for a in ("--config", c)]
    capsys.readouterr()
    code = main(["erase", "--model", str(flux_folder), "--method", method, "--target", "cat", *settings,
                 "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    edit = Edit.load(out)
    assert edit.method == method and len(edit.tensors) == tensors and edit.config["recipe"] == "flux"
    assert edit.extras["recipe"]["official"] is False  # the provenance says no official code exists
    pipe = load_pipeline(str(flux_folder), device="cpu")
    probe = Probe("a photo of a cat", seed=3, steps=2, guidance=3.5, height=16, width=16, concepts=("cat",))
    store = RunStore(tmp_path / "run")
    images = []
    for e in (None, edit):
        keys = generate(pipe, [probe], store, edit=e, batch_size=1, progress=False)
        images.append(np.asarray(images_for(store, keys)[0], dtype=np.float32))
    assert images[1].shape == (16, 16, 3)
    assert np.abs(images[0] - images[1]).mean() > 0  # the edit acts on what the engine generates
