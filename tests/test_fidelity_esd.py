"""ESD against its official code (rohitgandikota/erasing), re-derived here in plain torch:

- recipe "compvis" (esd-x, esd-u): train-scripts/train-esd.py and ldm/models/diffusion/ddim.py at b8aeab6;
- recipe "diffusers" (esd-x, esd-x-strict's only recipe): esd_sd.py and utils/sd_utils.py at 25613d2.

For each, two real training steps run through eraselab; at the second step (the trained model has moved, so a
rollout with the wrong model would show) the rolled-out latent, the loss and the gradient of every trained
parameter are recomputed the official way from the same noise, rollout length, timestep and prompts.
"""
import copy
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import eraselab
from eraselab.methods import esd as esd_module
from eraselab.methods.diffusion import NoiseSchedule
from eraselab.methods.esd import ESDConfig, ESDUConfig, ESDXStrictConfig
from eraselab.methods.params import parameter_group
from eraselab.methods.training import TrainingSession

STEPS = 10  # sampler steps of the equivalence runs (the references use 50; 1000 // 10 keeps the grids equal)
TOL = 1e-5
BF16_STEPS = 4


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def encode(pipe, texts, dtype=torch.float32):
    tok = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        return in_dtype(pipe.text_encoder, dtype)(tok.input_ids)[0]


def eps(unet, x, t, emb):
    return unet(
        x, torch.full((x.shape[0],), int(t)), encoder_hidden_states=emb.expand(x.shape[0], -1, -1)
    ).sample


# ---- the CompVis code --------------------------------------------------------------------------------------
def compvis_grid(steps, train_steps=1000):
    """ldm's uniform DDIM grid (+1 offset) and its a_t / a_prev (the first a_prev is ᾱ at index 0)."""
    return torch.arange(0, train_steps, train_steps // steps) + 1


@torch.no_grad()
def compvis_sample_till(unet, acp, steps, x, cond, uncond, scale, till):
    """ddim.py's ddim_sampling with till_T: indices total−1 … down, break once index + 1 == till."""
    grid = compvis_grid(steps, len(acp))
    a = acp[grid]
    a_prev = torch.cat([acp[:1], acp[grid[:-1]]])
    total = len(grid)
    for i, step in enumerate(grid.flip(0).tolist()):
        index = total - i - 1
        e_u, e_c = eps(unet, torch.cat([x, x]), step, torch.cat([uncond, cond])).chunk(2)
        e = e_u + scale * (e_c - e_u)
        x0 = (x - (1 - a[index]).sqrt() * e) / a[index].sqrt()
        x = a_prev[index].sqrt() * x0 + (1 - a_prev[index]).sqrt() * e
        if index + 1 == till:
            break
    return x


def compvis_steps_run(steps, till):
    """How many sampler iterations the loop above makes for till_T = till (no model needed)."""
    n = 0
    for i in range(steps):
        n += 1
        if steps - i - 1 + 1 == till:
            break
    return n


def compvis_names(unet, method):
    """train-esd.py's parameter choice, its CompVis names mapped onto diffusers': 'out.' is conv_norm_out /
    conv_out, 'time_embed' is time_embedding; every other CompVis name keeps 'attn2' where diffusers has
    it."""
    chosen = []
    for name, _ in unet.named_parameters():
        compvis_out = name.startswith(("conv_norm_out.", "conv_out."))
        compvis_time = name.startswith("time_embedding.")
        if method == "xattn" and "attn2" in name:
            chosen.append(name)
        if method == "noxattn" and not (compvis_out or "attn2" in name or compvis_time):
            chosen.append(name)
    return chosen


# ---- esd_sd.py ---------------------------------------------------------------------------------------------
def esd_sd_names(unet, method):
    """get_esd_trainable_parameters: parameters of Linear/Conv2d modules selected by module name."""
    names = []
    for mname, module in unet.named_modules():
        if type(module).__name__ not in ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv"):
            continue
        pick = ((method == "esd-x" and "attn2" in mname) or (method == "esd-u" and "attn2" not in mname)
                or (method == "esd-x-strict" and ("attn2.to_k" in mname or "attn2.to_v" in mname)))
        if pick:
            names += [f"{mname}.{n}" for n, _ in module.named_parameters()]
    return names


@torch.no_grad()
def esd_sd_rollout(unet, scheduler, steps, latents, cond, uncond, scale, run_till):
    """esd_sd_call: timesteps[0:run_till] of the pipeline's scheduler, CFG on the raw output,
    scheduler.step."""
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    x = latents * sched.init_noise_sigma
    for t in sched.timesteps[0:run_till]:
        inp = sched.scale_model_input(torch.cat([x, x]), t)
        out_u, out_c = eps(unet, inp, t, torch.cat([uncond, cond])).chunk(2)
        x = sched.step(out_u + scale * (out_c - out_u), t, x).prev_sample
    return x


def pndm(pipe):
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)


