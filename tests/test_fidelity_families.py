"""The SDXL and Flux versions of UCE and ESD equal their official scripts, re-derived here on the tiny random
SDXL and Flux pipelines (eraselab.tiny_families) with diffusers' own pipeline code for the text and the
rollout:

- UCE on SDXL: rohitgandikota/unified-concept-editing@28c81ed5a3e41277c1a0dc55f738e7ab188e9718,
  trainscripts/uce_sd_erase.py (its README's SDXL command): StableDiffusionXLPipeline.encode_prompt's
  2048-wide (here 32 + 64) concatenated text, the first tokenizer's last word token, every attn2.to_k/to_v.
- UCE on Flux: the same commit, trainscripts/uce_flux_edit.py: FluxPipeline.encode_prompt's T5 states (256
  tokens on -schnell, 512 otherwise) at the last word token and CLIP's pooled output, the modules named
  'context_embedder' / 'text_embedder.linear_1', v* = module(c) with its bias.
- ESD-x and ESD-x-strict on SDXL: rohitgandikota/erasing@25613d27892326e0c7770f7f3555bea4be150089, esd_sdxl.py
  with utils/sdxl_utils.py: the rollout is diffusers' StableDiffusionXLPipeline itself (frozen UNet, CFG 2,
  no negative prompt, stopped after run_till steps), then the script's loss at timesteps[run_till].

ESD on Flux has no official script (it is eraselab's own port): tests/test_esd_flux.py checks it against
its formula.

The closed forms are solved in float64 here (the scripts: float32 inverse), so the comparison measures the
method, not float32 rounding. Nothing below uses eraselab's text encoding, rollout or solve.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import eraselab
from eraselab.errors import EraseLabError

TOL = 1e-5
STEPS = 4  # sampler steps of the ESD runs (the script: 50); bfloat16 runs slowly on CPUs


def rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def sdxl():
    from eraselab.tiny_families import tiny_random_sdxl_pipeline

    return tiny_random_sdxl_pipeline(0)


@pytest.fixture(scope="module", params=[True, False], ids=["dev", "schnell"])
def flux(request):
    from eraselab.tiny_families import tiny_random_flux_pipeline

    return tiny_random_flux_pipeline(0, guidance_embeds=request.param)


def closed_form(modules, embeds, outputs, erase, guide, preserve, lam=0.5, s_e=1.0, s_p=1.0):
    """The scripts' loop: mat1 = λW + Σ s v* cᵀ, mat2 = λI + Σ s c cᵀ, W = mat1 mat2⁻¹ (float64).
    embeds[text][k] is the text's column for module k, outputs[text][k] = module_k(that column)."""
    new = []
    for k, module in enumerate(modules):
        w = module.weight.double()
        mat1, mat2 = lam * w, lam * torch.eye(w.shape[1], dtype=torch.float64)
        for e, g in zip(erase, guide):
            c, v = embeds[e][k].double().reshape(-1, 1), outputs[g][k].double().reshape(-1, 1)
            mat1, mat2 = mat1 + s_e * v @ c.T, mat2 + s_e * c @ c.T
        for p in preserve:
            c, v = embeds[p][k].double().reshape(-1, 1), outputs[p][k].double().reshape(-1, 1)
            mat1, mat2 = mat1 + s_p * v @ c.T, mat2 + s_p * c @ c.T
        new.append(mat1 @ torch.inverse(mat2))
    return new


