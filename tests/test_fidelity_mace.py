"""MACE against its official code: Shilin-LU/MACE@057e7a6edadc6bbb5ca94700f416372e35bed083.

Re-derived here in plain torch from the official files, independently of eraselab.methods.mace:
- stage 1, src/cfr_utils.py find_matching_indices / prepare_k_v / closed_form_refinement as
  src/cfr_lora_training.py calls them: per prompt pair the common-prefix/suffix token rows (extended over the
  padding), values W₀ c_new, per layer W₁ = (λW₀ + ΣVCᵀ + s_t·cache₁)(λI + ΣCCᵀ + s_t·cache₂)⁻¹ with the
  cache already scaled by s_t (train_preserve_scale · (prior + preserve_weight · domain));
- stage 2, src/mace_lora_atten_processor.py (LoRA on attn2 to_k/to_v: x + up(down(x))) with
  src/cfr_utils.py AttnController (first sample's heads, mask resized to √pixels by nearest, > 0.5, the
  concept positions of src/dataset.py with the end-of-text token as pooler) and the training step of
  src/cfr_lora_training.py (DDPMScheduler.add_noise, loss = Σ ‖·‖, clip_grad_norm_ 1, AdamW wd 1e-2);
- stage 3, src/fuse_lora_close_form.py: each LoRA fused at scale 1, every token of the target's prompts,
  W = (λW₁ + ΣW_i C Cᵀ + s_f·cache₁)(λI + ΣCCᵀ + s_f·cache₂)⁻¹.
eraselab's run is recorded (its LoRA initialisation, its batches: latent sample, noise, timestep, prompt,
mask; its losses and clipped gradients) and the official computation is replayed on the same inputs. The
closed forms are compared in float64 on both sides (the official code inverts in float32, which alone differs
by more than the tolerance on SD-sized matrices).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import eraselab
from eraselab.methods import mace as mace_module

pytestmark = pytest.mark.filterwarnings("ignore:preset sd was tuned")
TOL = 1e-5
PROMPTS = 4
BASE = {"preset": "sd", "steps": 2, "images": 2, "sample_steps": 2, "prompts": PROMPTS, "lr": 1e-2,
        "progress": False}


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def grad_of(t: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient (zeros where it did not reach the loss: AdamW skips it)."""
    return t.grad.clone() if t.grad is not None else torch.zeros_like(t)


# ---- the official code, re-derived -------------------------------------------------------------------------
def find_matching_indices(old, new):
    start = 0
    for i, j in zip(old, new):
        if i != j:
            break
        start += 1
    eo, en = len(old) - 1, len(new) - 1
    while eo >= start and en >= start:
        if old[eo] != new[en]:
            break
        eo -= 1
        en -= 1
    return list(range(start)) + list(range(eo + 1, len(old))), list(range(start)) + list(
        range(en + 1, len(new))
    )


def extended_indices(tokenizer, old_text, new_text):
    oi, ni = find_matching_indices(tokenizer(old_text).input_ids, tokenizer(new_text).input_ids)
    if oi[-1] >= ni[-1]:
        return oi + list(range(oi[-1] + 1, 77)), ni + list(range(ni[-1] + 1, 77 - (oi[-1] - ni[-1])))
    return oi + list(range(oi[-1] + 1, 77 - (ni[-1] - oi[-1]))), ni + list(range(ni[-1] + 1, 77))


def embed(pipe, texts):
    ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0].double()


def ca_projections(unet):
    """get_ca_layers(with_to_k=True): every attn2's to_v, then every attn2's to_k (names for the Edit)."""
    layers = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    return [f"{n}.to_v" for n in layers] + [f"{n}.to_k" for n in layers]


def official_cfr(pipe, weights, pairs, lamb, train_scale, preserve_weight, preserve_prompts):
    """Stage 1 on the given base weights (dict projection name → W₀), float64."""
    contexts, values = [], {n: [] for n in weights}
    for old, new in pairs:
        io, inew = extended_indices(pipe.tokenizer, old, new)
        eo, en = embed(pipe, [old, new])
        contexts.append(eo[io])
        for n, w in weights.items():
            values[n].append(en[inew] @ w.double().T)
    domain_c = embed(pipe, preserve_prompts).flatten(0, 1) if preserve_prompts else None
    out = {}
    for n, w in weights.items():
        w = w.double()
        d = w.shape[1]
        mat1 = lamb * w + sum(v.T @ c for v, c in zip(values[n], contexts))
        mat2 = lamb * torch.eye(d, dtype=torch.float64) + sum(c.T @ c for c in contexts)
        if domain_c is not None:
            cache1 = train_scale * (preserve_weight * (domain_c @ w.T).T @ domain_c)
            cache2 = train_scale * (preserve_weight * domain_c.T @ domain_c)
            mat1, mat2 = mat1 + train_scale * cache1, mat2 + train_scale * cache2
        out[n] = mat1 @ torch.inverse(mat2)
    return out