# ---- running eraselab --------------------------------------------------------------------------------------
def run_two_steps(pipe, method, monkeypatch, **values):
    """Two ESD iterations through eraselab.erase; what the second one saw and computed, and the Edit."""
    seen = []
    real_rollout, real_draw, real_step = esd_module.rollout, NoiseSchedule.sample_step_and_timestep, \
        TrainingSession.step

    def draw(self, generator, pairing="in-bin"):
        seen.append({"draw": real_draw(self, generator, pairing)})
        return seen[-1]["draw"]

    def rollout(unet, schedule, noise, cond, uncond, stop, guidance):
        seen[-1]["noise"] = noise.clone()
        seen[-1]["z"] = real_rollout(unet, schedule, noise, cond, uncond, stop, guidance)
        return seen[-1]["z"]

    def step(self, loss):
        # θ of this iteration (its rollout and loss), then its gradient.
        seen[-1]["theta"] = {n: p.detach().clone() for n, p in zip(self.names, self.trained)}
        value = real_step(self, loss)
        seen[-1].update(loss=value, grads={n: p.grad.clone() for n, p in zip(self.names, self.trained)})
        return value

    monkeypatch.setattr(NoiseSchedule, "sample_step_and_timestep", draw)
    monkeypatch.setattr(esd_module, "rollout", rollout)
    monkeypatch.setattr(TrainingSession, "step", step)
    edit = eraselab.erase(pipe, method, ["circle"], **{"preset": "sd", "iterations": 2, "ddim_steps": STEPS,
                                                       "lr": 1e-3, "progress": False, **values})
    return SimpleNamespace(**edit.config), seen[-1], seen[-1]["loss"], seen[-1]["grads"], edit


def in_dtype(module, dtype):
    return module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)


def frozen_in(unet, dtype):
    """The frozen UNet as esd_sd.py loads it: in `dtype`, requires_grad_(False) (on CPUs that flag picks
    another bfloat16 kernel even under no_grad)."""
    return unet if dtype == torch.float32 else copy.deepcopy(unet).to(dtype).requires_grad_(False)


def reference_step(pipe, names, theta, z, t, eta, convention, dtype=torch.float32):
    """Loss and gradient of the official objective at trained weights `theta` (the frozen model = pipe.unet),
    with text encoder and UNets in `dtype` (esd_sd.py: bfloat16) and the predictions as separate calls."""
    u, c = encode(pipe, ["", "circle"], dtype)
    base = frozen_in(pipe.unet, dtype)
    trained = copy.deepcopy(pipe.unet).to(dtype)
    params = dict(trained.named_parameters())
    with torch.no_grad():
        for n, v in theta.items():
            params[n].copy_(v)
        e_0 = eps(base, z, t, u)
        e_p = eps(base, z, t, c)
    chosen = [params[n] for n in names]
    e_n = eps(trained, z, t, c)
    if convention == "compvis":  # train-esd.py: e_0 − η (e_p − e_0)
        loss = F.mse_loss(e_n, e_0 - eta * (e_p - e_0))
    else:  # esd_sd.py: noise_pred_erase_from − η′ (noise_pred_erase − noise_pred_null), η′ = η + 1
        loss = F.mse_loss(e_n, e_p - (eta + 1) * (e_p - e_0))
    grads = torch.autograd.grad(loss, chosen)
    return float(loss.detach()), dict(zip(names, grads)), trained


