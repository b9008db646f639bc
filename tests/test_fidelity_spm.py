"""SPM against its official code (Con6924/SPM@3dd762e), re-derived here in plain torch and diffusers:
src/models/spm.py (SPMLayer replacing each module's forward), train_spm.py with src/engine/train_util.py
(diffusion, predict_noise, concat_embeddings), src/engine/sampling.py (sample), src/configs/prompt.py
(_erase_with_la), src/models/model_util.py (create_noise_scheduler) and infer_spm.py (calculate_matching_score
and the multiplier-weighted state dict).

The adapter forward, one training step's loss and the gradient of every adapter weight, and the transport
scaling are compared with eraselab's to ≤ 1e-5 relative, from the same adapter weights and the same draws.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from eraselab.methods.spm import (
    SPM,
    Membrane,
    SPMConfig,
    adapted_modules,
    anchor_embeddings,
    cosine_with_restarts,
    key,
    matching_scores,
    token_sets,
    training_scheduler,
    transport_multipliers,
)
from eraselab.methods.text import PromptEncoder

TOL = 1e-5
STEPS = 6


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---- the official pieces -----------------------------------------------------------------------------------
class OfficialSPMLayer(torch.nn.Module):
    """SPMLayer: org_forward(x) + lora_up(lora_down(x)) · multiplier · scale, installed by replacing
    forward."""

    def __init__(self, org_module, dim, alpha):
        super().__init__()
        if org_module.__class__.__name__ == "Linear":
            self.lora_down = torch.nn.Linear(org_module.in_features, dim, bias=False)
            self.lora_up = torch.nn.Linear(dim, org_module.out_features, bias=False)
        else:
            self.dim = min(dim, org_module.in_channels, org_module.out_channels)
            dim = self.dim
            self.lora_down = torch.nn.Conv2d(org_module.in_channels, dim, org_module.kernel_size,
                                             org_module.stride, org_module.padding, bias=False)
            self.lora_up = torch.nn.Conv2d(dim, org_module.out_channels, (1, 1), (1, 1), bias=False)
        self.scale = alpha / dim
        self.multiplier = 1.0
        self.org_forward = org_module.forward
        org_module.forward = self.forward

    def forward(self, x):
        return self.org_forward(x) + self.lora_up(self.lora_down(x)) * self.multiplier * self.scale


def official_network(unet, membrane, rank=1, alpha=1.0):
    """A copy of the UNet with SPMNetwork's layers (Transformer2DModel → Linear/Conv2d), weights from
    eraselab's."""
    unet = copy.deepcopy(unet)
    layers = {}
    for name, module in unet.named_modules():
        if module.__class__.__name__ == "Transformer2DModel":
            for child_name, child in module.named_modules():
                if child.__class__.__name__ in ("Linear", "Conv2d"):
                    layer = OfficialSPMLayer(child, rank, alpha)
                    ours = membrane.adapters[key(f"{name}.{child_name}")]
                    with torch.no_grad():
                        layer.lora_down.weight.copy_(ours.down.weight)
                        layer.lora_up.weight.copy_(ours.up.weight)
                    layers[f"{name}.{child_name}"] = layer
    return unet, layers


def set_multiplier(layers, m):
    for layer in layers.values():
        layer.multiplier = m


def create_noise_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, prediction_type="epsilon")


def predict_noise(unet, scheduler, timestep, latents, text_embeddings, guidance_scale):
    latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
    noise_pred = unet(latent_model_input, timestep, encoder_hidden_states=text_embeddings).sample
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


@torch.no_grad()
def diffusion(unet, scheduler, latents, text_embeddings, total_timesteps, guidance_scale):
    for timestep in scheduler.timesteps[0:total_timesteps]:
        noise_pred = predict_noise(unet, scheduler, timestep, latents, text_embeddings, guidance_scale)
        latents = scheduler.step(noise_pred, timestep, latents).prev_sample
    return latents