def official_fusion(pipe, refined, base, loras, target_prompts, lamb, fuse_scale, preserve_weight,
                    preserve_prompts):
    """Stage 3: loras[i][projection] = (up, down); target_prompts[i] = concept i's prompts."""
    domain_c = embed(pipe, preserve_prompts).flatten(0, 1) if preserve_prompts else None
    out = {}
    for n, w1 in refined.items():
        w1 = w1.double()
        mat1, mat2 = lamb * w1, lamb * torch.eye(w1.shape[1], dtype=torch.float64)
        for lora, prompts in zip(loras, target_prompts):
            up, down = lora[n]
            fused = w1 + up.double() @ down.double()
            for c in embed(pipe, prompts):
                mat1 = mat1 + (c @ fused.T).T @ c
                mat2 = mat2 + c.T @ c
        if domain_c is not None:
            w0 = base[n].double()
            mat1 = mat1 + fuse_scale * preserve_weight * (domain_c @ w0.T).T @ domain_c
            mat2 = mat2 + fuse_scale * preserve_weight * domain_c.T @ domain_c
        out[n] = mat1 @ torch.inverse(mat2)
    return out


def concept_positions(tokenizer, prompt, concept):
    ids = tokenizer(
        prompt, truncation=True, padding="max_length", max_length=tokenizer.model_max_length
    ).input_ids
    concept_ids = tokenizer(concept, add_special_tokens=False).input_ids
    pooler = tokenizer("<|endoftext|>", add_special_tokens=False).input_ids[0]
    pos = [0] * tokenizer.model_max_length
    for i, tok in enumerate(ids):
        if tok == concept_ids[0] and ids[i:i + len(concept_ids)] == concept_ids:
            pos[i:i + len(concept_ids)] = [1] * len(concept_ids)
        if tok == pooler:
            pos[i] = 1
    return torch.tensor(pos, dtype=torch.bool)


class OfficialLoRAProcessor:
    """LoRAAttnProcessor + AttnProcessor: LoRA on to_k/to_v, the controller fed every cross-attention map."""

    def __init__(self, lora, controller):
        self.lora, self.controller = lora, controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        batch = hidden_states.shape[0]
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        (kd, ku), (vd, vu) = self.lora
        key = attn.head_to_batch_dim(
            attn.to_k(encoder_hidden_states) + F.linear(F.linear(encoder_hidden_states, kd), ku)
        )
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states)
                                       + F.linear(F.linear(encoder_hidden_states, vd), vu))
        probs = attn.get_attention_scores(query, key, None)
        if key.shape[1] == 77:
            self.controller(probs, batch)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