def check_step(loss, grads, ref_loss, ref_grads):
    assert set(grads) == set(ref_grads)
    assert abs(loss - ref_loss) <= TOL * abs(ref_loss), (loss, ref_loss)
    flat = torch.cat([grads[n].flatten() for n in ref_grads])
    ref = torch.cat([g.flatten() for g in ref_grads.values()])
    assert rel(flat, ref) <= TOL, rel(flat, ref)
    print(f"loss rel {abs(loss - ref_loss) / abs(ref_loss):.2e}, gradient max rel {rel(flat, ref):.2e}")


@pytest.mark.parametrize("method,config_cls,group,rule", [("esd-x", ESDConfig, "x", "xattn"),
                                                         ("esd-u", ESDUConfig, "u", "noxattn")])
def test_compvis_recipe_step_matches_train_esd(
    tiny_pipe_factory, monkeypatch, method, config_cls, group, rule
):
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    cfg, seen, loss, grads, _ = run_two_steps(pipe, method, monkeypatch)
    assert (cfg.recipe, cfg.timestep_pairing, cfg.rollout_model, cfg.train_dtype) == (
        "compvis", "compvis", "trained", "float32")
    stop, t = seen["draw"]
    # The rollout: CompVis's sampler with the trained model θ1, stopped by the t_enc whose bin holds t.
    t_enc = next(
        k for k in range(STEPS) if compvis_timestep_bounds(k)[0] <= t < compvis_timestep_bounds(k)[1]
    )
    assert stop == compvis_steps_run(STEPS, t_enc)
    u, c = encode(pipe, ["", "circle"])
    ref_loss, ref_grads, trained = reference_step(
        pipe, compvis_names(pipe.unet, rule), seen["theta"], seen["z"], t, cfg.negative_guidance, "compvis"
    )
    z_ref = compvis_sample_till(
        trained,
        pipe.scheduler.alphas_cumprod,
        STEPS,
        seen["noise"],
        c[None],
        u[None],
        cfg.rollout_guidance,
        t_enc,
    )
    assert rel(seen["z"], z_ref) <= TOL, rel(seen["z"], z_ref)
    print(f"{method} compvis: stop {stop}, t {t}, latent max rel {rel(seen['z'], z_ref):.2e}")
    check_step(loss, grads, ref_loss, ref_grads)
    # Rolling out with the frozen model instead gives a measurably different latent.
    z_frozen = compvis_sample_till(pipe.unet, pipe.scheduler.alphas_cumprod, STEPS, seen["noise"], c[None],
                                   u[None], cfg.rollout_guidance, t_enc)
    if stop:
        assert rel(z_frozen, z_ref) > 1e-4


def compvis_timestep_bounds(t_enc, steps=STEPS, train_steps=1000):
    return round((t_enc / steps) * train_steps), round(((t_enc + 1) / steps) * train_steps)


@pytest.mark.parametrize("method,config_cls,group", [("esd-x", ESDConfig, "x"),
                                                    ("esd-x-strict", ESDXStrictConfig, "x-strict")])