def randomised_membrane(pipe, seed=1):
    """A Membrane whose up-projections are non-zero (a fresh one is the identity, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    membrane = Membrane(pipe.unet, 1, 1.0, g)
    with torch.no_grad():
        for adapter in membrane.adapters.values():
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=g) * 0.05)
    return membrane


def encode(pipe, prompts):
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0], ids


# ---- tests ------------------------------------------------------------------------------------------------
def test_adapter_forward_matches_spm_layer(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    membrane = randomised_membrane(pipe)
    ref_unet, layers = official_network(pipe.unet, membrane)
    names = [n for n, _ in adapted_modules(pipe.unet)]
    assert names == list(layers) and len(names) == 48  # 4 transformer blocks × (proj_in/out + 8 attn + 2 ff)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb, _ = encode(pipe, ["a circle", ""])
    membrane.attach(pipe)
    try:
        for m in (1.0, 0.37):
            membrane.multiplier, _ = m, set_multiplier(layers, m)
            with torch.no_grad():
                ours = pipe.unet(x, 500, encoder_hidden_states=emb).sample
                ref = ref_unet(x, 500, encoder_hidden_states=emb).sample
            assert rel(ours, ref) <= TOL, (m, rel(ours, ref))
        membrane.multiplier = 0.0
        with torch.no_grad():
            off = pipe.unet(x, 500, encoder_hidden_states=emb).sample
        membrane.detach()
        with torch.no_grad():
            plain = pipe.unet(x, 500, encoder_hidden_states=emb).sample
        assert torch.equal(off, plain)  # multiplier 0 is the frozen model; detaching leaves the UNet as is
        assert rel(ours, plain) > 1e-4
    finally:
        membrane.detach()


def test_fresh_adapters_are_spm_initialised(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    membrane = Membrane(pipe.unet, 1, 1.0, torch.Generator().manual_seed(0))
    for adapter in membrane.adapters.values():
        assert torch.count_nonzero(adapter.up.weight) == 0
        fan_in = adapter.down.weight[0].numel()
        bound = math.sqrt(6 / ((1 + 5) * fan_in))  # kaiming_uniform(a=√5)
        assert adapter.down.weight.abs().max() <= bound
        assert adapter.down.weight.shape[0] == 1  # one-dimensional


def test_training_step_matches_train_spm(tiny_pipe_factory):
    """One step of train_spm.py (erase_with_la): rollout with the adapters on, frozen positive/neutral, the
    adapted target prediction, the anchors as predict_noise halves them, the loss and every gradient."""
    pipe = tiny_pipe_factory(0)
    cfg = SPMConfig.build({"preset": "sd", "max_denoising_steps": STEPS, "resolution": 16,
                           "dynamic_resolution": False}, pipe)
    membrane = randomised_membrane(pipe)
    g = torch.Generator().manual_seed(3)
    u, c = PromptEncoder(pipe)(["", "circle"])
    inputs = SPM.draw(pipe, cfg, c, g)
    membrane.attach(pipe)
    try:
        pipe.unet.requires_grad_(False)
        loss = SPM.loss(pipe, membrane, training_scheduler(pipe), cfg, u, c, inputs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in membrane.named_parameters()}
    finally:
        membrane.detach()
        pipe.unet.requires_grad_(True)

    ref_unet, layers = official_network(pipe.unet, membrane)
    scheduler = create_noise_scheduler()
    scheduler.set_timesteps(STEPS)
    latents = inputs.noise * scheduler.init_noise_sigma
    uncond, target = u[None], c[None]
    set_multiplier(layers, 1.0)
    denoised = diffusion(ref_unet, scheduler, latents, torch.cat([uncond, target]), inputs.steps_to, 3)
    scheduler.set_timesteps(1000)
    t = scheduler.timesteps[int(inputs.steps_to * 1000 / STEPS)]
    set_multiplier(layers, 0.0)
    with torch.no_grad():
        positive = predict_noise(ref_unet, scheduler, t, denoised, torch.cat([uncond, target]), 1)
        neutral = predict_noise(ref_unet, scheduler, t, denoised, torch.cat([uncond, uncond]), 1)
    set_multiplier(layers, 1.0)
    target_latents = predict_noise(ref_unet, scheduler, t, denoised, torch.cat([uncond, target]), 1)
    anchors = torch.cat([torch.cat([uncond, s[None]]) for s in inputs.anchors])  # sample()'s arrangement
    repeat = cfg.anchors
    anchor_latents = predict_noise(ref_unet, scheduler, t, denoised.repeat(repeat, 1, 1, 1), anchors, 1)
    set_multiplier(layers, 0.0)
    with torch.no_grad():
        anchor_ori = predict_noise(ref_unet, scheduler, t, denoised.repeat(repeat, 1, 1, 1), anchors, 1)
    ref_loss = F.mse_loss(target_latents, neutral - 1.0 * (positive - neutral)) \
        + cfg.la_strength * F.mse_loss(anchor_latents, anchor_ori)
    params = [p for layer in layers.values() for p in (layer.lora_down.weight, layer.lora_up.weight)]
    ref_grads = torch.autograd.grad(ref_loss, params)
    ours = torch.cat([grads[f"adapters.{key(n)}.{part}.weight"].flatten()
                      for n in layers for part in ("down", "up")])
    ref = torch.cat([gr.flatten() for gr in ref_grads])
    loss = loss.detach()
    ref_loss = ref_loss.detach()
    assert abs(float(loss) - float(ref_loss)) <= TOL * float(ref_loss), (float(loss), float(ref_loss))
    assert rel(ours, ref) <= TOL, rel(ours, ref)
    assert float(F.mse_loss(anchor_latents, anchor_ori).detach()) > 0  # the anchoring term is live
    print(f"steps_to {inputs.steps_to}, t {int(t)}, "
          f"loss rel {abs(float(loss) - float(ref_loss)) / float(ref_loss):.2e}, "
          f"gradient max rel {rel(ours, ref):.2e}")


def test_anchor_sampling_matches_sample():
    """sample(): unit-normalised Gaussian directions accepted with probability 1 − cos, scaled to
    U[0.8, 1.2)·‖c‖."""
    target = torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(0))
    ours = anchor_embeddings(target[0], 6, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    ref = []
    while len(ref) < 6:
        while True:
            noise = torch.randn(target.shape, generator=g)
            noise = noise / noise.view(-1).norm(dim=-1)
            sim = torch.cosine_similarity(target.view(-1), noise.view(-1), dim=-1)
            if float(torch.rand(1, generator=g)) < 1 - sim:
                break
        scale = float(torch.rand(1, generator=g)) * 0.4 + 0.8
        ref.append(scale * noise * target.view(-1).norm(dim=-1))
    ref = torch.cat(ref)
    assert rel(ours, ref) <= TOL
    norms = ours.flatten(1).norm(dim=1) / target.norm()
    assert ((norms >= 0.8 - 1e-6) & (norms < 1.2)).all()


def calculate_matching_score(prompt_tokens, prompt_embeds, erased_prompt_tokens, erased_prompt_embeds,
                             special_token_ids):
    """infer_spm.py, matching_metric "clipcos_tokenuni"."""
    clipcos = torch.cosine_similarity(prompt_embeds.flatten(1, 2), erased_prompt_embeds.flatten(1, 2), dim=-1)
    prompt_set = set(prompt_tokens[0].tolist()) - special_token_ids
    tokenuni = []
    for ep in erased_prompt_tokens:
        ep_set = set(ep.tolist()) - special_token_ids
        tokenuni.append(len(prompt_set.intersection(ep_set)) / len(ep_set))
    return torch.max(torch.stack([clipcos, torch.tensor(tokenuni)]), dim=0)[0]


def test_facilitated_transport_matches_infer_spm(tiny_pipe_factory):
    """The matching score, and the adapters' state dict weighted by it (every tensor × m) against eraselab's
    per-row multiplier m^2, in one batch of prompts with different multipliers."""
    pipe = tiny_pipe_factory(0)
    tok = pipe.tokenizer
    special = set(tok.convert_tokens_to_ids(list(tok.special_tokens_map.values())))
    erased = ["circle", "red square"]
    erased_embeds, erased_ids = encode(pipe, erased)
    erased_tokens = torch.unique(erased_ids, dim=1)  # encode_prompts(return_tokens=True)
    prompts = ["a circle", "a blue star", "the red square", "nothing"]
    embeds, _ = encode(pipe, prompts)
    ours = matching_scores(embeds, token_sets(tok, prompts), erased_embeds, token_sets(tok, erased))
    for i, p in enumerate(prompts):
        p_embeds, p_ids = encode(pipe, [p])
        ref = calculate_matching_score(torch.unique(p_ids, dim=1), p_embeds, erased_tokens, erased_embeds,
                                       special)
        assert rel(ours[i], ref) <= TOL, (p, ours[i], ref)
    assert float(ours[0, 0]) == 1.0 and float(ours[2, 1]) == 1.0  # every erased token present
    multipliers = transport_multipliers(ours, 2.0)

    membrane = randomised_membrane(pipe)
    x = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    membrane.attach(pipe)
    try:
        membrane.multiplier = multipliers
        with torch.no_grad():
            batched = pipe.unet(x, 400, encoder_hidden_states=embeds).sample
    finally:
        membrane.detach()
    for i in range(len(prompts)):
        m = ours[i].max()  # max_multiplier of the one SPM
        ref_unet, layers = official_network(pipe.unet, membrane)
        with torch.no_grad():
            for layer in layers.values():  # weighted_spm[key] = value * max_multiplier; `with network`
                layer.lora_down.weight.mul_(m)
                layer.lora_up.weight.mul_(m)
            ref = ref_unet(x[i:i + 1], 400, encoder_hidden_states=embeds[i:i + 1]).sample
        assert rel(batched[i:i + 1], ref) <= TOL, (prompts[i], rel(batched[i:i + 1], ref))


def test_lr_schedule_matches_diffusers_cosine_with_restarts():
    from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = get_cosine_with_hard_restarts_schedule_with_warmup(opt, num_warmup_steps=50, num_training_steps=300,
                                                             num_cycles=3)
    for step in range(300):
        assert cosine_with_restarts(step, 50, 300, 3) == pytest.approx(ref.get_last_lr()[0], abs=1e-12), step
        opt.step()
        ref.step()
    assert cosine_with_restarts(0, 500, 3000, 3) == 0.0  # the reference's first update has lr 0


def test_training_scheduler_matches_create_noise_scheduler(tiny_pipe_factory):
    ours, ref = training_scheduler(tiny_pipe_factory(0)), create_noise_scheduler()
    for n in (30, 1000):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert torch.equal(ours.timesteps, ref.timesteps)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert float(ours.final_alpha_cumprod) == float(ref.final_alpha_cumprod) == 1.0


def test_erase_packages_the_adapters_as_edit_modules(tiny_pipe, tmp_path):
    import eraselab
    from eraselab.edit_modules import attached_modules
    from eraselab.methods.spm import FacilitatedTransport, SPMAdapter
    from eraselab.probes import Probe

    pipe = tiny_pipe
    edit = eraselab.erase(pipe, "spm", ["circle"], preset="sd", iterations=2, lr_warmup_steps=0,
                          max_denoising_steps=3, resolution=16, dynamic_resolution=False, progress=False)
    assert edit.tensors == {} and len(edit.modules) == 48
    spec = edit.modules[0].spec
    assert (spec.kind, spec.hook, spec.attach_to) == ("spm_adapter", "add_beside",
                                                       "unet.down_blocks.0.attentions.0.proj_in")
    assert spec.config["transport"] == {"erased_prompts": ["circle"], "erased_words": ["circle"],
                                        "power": 2.0}
    loaded = eraselab.Edit.load(edit.save(tmp_path / "spm"))
    assert loaded.content_hash() == edit.content_hash()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb, _ = encode(pipe, ["a circle", "a star"])
    with torch.no_grad():
        base = pipe.unet(x, 300, encoder_hidden_states=emb).sample
        loaded.apply(pipe)
        try:
            edited = pipe.unet(x, 300, encoder_hidden_states=emb).sample
            adapters = [m for m in attached_modules(pipe).values() if isinstance(m, SPMAdapter)]
            hook = FacilitatedTransport()
            hook.on_batch_start(pipe, [Probe(prompt="a circle", seed=0), Probe(prompt="a star", seed=0)])
            hook.on_unet_call(0, 300, [(0, "uncond"), (0, "cond"), (1, "uncond"), None])
            m = hook.per_probe
            assert float(m[0]) == 1.0 and 0 < float(m[1]) < 1  # "circle": its token; "a star": cosine
            assert len(adapters) == 48
            assert torch.equal(adapters[0].multiplier, torch.tensor([m[0], m[0], m[1], 0.0]))
            hook.on_batch_end([], [])
        finally:
            loaded.revert(pipe)
        after = pipe.unet(x, 300, encoder_hidden_states=emb).sample
    assert rel(edited, base) > 0 and torch.equal(after, base)


@pytest.mark.parametrize("bad,fragment", [({"anchors": 3}, "anchors"),
                                          ({"max_denoising_steps": 1}, "max_denoising"),
                                          ({"resolution": 64}, "dynamic_resolution")])
def test_bad_config_is_one_line(tiny_pipe, bad, fragment):
    import eraselab
    from eraselab.errors import EraseLabError

    with pytest.raises(EraseLabError) as info:
        eraselab.erase(tiny_pipe, "spm", ["circle"], progress=False, preset="sd", iterations=1, **bad)
    assert fragment in str(info.value) and "\n" not in str(info.value)