# ---- UCE on SDXL -------------------------------------------------------------------------------------------
@torch.no_grad()
def uce_sd_erase_reference(pipe, edit, guide, preserve):
    modules, names = [], []
    for name, module in pipe.unet.named_modules():
        if "attn2" in name and (name.endswith("to_v") or name.endswith("to_k")):
            modules.append(module)
            names.append(f"unet.{name}.weight")
    embeds = {}
    for e in edit + guide + preserve:
        t_emb = pipe.encode_prompt(prompt=e, device="cpu", num_images_per_prompt=1,
                                   do_classifier_free_guidance=False)
        last = pipe.tokenizer(e, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")["attention_mask"].sum() - 2
        embeds[e] = [t_emb[0][:, last, :]] * len(modules)
    outputs = {g: [m(embeds[g][k]) for k, m in enumerate(modules)] for g in guide + preserve}
    return dict(zip(names, closed_form(modules, embeds, outputs, edit, guide, preserve)))


def test_uce_on_sdxl_matches_uce_sd_erase(sdxl):
    edit = eraselab.erase(sdxl, "uce", ["cat"], preserve=["dog", "red car"], preserve_scale=1.0,
                          progress=False)
    assert edit.config["recipe"] == "current"
    assert edit.extras["recipe"]["file"] == "trainscripts/uce_sd_erase.py"
    ref = uce_sd_erase_reference(sdxl, ["cat"], [""], ["dog", "red car"])
    assert set(edit.tensors) == set(ref) and len(ref) == 16
    assert {t.shape[1] for t in edit.tensors.values()} == {32 + 64}  # both encoders' widths, concatenated
    worst = max(rel(edit.tensors[n].double(), ref[n]) for n in ref)
    print(f"UCE-SDXL: {len(ref)} projections, max rel {worst:.2e}")
    assert worst <= TOL
    # The edit is not the identity: the target's keys/values moved.
    base = dict(sdxl.unet.named_parameters())
    assert min(rel(edit.tensors[n].double(), base[n[len("unet."):]].double()) for n in ref) > 1e-4


def test_uce_on_sdxl_with_a_style_guide(sdxl):
    edit = eraselab.erase(sdxl, "uce", ["van gogh", "picasso"], guide="art", preserve_scale=1.0,
                          progress=False)
    ref = uce_sd_erase_reference(sdxl, ["van gogh", "picasso"], ["art", "art"], [])
    assert max(rel(edit.tensors[n].double(), ref[n]) for n in ref) <= TOL


def test_uce_paper_recipe_is_refused_on_sdxl(sdxl):
    with pytest.raises(EraseLabError, match="recipe 'paper' reproduces code for sd models, not sdxl; "
                                            "choose current"):
        eraselab.erase(sdxl, "uce", ["cat"], recipe="paper", progress=False)


# ---- UCE on Flux -------------------------------------------------------------------------------------------
@torch.no_grad()
def uce_flux_edit_reference(pipe, edit, guide, preserve, max_sequence_length):
    modules, names = [], []
    for name, module in pipe.transformer.named_modules():
        if "context_embedder" in name or "text_embedder.linear_1" in name:
            modules.append(module)
            names.append(f"transformer.{name}.weight")
    texts = {}
    for e in edit + guide + preserve:
        t_emb = pipe.encode_prompt(prompt=e, prompt_2=None, device="cpu", num_images_per_prompt=1,
                                   max_sequence_length=max_sequence_length)
        last = (pipe.tokenizer_2(e, padding="max_length", max_length=max_sequence_length, truncation=True,
                                 return_tensors="pt")["attention_mask"]).sum() - 2
        texts[e] = [t_emb[0][:, last, :], t_emb[1]]
    # The script feeds each module the T5 row, or the pooled CLIP vector where that fails (try/except), and
    # later picks the same text by width (768 = FLUX.1's pooled CLIP); the tiny model's CLIP is 32 wide, so
    # the column is chosen here by what the module accepted, which is the script's choice on FLUX.1.
    embeds, outputs = {}, {}
    for e, (t5_row, pooled) in texts.items():
        embeds[e], outputs[e] = [], []
        for module in modules:
            try:
                out, column = module(t5_row), t5_row
            except RuntimeError:
                out, column = module(pooled), pooled
            embeds[e].append(column)
            outputs[e].append(out)
    return dict(zip(names, closed_form(modules, embeds, outputs, edit, guide, preserve)))


def test_uce_on_flux_matches_uce_flux_edit(flux):
    guided = flux.transformer.config.guidance_embeds
    edit = eraselab.erase(flux, "uce", ["cat"], preserve=["dog", "red car"], progress=False)
    assert edit.config["recipe"] == "flux" and edit.config["t5_tokens"] == (512 if guided else 256)
    ref = uce_flux_edit_reference(flux, ["cat"], [""], ["dog", "red car"], 512 if guided else 256)
    assert set(edit.tensors) == set(ref) == {"transformer.context_embedder.weight",
                                             "transformer.time_text_embed.text_embedder.linear_1.weight"}
    worst = max(rel(edit.tensors[n].double(), ref[n]) for n in ref)
    print(f"UCE-Flux ({'dev' if guided else 'schnell'}): max rel {worst:.2e}")
    assert worst <= TOL
    # The guide "" takes T5's last padding position (Σ mask − 2 = −1), as the script indexes: another position
    # gives another edit.
    other = uce_flux_edit_reference(flux, ["cat"], ["the"], ["dog", "red car"], 512 if guided else 256)
    name = "transformer.context_embedder.weight"
    assert rel(other[name], ref[name]) > 1e-4


def test_uce_on_flux_lands_one_bias_away_unless_asked(flux):
    """uce_flux_edit.py's v* = module(c) includes the bias, which the edited layer adds again: the target's
    output lands on the guide's plus b and the preserved concept's moves by b. eraselab's
    flux_target_bias=false (off in the recipe) lands them on the old outputs themselves."""
    from eraselab.methods.uce_flux import default_t5_tokens, flux_text_rows

    rows = flux_text_rows(flux, ["cat", "", "dog"], default_t5_tokens(flux))
    layer = flux.transformer.context_embedder
    with torch.no_grad():
        goal, old_kept, before = (layer(rows[x]["t5"]) for x in ("", "dog", "cat"))
        for option, shift in ((True, layer.bias), (False, 0.0)):
            edit = eraselab.erase(flux, "uce", ["cat"], preserve=["dog"], lam=1e-4, flux_target_bias=option,
                                  progress=False)
            w_new = edit.tensors["transformer.context_embedder.weight"]
            after, kept = (rows[x]["t5"] @ w_new.T + layer.bias for x in ("cat", "dog"))
            assert (after - goal - shift).norm() < 0.01 * (before - goal).norm()
            assert (kept - old_kept - shift).norm() < 0.01 * old_kept.norm()
    assert layer.bias.norm() > 0.05 * goal.norm()  # so the two cases differ measurably


def test_flux_refuses_what_has_no_official_flux_version(flux):
    for method in ("esd-u", "negprompt", "sld", "rece"):
        refusal = "runs on SD 1.x/2.x( and SDXL)? models, not on this Flux"
        with pytest.raises(EraseLabError, match=refusal) as info:
            eraselab.erase(flux, method, ["cat"], progress=False)
        assert "\n" not in str(info.value)
    with pytest.raises(EraseLabError, match="tokens=last"):
        eraselab.erase(flux, "uce", ["cat"], tokens="last_to_end", progress=False)


# ---- ESD on SDXL -------------------------------------------------------------------------------------------
def esd_sdxl_names(unet, method):
    """esd_sdxl.py's get_esd_trainable_parameters for esd-x / esd-x-strict."""
    names = []
    for mname, module in unet.named_modules():
        if module.__class__.__name__ in ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv"):
            if (method == "esd-x" and "attn2" in mname) or (
                    method == "esd-x-strict" and ("attn2.to_k" in mname or "attn2.to_v" in mname)):
                names += [f"{mname}.{n}" for n, _ in module.named_parameters()]
    return names


def run_two_steps(pipe, method, monkeypatch):
    """Two eraselab ESD steps on SDXL; what the second one drew, rolled out and computed."""
    from esd_step_recorder import record_esd_steps

    from eraselab.methods import esd_sdxl

    seen = record_esd_steps(monkeypatch, esd_sdxl.SDXLSteps)
    edit = eraselab.erase(pipe, method, ["cat"], preset="sd", iterations=2, ddim_steps=STEPS, lr=1e-3,
                          image_size=32, seed=2, progress=False)  # seed 2: the second rollout runs 2 steps
    return edit, seen


def sdxl_rollout_reference(pipe, base_unet, noise, prompt, stop, side):
    """esd_sdxl_call: diffusers' StableDiffusionXLPipeline run for timesteps[0:stop] (the frozen UNet, CFG 2,
    no negative prompt), interrupted after `stop` steps."""
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline(**{**pipe.components, "unet": base_unet,
                                       "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)})
    ref.set_progress_bar_config(disable=True)
    if stop == 0:
        return noise * ref.scheduler.init_noise_sigma

    def stop_after(p, i, t, kwargs):
        if i + 1 == stop:
            p._interrupt = True
        return {}

    with torch.no_grad():
        return ref(prompt, num_inference_steps=STEPS, guidance_scale=2.0, latents=noise.clone(), height=side,
                   width=side, output_type="latent", callback_on_step_end=stop_after).images


@pytest.mark.parametrize("method", ["esd-x", "esd-x-strict"])
def test_esd_on_sdxl_step_matches_esd_sdxl(sdxl, method, monkeypatch):
    """In bfloat16, as esd_sdxl.py loads its pipeline (text encoders) and both UNets."""
    from diffusers import StableDiffusionXLPipeline

    edit, seen = run_two_steps(sdxl, method, monkeypatch)
    cfg = edit.config
    assert (cfg["recipe"], cfg["negative_guidance"], cfg["rollout_guidance"], cfg["rollout_model"],
            cfg["train_dtype"]) == ("sdxl", 0.0, 2.0, "frozen", "bfloat16")
    assert edit.extras["recipe"]["file"] == "esd_sdxl.py"
    assert {v.dtype for v in edit.tensors.values()} == {torch.float32}  # the model's own dtype
    names = esd_sdxl_names(sdxl.unet, method)
    assert sorted(seen["grads"]) == sorted(names)
    assert {g.dtype for g in seen["grads"].values()} == {torch.bfloat16}
    bf16 = torch.bfloat16
    official = StableDiffusionXLPipeline(**{**sdxl.components, **{
        name: copy.deepcopy(getattr(sdxl, name)).to(bf16) for name in ("text_encoder", "text_encoder_2")}})
    # The frozen model (the pipe's weights, restored after erase) with esd_sdxl.py's requires_grad_(False):
    # on CPUs the flag picks another bfloat16 kernel even under no_grad. The trained copy keeps it on.
    trained = copy.deepcopy(sdxl.unet).to(bf16)
    base = copy.deepcopy(trained).requires_grad_(False)
    params = dict(trained.named_parameters())
    with torch.no_grad():
        for n, v in seen["theta"].items():
            params[n].copy_(v)
    assert any(rel(v, dict(base.named_parameters())[n]) > 1e-6 for n, v in seen["theta"].items())  # θ1 ≠ θ*
    assert seen["stop"] > 0  # the rollout runs
    z = sdxl_rollout_reference(official, base, seen["noise"], "cat", seen["stop"], 32)
    assert z.dtype == bf16 and rel(seen["z"].float(), z.float()) <= TOL, rel(seen["z"].float(), z.float())
    # esd_sdxl.py's loss at timesteps[run_till] on the rolled-out latent.
    sched = type(sdxl.scheduler).from_config(sdxl.scheduler.config)
    sched.set_timesteps(STEPS)
    t = sched.timesteps[seen["stop"]]
    with torch.no_grad():
        erase_embeds, null_embeds, erase_pooled, null_pooled = official.encode_prompt(
            prompt="cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt="")
        time_ids = sdxl._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=erase_embeds.dtype,
                                          text_encoder_projection_dim=sdxl.text_encoder_2.config.projection_dim)
        pred_erase = base(z, t, encoder_hidden_states=erase_embeds,
                          added_cond_kwargs={"text_embeds": erase_pooled, "time_ids": time_ids}).sample
        pred_null = base(z, t, encoder_hidden_states=null_embeds,
                         added_cond_kwargs={"text_embeds": null_pooled, "time_ids": time_ids}).sample
    pred = trained(z, t, encoder_hidden_states=erase_embeds,
                   added_cond_kwargs={"text_embeds": erase_pooled, "time_ids": time_ids}).sample
    negative_guidance = 1.0  # esd_sdxl.py's default η′
    loss = F.mse_loss(pred, pred_erase - negative_guidance * (pred_erase - pred_null))
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    ref = torch.cat([g.float().flatten() for g in grads])
    ours = torch.cat([seen["grads"][n].float().flatten() for n in names])
    loss = float(loss.detach())
    latent_rel = rel(seen["z"].float(), z.float())
    print(f"{method} on SDXL (bfloat16): stop {seen['stop']}, latent rel {latent_rel:.2e}, "
          f"loss rel {abs(seen['loss'] - loss) / loss:.2e}, gradient max rel {rel(ours, ref):.2e}")
    assert abs(seen["loss"] - loss) <= TOL * loss
    assert rel(ours, ref) <= TOL


def test_esd_on_sdxl_refuses_the_sd_rollouts(sdxl):
    with pytest.raises(EraseLabError, match="rollout_sampler=pipeline, timestep_pairing=exact"):
        eraselab.erase(sdxl, "esd-x", ["cat"], rollout_sampler="ddim", progress=False)
    with pytest.raises(EraseLabError, match="runs on SD 1.x/2.x models, not on this SDXL pipeline"):
        eraselab.erase(sdxl, "esd-u", ["cat"], progress=False)