def test_diffusers_recipe_step_matches_esd_sd(tiny_pipe_factory, monkeypatch, method, config_cls, group):
    """esd_sd.py on the hub's SD 1.4 rolls out with its PNDM scheduler; the tiny pipeline gets one here. All
    in bfloat16, as esd_sd.py (text encoder, both UNets, rollout, loss)."""
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    own = pipe.scheduler
    pipe.scheduler = pndm(pipe)
    bf16 = torch.bfloat16
    try:
        values = {"recipe": "diffusers"} if config_cls is ESDConfig else {}
        # 4 sampler steps: bfloat16 runs slowly on CPUs.
        cfg, seen, loss, grads, edit = run_two_steps(pipe, method, monkeypatch, image_size=32,
                                                     ddim_steps=BF16_STEPS, seed=2, **values)
        assert (cfg.recipe, cfg.timestep_pairing, cfg.rollout_model, cfg.rollout_sampler, cfg.iterations,
                cfg.lr, cfg.train_dtype) == ("diffusers", "exact", "frozen", "pipeline", 2, 1e-3, "bfloat16")
        assert seen["z"].dtype == bf16 and all(g.dtype == bf16 for g in grads.values())
        # The Edit holds the trained values in the model's own dtype; the pipeline keeps its weights.
        assert {v.dtype for v in edit.tensors.values()} == {torch.float32}
        assert all(torch.equal(v, v.to(bf16).float()) for v in edit.tensors.values())  # bfloat16 values
        assert set(edit.tensors) == {f"unet.{n}" for n in esd_sd_names(pipe.unet, method)}
        assert pipe.unet.dtype == torch.float32 and eraselab.edits.applied_edit(pipe) is None
        stop, t = seen["draw"]
        sched = pndm(pipe)
        sched.set_timesteps(BF16_STEPS)
        assert t == int(sched.timesteps[stop])  # trained at timesteps[run_till] exactly
        assert seen["noise"].shape[-1] == 32 // pipe.vae_scale_factor and stop > 0  # the rollout runs
        u, c = encode(pipe, ["", "circle"], bf16)
        z_ref = esd_sd_rollout(frozen_in(pipe.unet, bf16), pipe.scheduler, BF16_STEPS, seen["noise"], c[None],
                               u[None], cfg.rollout_guidance, stop)  # the base UNet, as esd_sd.py's pipe.unet
        latent_rel = rel(seen["z"].float(), z_ref.float())
        print(f"{method} diffusers: stop {stop}, t {t}, latent max rel {latent_rel:.2e}")
        assert latent_rel <= TOL
        names = esd_sd_names(pipe.unet, method)
        eta = cfg.negative_guidance
        ref_loss, ref_grads, _ = reference_step(pipe, names, seen["theta"], seen["z"], t, eta, "diffusers",
                                                bf16)
        check_step(loss, {n: g.float() for n, g in grads.items()}, ref_loss,
                   {n: g.float() for n, g in ref_grads.items()})
        # float32 computes another step: the comparison above sees the precision.
        theta32 = {n: v.float() for n, v in seen["theta"].items()}
        loss32, grads32, _ = reference_step(pipe, names, theta32, seen["z"].float(), t, eta, "diffusers")
        flat32 = torch.cat([grads32[n].flatten() for n in names])
        assert rel(torch.cat([grads[n].float().flatten() for n in names]), flat32) > 1e-3
    finally:
        pipe.scheduler = own


def test_the_two_recipes_train_differently(tiny_pipe_factory):
    """Same seed, one step each: the recipes' pairings alone already change the update."""
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    common = {"iterations": 1, "ddim_steps": STEPS, "lr": 1e-3, "preset": "sd", "image_size": 0,
              "rollout_sampler": "ddim", "progress": False}
    a = eraselab.erase(pipe, "esd-x", ["circle"], **common)
    b = eraselab.erase(pipe, "esd-x", ["circle"], recipe="diffusers", **common)
    assert a.extras["recipe"]["name"] == "compvis" and b.extras["recipe"]["name"] == "diffusers"
    assert a.extras["recipe"]["commit"] == "b8aeab6d4b6b613b88ad0bf219e3697c79003838"
    assert b.extras["recipe"]["commit"] == "25613d27892326e0c7770f7f3555bea4be150089"
    assert a.extras["loss_first"] != pytest.approx(b.extras["loss_first"], rel=1e-3)