class Controller:
    def __init__(self, positions, mask):
        self.positions, self.mask, self.items = positions[None], mask, []

    def __call__(self, probs, latent_num):
        probs = probs[:probs.shape[0] // latent_num]
        if self.mask is not None:
            d = int(probs.shape[1] ** 0.5)
            keep = (F.interpolate(self.mask, size=(d, d), mode="nearest") > 0.5).view(-1)
            self.items.append(probs[:, keep, :][:, :, self.positions[0]])
        else:
            heads = probs.shape[0]
            self.items.append(probs.masked_select(self.positions[:, None, :].repeat(heads, 1, 1))
                              .reshape(-1, int(self.positions[0].sum())))

    def loss(self):
        return sum(torch.norm(x) for x in self.items)


def official_lora_training(pipe, refined, init, batches, words, lr, weight_decay=1e-2, max_grad_norm=1.0):
    """Stage 2 for one concept on the refined UNet: the losses, clipped gradients and final (up, down)."""
    from diffusers import DDPMScheduler

    unet = copy.deepcopy(pipe.unet)
    unet.requires_grad_(False)
    mods = dict(unet.named_modules())
    with torch.no_grad():
        for n, w in refined.items():
            mods[n].weight.copy_(w.float())
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay,
                                  eps=1e-8)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    losses, grads = [], []
    for batch in batches:
        positions = concept_positions(pipe.tokenizer, batch.prompt, words)
        assert torch.equal(positions, batch.positions)
        controller = Controller(positions, batch.mask)
        procs = {}
        for name in unet.attn_processors:
            layer = name[:-len(".processor")]
            if layer.endswith("attn2"):
                lora = tuple(
                    (params[f"{layer}.{p}.down"], params[f"{layer}.{p}.up"]) for p in ("to_k", "to_v")
                )
                procs[name] = OfficialLoRAProcessor(lora, controller)
            else:
                procs[name] = unet.attn_processors[name]
        unet.set_attn_processor(procs)
        t = torch.tensor([batch.t]).long()
        noisy = scheduler.add_noise(batch.x0, batch.noise, t)
        ids = pipe.tokenizer(batch.prompt, truncation=True, padding="max_length",
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            ehs = pipe.text_encoder(ids)[0]
        unet(noisy, t, ehs)
        loss = controller.loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
        grads.append({k: grad_of(v) for k, v in params.items()})
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, grads, {k: v.detach() for k, v in params.items()}


# ---- eraselab's run, recorded ------------------------------------------------------------------------------
def run_eraselab(pipe, targets, **config):
    rec = {"init": [], "batches": [], "losses": [], "grads": [], "fuse": None}
    init, draw, step, fuse = mace_module.init_lora, mace_module.MACE.draw, mace_module.LoRATrainer.step, \
        mace_module.fuse

    def recording_init(*a, **k):
        out = init(*a, **k)
        rec["init"].append({n: t.clone() for n, t in out.items()})
        return out

    def recording_draw(trainer, examples, concept):
        batch = draw(trainer, examples, concept)
        rec["batches"].append(batch)
        return batch

    def recording_step(self, batch):
        value = step(self, batch)
        rec["losses"].append(value)
        rec["grads"].append({n: grad_of(t) for n, t in self.lora.items()})
        return value

    def recording_fuse(refined, base, deltas, *a, **k):
        rec["fuse"] = {"refined": {n: w.clone() for n, w in refined.items()}, "deltas": deltas}
        return fuse(refined, base, deltas, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mace_module, "init_lora", recording_init)
        mp.setattr(mace_module.MACE, "draw", staticmethod(recording_draw))
        mp.setattr(mace_module.LoRATrainer, "step", recording_step)
        mp.setattr(mace_module, "fuse", recording_fuse)
        edit = eraselab.erase(pipe, "mace", targets, **{**BASE, **config})
    return edit, rec


def original_weights(pipe):
    mods = dict(pipe.unet.named_modules())
    return {n: mods[n].weight.detach().clone() for n in ca_projections(pipe.unet)}


def prompts_of(concept):
    return [t.format(concept) for t in mace_module.OBJECT_TEMPLATES[:PROMPTS]]


# ---- tests -------------------------------------------------------------------------------------------------
def test_prompt_templates_are_the_official_ones():
    t = mace_module.OBJECT_TEMPLATES
    assert (
        len(t) == 31
        and t[0] == "{} in a photo"
        and t[9] == "A photo of {}"
        and t[-1] == "{} in a sketch painting"
    )
    assert mace_module.STYLE_TEMPLATES[0] == "An artwork by {}" and len(mace_module.STYLE_TEMPLATES) == 31


@pytest.mark.parametrize(
    "old,new",
    [
        ("A photo of ship", "A photo of ground"),
        ("ship in a photo", " in a photo"),
        ("A photo of a cruise ship", "A photo of sky"),
    ],
)
def test_token_alignment_matches_find_matching_indices(old, new):
    from eraselab.models import clip_tokenizer

    tok = clip_tokenizer()
    assert mace_module.aligned_positions(tok(old).input_ids, tok(new).input_ids, 77) == \
        tuple(extended_indices(tok, old, new))


@pytest.mark.parametrize("sd1", [False, True])
def test_closed_form_refinement_matches_official(tiny_pipe_factory, sd1):
    """Stage 1 alone, with the preservation terms on (their squared train scale included)."""
    pipe = tiny_pipe_factory(0, sd1_shapes=sd1)
    cfg = mace_module.MACEConfig(lamb=3.0, train_preserve_scale=0.5, preserve_weight=2.0, prompts=PROMPTS)
    domain = eraselab.domain.get_domain("real")
    concepts = [mace_module.concept_prompts(c, "sky", cfg, domain) for c in ("ship", "garbage truck")]
    encoder = mace_module.PromptEncoder(pipe)
    old, new = mace_module.refinement_rows(encoder, concepts)
    preserve = mace_module.all_rows(encoder, prompts_of("car"), old.shape[1])
    transform = mace_module.refinement_transform(old, new, preserve, cfg)
    base = original_weights(pipe)
    ours = {n: w.double() @ transform for n, w in base.items()}
    pairs = [(p, q) for c in concepts for p, q in zip(c.prompts, c.mapped)]
    theirs = official_cfr(pipe, base, pairs, 3.0, 0.5, 2.0, prompts_of("car"))
    assert len(theirs) == (32 if sd1 else 8)
    for n in base:
        assert rel(ours[n], theirs[n]) <= TOL, n
        assert rel(ours[n] - base[n].double(), theirs[n] - base[n].double()) <= 1e-4, n


def test_attention_loss_and_gradient_match_official_on_one_concept(tiny_pipe_factory):
    """Two LoRA steps (losses, clipped gradients, AdamW updates) and the final fused weights."""
    pipe = tiny_pipe_factory(0)
    edit, rec = run_eraselab(pipe, ["cat"], mapping="sky")
    assert edit.extras["lora"] == "merged" and edit.extras["regions"] == "attention"
    base = original_weights(pipe)
    pairs = list(zip(prompts_of("cat"), [t.format("sky") for t in mace_module.OBJECT_TEMPLATES[:PROMPTS]]))
    refined = official_cfr(pipe, base, pairs, 100.0, 0.0, 0.0, [])
    for n in base:
        assert rel(rec["fuse"]["refined"][f"unet.{n}.weight"], refined[n]) <= TOL
    assert all(b.mask is not None and 0 < b.mask.mean() < 1 for b in rec["batches"])
    losses, grads, final = official_lora_training(
        pipe, refined, rec["init"][0], rec["batches"], "cat", lr=1e-2
    )
    assert rel(rec["losses"], losses) <= TOL
    for ours, theirs in zip(rec["grads"], grads):
        assert rel(torch.cat([ours[k].flatten() for k in sorted(ours)]),
                   torch.cat([theirs[k].flatten() for k in sorted(theirs)])) <= TOL
    lora = {n: (final[f"{n}.up"], final[f"{n}.down"]) for n in base}
    for n, (up, down) in lora.items():
        assert rel(rec["fuse"]["deltas"][0][f"unet.{n}.weight"], up @ down) <= TOL
    fused = official_fusion(pipe, refined, base, [lora], [prompts_of("cat")], 100.0, 0.0, 0.0, [])
    for n in base:
        ours = edit.tensors[f"unet.{n}.weight"].double()
        assert rel(ours, fused[n]) <= TOL
        assert rel(ours - base[n].double(), fused[n] - base[n].double()) <= 1e-4


def test_two_concepts_with_preservation_fuse_as_official(tiny_pipe_factory):
    """Two LoRAs fused in closed form, the preservation terms on in both closed forms, regions=none (every
    pixel, the controller's masked_select branch)."""
    pipe = tiny_pipe_factory(1)
    cfg = {"lamb": 5.0, "train_preserve_scale": 0.5, "fuse_preserve_scale": 0.3, "preserve_weight": 2.0,
           "regions": "none"}
    edit, rec = run_eraselab(pipe, ["cat", "dog"], preserve=["car"], **cfg)
    base = original_weights(pipe)
    pairs = [(p, t.format("")) for c in ("cat", "dog")
             for p, t in zip(prompts_of(c), mace_module.OBJECT_TEMPLATES[:PROMPTS])]
    refined = official_cfr(pipe, base, pairs, 5.0, 0.5, 2.0, prompts_of("car"))
    loras = []
    for i, word in enumerate(("cat", "dog")):
        batches = rec["batches"][2 * i:2 * i + 2]
        assert all(b.mask is None for b in batches)
        losses, _, final = official_lora_training(pipe, refined, rec["init"][i], batches, word, lr=1e-2)
        assert rel(rec["losses"][2 * i:2 * i + 2], losses) <= TOL
        loras.append({n: (final[f"{n}.up"], final[f"{n}.down"]) for n in base})
    fused = official_fusion(pipe, refined, base, loras, [prompts_of("cat"), prompts_of("dog")], 5.0, 0.3, 2.0,
                            prompts_of("car"))
    for n in base:
        ours = edit.tensors[f"unet.{n}.weight"].double()
        assert rel(ours - base[n].double(), fused[n] - base[n].double()) <= 1e-4
        assert rel(ours, fused[n]) <= TOL


def test_importance_sampling_is_the_official_bump():
    import numpy as np

    w = mace_module.importance_weights(1000).numpy()
    t = np.arange(1000)
    f = 1 / (1 + np.exp(-0.05 * (t - 200))) - 1 / (1 + np.exp(-0.05 * (t - 400)))
    assert np.allclose(w, f / f.sum(), rtol=1e-10, atol=0)
