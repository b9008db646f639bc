"""AdvUnlearn against its official code (OPTML-Group/AdvUnlearn@9d23124), re-derived here in plain torch:
train-scripts/AdvUnlearn.py with utils/attack_util.py (soft_prompt_attack, split_embd, construct_embd),
utils/get_loss.py (get_train_loss_retain, retain_train "reg"), utils/text_encoder.py (CustomTextEncoder) and
utils/util.py (param_choices, id2embedding), with ldm's DDIM sampler stopped by till_T.

eraselab runs a warm-up step, an attack and an adversarial step on the tiny pipeline; the attack and the
second step (the text encoder has moved, so an attack or a loss on the wrong encoder would show) are
recomputed the official way from the same draws: attack losses, the adversarial prompt it returns, the
training loss and the gradient of every trained text-encoder parameter, to ≤ 1e-5 relative.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import eraselab
from eraselab.errors import EraseLabError
from eraselab.methods import advunlearn as adv_module
from eraselab.methods.advunlearn import (
    AdvUnlearn,
    AdvUnlearnConfig,
    RetainPool,
    TextEncoderTraining,
    encode_word_embeddings,
    trained_names,
)
from eraselab.methods.diffusion import NoiseSchedule
from eraselab.methods.text import PromptEncoder

STEPS = 10  # sampler steps (the reference uses 50; 1000 // 10 keeps the grids equal)
TOL = 1e-5
TARGET = "a circle"
RETAIN = ["a photo of chair", "a photo of banana", "a star"]


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def ids_of(pipe, texts):
    return pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids


def eps(unet, x, t, emb):
    t = torch.full((x.shape[0],), int(t))
    return unet(x, t, encoder_hidden_states=emb.expand(x.shape[0], -1, -1)).sample


# ---- the official pieces -----------------------------------------------------------------------------------
def custom_text_encoder(text_encoder, inputs_embeds):
    """CustomTextEncoder.forward: token embeddings given, positions added, causal mask, layers, final norm."""
    tm = getattr(text_encoder, "text_model", text_encoder)
    hidden = tm.embeddings(inputs_embeds=inputs_embeds)
    n = hidden.shape[1]
    mask = torch.full((n, n), torch.finfo(hidden.dtype).min).triu(1)
    mask = mask[None, None].expand(hidden.shape[0], 1, n, n)
    out = tm.encoder(inputs_embeds=hidden, attention_mask=mask)
    return tm.final_layer_norm(out[0] if isinstance(out, tuple) else out.last_hidden_state)


def id2embedding(all_embeddings, input_ids):
    one_hot = F.one_hot(input_ids.view(-1), num_classes=all_embeddings.shape[0]).float()
    return (one_hot @ all_embeddings)[None]


def construct_prefix(word, k, sot_mid_eot_source):
    """split_embd + construct_embd for prefix_k: [sot, adv, words, the rest minus k]."""
    n_words = len(word.split())
    sot, mid, _, eot = torch.split(sot_mid_eot_source, [1, n_words, k, 76 - n_words - k], dim=1)
    return lambda adv: torch.cat([sot, adv, mid, eot], dim=1)


@torch.no_grad()
def sample_till(unet, acp, steps, x, cond, uncond, scale, till):
    """ldm ddim_sampling with till_T (η 0, uniform grid + 1): indices S−1 … down, stop once
    index + 1 == till."""
    grid = torch.arange(0, len(acp), len(acp) // steps) + 1
    a, a_prev = acp[grid], torch.cat([acp[:1], acp[grid[:-1]]])
    for i, step in enumerate(grid.flip(0).tolist()):
        index = steps - i - 1
        b = x.shape[0]
        e_u, e_c = eps(unet, torch.cat([x, x]), step, torch.cat([uncond.expand(b, -1, -1),
                                                                  cond.expand(b, -1, -1)])).chunk(2)
        e = e_u + scale * (e_c - e_u)
        x0 = (x - (1 - a[index]).sqrt() * e) / a[index].sqrt()
        x = a_prev[index].sqrt() * x0 + (1 - a_prev[index]).sqrt() * e
        if index + 1 == till:
            break
    return x


def param_choices(text_encoder, train_method, component, final_layer_norm):
    """util.param_choices for the text-encoder methods, names relative to text_model."""
    layer_sets = {"text_encoder_layer0": ["0"], "text_encoder_layer01": ["0", "1"],
                  "text_encoder_layer0_11": ["0", "11"]}
    chosen = []
    for name, _ in text_encoder.named_parameters():
        local = name.removeprefix("text_model.")
        pick_component = (component == "all" or (component == "ffn" and "mlp" in local)
                          or (component == "attn" and "self_attn" in local))
        if train_method == "text_encoder_full":
            if local.startswith("final_layer_norm"):
                if component == "all" or final_layer_norm:
                    chosen.append(name)
            elif local.startswith("encoder") and pick_component:
                chosen.append(name)
        else:
            if any(local.startswith(f"encoder.layers.{i}") for i in layer_sets[train_method]):
                if pick_component:
                    chosen.append(name)
            elif local.startswith("final_layer_norm") and final_layer_norm:
                chosen.append(name)
    return chosen


# ---- running eraselab --------------------------------------------------------------------------------------
def run_eraselab(pipe, monkeypatch, **values):
    """A warm-up step, an attack and an adversarial step; what the attack and the last step saw."""
    cfg = AdvUnlearnConfig.build({"preset": "sd", "ddim_steps": STEPS, "lr": 1e-3, "attack_lr": 1e-2,
                                  "attack_steps": 3, "retain_batch": 2, **values}, pipe)
    seen = []
    real_draw, real_rollout = NoiseSchedule.compvis_draw, adv_module.ddim_rollout

    def draw(self, generator):
        seen.append({"draw": real_draw(self, generator)})
        return seen[-1]["draw"]

    def rollout(unet, schedule, noise, cond, uncond, stop, guidance):
        seen[-1].update(noise=noise.clone(), conds=cond.clone())
        return real_rollout(unet, schedule, noise, cond, uncond, stop, guidance)

    monkeypatch.setattr(NoiseSchedule, "compvis_draw", draw)
    monkeypatch.setattr(adv_module, "ddim_rollout", rollout)
    names = trained_names(pipe.text_encoder, cfg.train_method, cfg.component, cfg.norm_layer)
    session = TextEncoderTraining(pipe, names, cfg.lr, cfg.seed)
    try:
        target = AdvUnlearn.target_prompt(pipe, TARGET, cfg)
        frozen = dict(zip(["", TARGET, *RETAIN], PromptEncoder(pipe)(["", TARGET, *RETAIN])))
        schedule = NoiseSchedule.from_pipe(pipe, STEPS)
        pool = RetainPool(RETAIN, session.generator)
        AdvUnlearn.train_step(session, schedule, target, frozen, TARGET, pool.draw(2), None, cfg)
        theta = {n: p.detach().clone() for n, p in zip(names, session.trained)}
        g_state = session.generator.get_state()
        adv, attack_losses = AdvUnlearn.attack(session, schedule, target, frozen[""], frozen[TARGET], None,
                                               cfg)
        attack_seen = seen[1:]
        batch = pool.draw(2)
        AdvUnlearn.train_step(session, schedule, target, frozen, TARGET, batch, adv, cfg)
        grads = {n: p.grad.clone() for n, p in zip(names, session.trained)}
        out = {"cfg": cfg, "names": names, "theta": theta, "g_state": g_state, "adv": adv,
               "attack_losses": attack_losses, "attack_seen": attack_seen, "step": seen[-1], "batch": batch,
               "loss": session.losses[-1], "grads": grads}
    finally:
        session.restore()
    return out


def encoder_at(pipe, theta):
    te = copy.deepcopy(pipe.text_encoder)
    params = dict(te.named_parameters())
    with torch.no_grad():
        for n, v in theta.items():
            params[n].copy_(v)
    return te


def reference_attack(pipe, te, run):
    """soft_prompt_attack (pgd, random init, word_embd, prefix_k) at text encoder `te`, from the same
    draws."""
    cfg = run["cfg"]
    k = cfg.adv_prompt_num
    te.requires_grad_(False)
    all_embeddings = pipe.text_encoder.get_input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(0)
    g.set_state(run["g_state"])
    init_ids = torch.randint(len(pipe.tokenizer), (1, k), generator=g)  # init_adv: k random vocabulary words
    adv_embedding = id2embedding(all_embeddings, init_ids).reshape(1, k, -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([adv_embedding], lr=cfg.attack_lr)
    emb_0, emb_p = (pipe.text_encoder(ids_of(pipe, [w]))[0].detach() for w in ("", TARGET))
    build = construct_prefix(TARGET, k, id2embedding(all_embeddings, ids_of(pipe, TARGET)))
    losses = []
    for s in run["attack_seen"]:
        t_enc, _, t = s["draw"]
        z = sample_till(pipe.unet, pipe.scheduler.alphas_cumprod, STEPS, s["noise"], emb_p, emb_0,
                        cfg.rollout_guidance, t_enc)
        with torch.no_grad():
            e_p = eps(pipe.unet, z, t, emb_p)
        word_embedding = build(adv_embedding)
        e_n = eps(pipe.unet, z, t, custom_text_encoder(te, word_embedding))
        loss = F.mse_loss(e_n, e_p)
        loss.backward()  # no zero_grad in the reference: the gradient accumulates over the attack
        opt.step()
        losses.append(float(loss.detach()))
    return word_embedding.detach(), losses


def test_custom_text_encoder_forward_equals_the_encoder(tiny_pipe_factory):
    """The reference's own check (text_encoder.py's __main__), and eraselab's forward from word embeddings."""
    pipe = tiny_pipe_factory(0)
    ids = ids_of(pipe, [TARGET, "a photo of chair"])
    table = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        plain = pipe.text_encoder(ids)[0]
        embeds = torch.cat([id2embedding(table, i) for i in ids])
        assert rel(custom_text_encoder(pipe.text_encoder, embeds), plain) <= TOL
        assert rel(encode_word_embeddings(pipe.text_encoder, ids, embeds), plain) <= TOL
        shifted = construct_prefix(TARGET, 2, embeds[:1])(torch.randn(1, 2, table.shape[1]))
        ours = encode_word_embeddings(pipe.text_encoder, ids[:1], shifted)
        assert rel(ours, custom_text_encoder(pipe.text_encoder, shifted)) <= TOL
        assert rel(ours, plain[:1]) > 1e-3  # the adversarial tokens do change the encoding