# ---- timestep pairing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [50, 20])
def test_compvis_pairing_matches_the_sampler_loop(steps):
    """Every t_enc: eraselab's stop equals the iterations of ddim.py's loop for till_T = t_enc, and its t
    ranges over exactly train-esd.py's [round(t_enc/S·1000), round((t_enc+1)/S·1000))."""
    schedule = NoiseSchedule(
        torch.linspace(0.99, 0.01, 1000),
        torch.arange(steps - 1, -1, -1) * (1000 // steps) + 1,
        0.99,
        "epsilon",
    )
    g = torch.Generator().manual_seed(0)
    seen = {}
    for _ in range(40 * 1000):
        stop, t = schedule.sample_step_and_timestep(g, "compvis")
        seen.setdefault(t, set()).add(stop)
    for t_enc in range(steps):
        lo, hi = compvis_timestep_bounds(t_enc, steps)
        assert all(seen.get(t) == {compvis_steps_run(steps, t_enc)} for t in range(lo, hi)), t_enc
    assert set(seen) == set(range(1000))
    # The latent's noise level (timesteps[stop]) lies 2–3 DDIM steps below the training bin, except where
    # the full rollout (t_enc 0, 1) leaves a clean latent.
    gaps = [(compvis_timestep_bounds(k, steps)[0] - int(schedule.timesteps[compvis_steps_run(steps, k)]))
            / (1000 // steps) for k in range(2, steps)]
    assert min(gaps) > 1.9 and max(gaps) < 2.1  # bin start vs level: 2 grid steps below the lowest t
    # The old in-bin pairing trains at the latent's own level instead.
    stop, t = schedule.sample_step_and_timestep(g, "in-bin")
    assert int(schedule.timesteps[stop]) - (1000 // steps) < t <= int(schedule.timesteps[stop])


def test_exact_pairing_matches_esd_sd(tiny_pipe_factory):
    """random.randint(0, S−1) = run_till; the rollout runs timesteps[:run_till] and trains at
    timesteps[run_till], for DDIM and for PNDM (whose list repeats a timestep)."""
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    for sampler, scheduler in (("ddim", pipe.scheduler), ("pipeline", pndm(pipe))):
        holder = type("P", (), {"scheduler": scheduler})()
        schedule = NoiseSchedule.from_pipe(holder, 50, sampler)
        ref = type(scheduler).from_config(scheduler.config)
        ref.set_timesteps(50)
        g = torch.Generator().manual_seed(1)
        pairs = {schedule.sample_step_and_timestep(g, "exact") for _ in range(3000)}
        expected = {(run_till, int(ref.timesteps[run_till])) for run_till in range(50)}
        assert pairs == expected
    rng = random.Random(0)
    assert {rng.randint(0, 49) for _ in range(3000)} == set(range(50))  # the reference's draw, same support


# ---- rollouts ----------------------------------------------------------------------------------------------
def test_ddim_rollout_matches_compvis_sampler_and_diffusers_ddim(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    u, c = encode(pipe, ["", "circle"])
    schedule = NoiseSchedule.from_pipe(pipe, STEPS)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for t_enc in (0, 1, STEPS - 2):
        stop = min(STEPS + 1 - t_enc, STEPS)
        ours = esd_module.rollout(pipe.unet, schedule, noise, c, u, stop, 3.0)
        ref = compvis_sample_till(
            pipe.unet, pipe.scheduler.alphas_cumprod, STEPS, noise, c[None], u[None], 3.0, t_enc
        )
        assert rel(ours, ref) <= TOL, (t_enc, rel(ours, ref))
        print(f"t_enc {t_enc}: rollout max rel {rel(ours, ref):.2e} vs the CompVis sampler")
    for stop in (4,):  # diffusers' own DDIM step, η 0
        ours = esd_module.rollout(pipe.unet, schedule, noise, c, u, stop, 3.0)
        ref = esd_sd_rollout(pipe.unet, pipe.scheduler, STEPS, noise, c[None], u[None], 3.0, stop)
        assert rel(ours, ref) <= TOL, (stop, rel(ours, ref))
        print(f"stop {stop}: rollout max rel {rel(ours, ref):.2e} vs DDIMScheduler.step")


# ---- parameter groups --------------------------------------------------------------------------------------
def test_parameter_groups_match_the_references(tiny_pipe_factory):
    unet = tiny_pipe_factory(0, sd1_shapes=True).unet
    assert parameter_group(unet, "x") == compvis_names(unet, "xattn") == esd_sd_names(unet, "esd-x")
    assert parameter_group(unet, "x-strict") == esd_sd_names(unet, "esd-x-strict")
    assert parameter_group(unet, "u") == compvis_names(unet, "noxattn")
    # esd_sd.py's esd-u differs from the CompVis group: Linear/Conv2d only (no norm layers), but with the
    # output conv and the time embedding; its recipe trains group u-linear-conv.
    assert parameter_group(unet, "u-linear-conv") == esd_sd_names(unet, "esd-u")
    compvis_u, diffusers_u = set(parameter_group(unet, "u")), set(esd_sd_names(unet, "esd-u"))
    assert all("norm" in n for n in compvis_u - diffusers_u)
    assert {n.split(".")[0] for n in diffusers_u - compvis_u} == {"conv_out", "time_embedding"}
    assert ESDUConfig.build({"recipe": "diffusers", "preset": "sd"}).parameter_group == "u-linear-conv"
    assert ESDUConfig.build({"preset": "sd"}).parameter_group == ""  # compvis: the method's own group "u"