def test_attack_and_adversarial_step_match_the_official_code(tiny_pipe_factory, monkeypatch):
    pipe = tiny_pipe_factory(0)
    run = run_eraselab(pipe, monkeypatch)
    cfg = run["cfg"]
    assert (cfg.recipe, cfg.attack_method, cfg.attack_type, cfg.attack_init, cfg.retain_loss_weight) == \
        ("official", "pgd", "prefix_k", "random", 0.3)
    te = encoder_at(pipe, run["theta"])
    # The rollouts: the frozen encoder's target prompt, ldm's sampler stopped by t_enc.
    for s in run["attack_seen"]:
        t_enc, stop, _ = s["draw"]
        assert stop == min(STEPS + 1 - t_enc, STEPS)
    ref_adv, ref_losses = reference_attack(pipe, te, run)
    assert len(ref_losses) == cfg.attack_steps
    for ours, ref in zip(run["attack_losses"], ref_losses):
        assert abs(ours - ref) <= TOL * abs(ref), (ours, ref)
    assert rel(run["adv"], ref_adv) <= TOL, rel(run["adv"], ref_adv)
    print(f"attack losses {ref_losses}, adversarial prompt max rel {rel(run['adv'], ref_adv):.2e}")

    # The adversarial step: get_train_loss_retain with retain_train "reg".
    s = run["step"]
    t_enc, _, t = s["draw"]
    acp = pipe.scheduler.alphas_cumprod
    with torch.no_grad():
        emb_0, emb_p = (pipe.text_encoder(ids_of(pipe, [w]))[0] for w in ("", TARGET))
        retain_emb_p = pipe.text_encoder(ids_of(pipe, run["batch"]))[0]
    z = sample_till(pipe.unet, acp, STEPS, s["noise"][:1], emb_p, emb_0, cfg.rollout_guidance, t_enc)
    retain_z = sample_till(pipe.unet, acp, STEPS, s["noise"][1:], retain_emb_p, emb_0, cfg.rollout_guidance,
                           t_enc)
    with torch.no_grad():
        e_0, e_p = eps(pipe.unet, z, t, emb_0), eps(pipe.unet, z, t, emb_p)
        retain_e_p = eps(pipe.unet, retain_z, t, retain_emb_p)
    te.requires_grad_(False)
    params = dict(te.named_parameters())
    chosen = param_choices(te, "text_encoder_full", "all", False)
    for n in chosen:
        params[n].requires_grad_(True)
    e_n = eps(pipe.unet, z, t, custom_text_encoder(te, ref_adv))
    retain_e_n = eps(pipe.unet, retain_z, t, te(ids_of(pipe, run["batch"]))[0])
    loss = F.mse_loss(e_n, e_0 - cfg.negative_guidance * (e_p - e_0)) \
        + cfg.retain_loss_weight * F.mse_loss(retain_e_n, retain_e_p)
    grads = dict(zip(chosen, torch.autograd.grad(loss, [params[n] for n in chosen])))
    loss = loss.detach()
    assert set(run["grads"]) == set(grads)
    assert abs(run["loss"] - float(loss)) <= TOL * float(loss), (run["loss"], float(loss))
    flat = torch.cat([run["grads"][n].flatten() for n in chosen])
    ref = torch.cat([grads[n].flatten() for n in chosen])
    assert rel(flat, ref) <= TOL, rel(flat, ref)
    print(f"step loss rel {abs(run['loss'] - float(loss)) / float(loss):.2e}, "
          f"gradient max rel {rel(flat, ref):.2e}")


def test_the_attack_gradient_accumulates_unless_asked(tiny_pipe_factory, monkeypatch):
    """attack_zero_grad (eraselab's option) changes the attack; the recipe keeps the reference's
    accumulation."""
    pipe = tiny_pipe_factory(0)
    a = run_eraselab(pipe, monkeypatch)
    monkeypatch.undo()
    b = run_eraselab(pipe, monkeypatch, attack_zero_grad=True)
    assert a["attack_losses"][0] == pytest.approx(b["attack_losses"][0], rel=1e-6)  # same first step
    assert rel(a["adv"], b["adv"]) > 1e-6


def test_parameter_choice_matches_param_choices():
    """param_choices on a 12-layer encoder, including its prefix match ('encoder.layers.1' also picks 10,
    11)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=8, intermediate_size=16,
                                      num_hidden_layers=12, num_attention_heads=2, max_position_embeddings=8))
    for method, component, norm in [("text_encoder_full", "all", False), ("text_encoder_full", "ffn", False),
                                    ("text_encoder_full", "attn", True),
                                    ("text_encoder_layer0", "all", False),
                                    ("text_encoder_layer01", "all", True),
                                    ("text_encoder_layer0_11", "ffn", False)]:
        ours, ref = trained_names(te, method, component, norm), param_choices(te, method, component, norm)
        assert ours == ref, method
    picked = {n.split(".")[2] for n in trained_names(te, "text_encoder_layer01", "all", False)}
    assert picked == {"0", "1", "10", "11"}
    assert not any("embeddings" in n for n in trained_names(te, "text_encoder_full", "all", False))


def test_retain_pool_draws_without_replacement_and_refills():
    pool = RetainPool(list("abcdefg"), torch.Generator().manual_seed(0))
    first = pool.draw(5)
    pool.refill_if_short(5)  # 2 left: refilled
    assert len(set(first)) == 5 and len(pool.unseen) == 7
    pool.draw(3)
    pool.refill_if_short(3)
    assert len(pool.unseen) == 4  # 4 left ≥ 3: not refilled


def test_erase_edits_only_the_text_encoder_and_round_trips(tiny_pipe, tmp_path):
    pipe = tiny_pipe
    before = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    edit = eraselab.erase(pipe, "advunlearn", ["circle"], preset="sd", iterations=2, warmup_iterations=1,
                          attack_steps=1, ddim_steps=4, lr=1e-3, retain_prompts="domain", progress=False)
    assert edit.tensors and all(n.startswith(("text_encoder.encoder.", "text_encoder.final_layer_norm"))
                                for n in edit.tensors)
    assert all(torch.equal(before[n], p) for n, p in pipe.text_encoder.named_parameters())
    assert edit.extras["recipe"]["commit"] == "9d231249f9af13626e8bb9dcef5521f11d262498"
    loaded = eraselab.Edit.load(edit.save(tmp_path / "e"))
    loaded.apply(pipe)
    name = next(iter(edit.tensors)).removeprefix("text_encoder.")
    assert torch.equal(dict(pipe.text_encoder.named_parameters())[name], edit.tensors[f"text_encoder.{name}"])
    loaded.revert(pipe)
    assert all(torch.equal(before[n], p) for n, p in pipe.text_encoder.named_parameters())


@pytest.mark.parametrize("bad,fragment", [({"attack_method": "cw"}, "attack_method"),
                                          ({"train_method": "xattn"}, "train_method"),
                                          ({"attack_steps": 0}, "attack_steps"),
                                          ({"retain_prompts": "/no/such/file.txt"}, "retain_prompts")])
def test_bad_config_is_one_line(tiny_pipe, bad, fragment):
    with pytest.raises(EraseLabError) as info:
        eraselab.erase(tiny_pipe, "advunlearn", ["circle"], progress=False, iterations=1, **bad)
    assert fragment in str(info.value) and "\n" not in str(info.value)
