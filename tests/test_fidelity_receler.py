"""Receler against its official code (jasper0314-huang/Receler@3ccedc9), re-derived here in plain torch:

- the eraser (receler/erasers/utils.py AdapterEraser) wrapped around each cross-attention the way
  receler/erasers/diffusers_erasers.py's AttentionWithEraser does (output + eraser(output)), with
  DisableEraser's switch;
- the cross-attention maps as ldm/modules/attention.py's CrossAttention returns them, concept_reg.get_mask,
  the ldm DDIM rollout with till_T, and train_receler.py's inner loop, erase loss and regulariser.

Two real training steps run through eraselab; at the second (the erasers have moved, so the regulariser and
the rollout through the erasers count) the loss and the gradient of every eraser parameter are recomputed the
official way from the same draws and the same eraser weights. The official adversarial step is run literally:
its `.data` assignment leaves the conditioning unchanged, so eraselab's default (no inner loop) must give the
same update; with `insert_adversarial` the inner loop writes the prompts in, as the paper describes, and the
learned prompts must match too.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_fidelity_esd import compvis_sample_till, encode, rel

from eraselab.methods.receler import ReceLerConfig, ReceLerTraining

STEPS = 10
TOL = 1e-5
MASK_RES = 8  # the tiny UNet's coarsest cross-attention outside the mid block (SD 1.x at 512 px: 16)


class OfficialEraser(nn.Module):
    def __init__(self, dim, mid_dim):
        super().__init__()
        self.down = nn.Linear(dim, mid_dim)
        self.act = nn.GELU()
        self.up = nn.Linear(mid_dim, dim)

    def forward(self, hidden_states):
        return self.up(self.act(self.down(hidden_states)))


def ldm_attention_probs(attn, x, context):
    """ldm CrossAttention: softmax(q kᵀ · dim_head^-½) per head, returned as (b, heads, i, j)."""
    h = attn.heads
    q, k = attn.to_q(x), attn.to_k(context)
    b, n, inner = q.shape
    d = inner // h
    q = q.view(b, n, h, d).permute(0, 2, 1, 3).reshape(b * h, n, d)
    k = k.view(b, k.shape[1], h, d).permute(0, 2, 1, 3).reshape(b * h, -1, d)
    sim = torch.einsum("bid,bjd->bij", q, k) * d ** -0.5
    return sim.softmax(dim=-1).view(b, h, n, -1)


class AttentionWithEraser(nn.Module):
    def __init__(self, attn, eraser, name, record):
        super().__init__()
        self.attn, self.adapter, self.name, self.record = attn, eraser, name, record
        self.use_eraser = True

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        out = self.attn(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kwargs,
        )
        if self.record.get("maps") is not None:
            self.record["maps"][self.name] = ldm_attention_probs(self.attn, hidden_states,
                                                                 encoder_hidden_states).detach()
        return self.adapter(out) + out if self.use_eraser else out


def official_unet(unet, erasers):
    """A copy of the UNet with every BasicTransformerBlock's attn2 wrapped (inject_eraser)."""
    unet = copy.deepcopy(unet)
    for m in unet.modules():  # a deep copy keeps eraselab's eraser hooks: the official model has only its own
        m._forward_hooks.clear()
        m._forward_hooks_with_kwargs.clear()
    record, wrappers = {}, {}
    for name, module in list(unet.named_modules()):
        if type(module).__name__ == "BasicTransformerBlock":
            site = f"{name}.attn2"
            wrappers[site] = AttentionWithEraser(module.attn2, erasers[site], site, record)
            module.attn2 = wrappers[site]
    return unet, wrappers, record


def get_mask(attn_maps, word_indices, thres):
    """concept_reg.get_mask, with the tiny UNet's MASK_RES in place of 16."""
    name2res, chosen = {}, []
    for name, attns in attn_maps.items():
        attns = attns[..., word_indices].mean(-1).mean(1)
        res = int(attns.shape[-1] ** 0.5)
        name2res[name] = res
        if res != MASK_RES:
            continue
        chosen.append(attns.view(attns.shape[0], res, res))
    avg = torch.stack(chosen, dim=1).mean(1)
    lo = avg.min(dim=1, keepdim=True)[0].min(dim=2, keepdim=True)[0]
    hi = avg.max(dim=1, keepdim=True)[0].max(dim=2, keepdim=True)[0]
    mask = (avg - lo) / (hi - lo)
    mask[mask >= thres] = 1
    mask[mask < thres] = 0
    return {name: F.interpolate(mask.unsqueeze(0), (res, res)).squeeze(0) for name, res in name2res.items()}


def official_step(pipe, training, cfg, state, adversarial, adv_opt_state, fixed: bool):
    """train_receler.py's loop body for one iteration; returns (loss, {site.param: grad}, adversarial)."""
    erasers = {}
    for site, e in training.erasers.items():
        oe = OfficialEraser(e.down.in_features, e.down.out_features)
        oe.load_state_dict(e.state_dict())
        erasers[site] = oe
    unet, wrappers, record = official_unet(pipe.unet, erasers)
    prompt = "circle"
    emb_0, emb_p = encode(pipe, [""]), encode(pipe, [prompt])
    emb_n = emb_p.clone()
    text_len = len(pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    word_indices = torch.arange(1, 1 + text_len)
    advrs_indices = torch.arange(1 + text_len, 1 + text_len + cfg.adversarial_prompts)
    advrs = nn.Parameter(adversarial.clone())
    advrs_opt = torch.optim.Adam([advrs], lr=0.1, weight_decay=0.1)
    advrs_opt.load_state_dict(adv_opt_state)
    # the draws, in the official order, from the same generator state
    g = torch.Generator().manual_seed(0)
    g.set_state(state)
    torch.randint(1, (1,), generator=g)  # the word (one target)
    t_enc = int(torch.randint(STEPS, (1,), generator=g))
    og_num, og_num_lim = round(t_enc / STEPS * 1000), round((t_enc + 1) / STEPS * 1000)
    t_ddpm = int(torch.randint(og_num, og_num_lim, (1,), generator=g))
    start_code = torch.randn((1, 4, 8, 8), generator=g)
    acp = pipe.scheduler.alphas_cumprod.float()
    z = compvis_sample_till(unet, acp, STEPS, start_code, emb_p, emb_0, cfg.rollout_guidance, t_enc)

    def apply_model(x, emb):
        return unet(x, torch.full((1,), t_ddpm), encoder_hidden_states=emb).sample

    with torch.no_grad():
        for w in wrappers.values():
            w.use_eraser = False
        e_0 = apply_model(z, emb_0)
        record["maps"] = {}
        e_p = apply_model(z, emb_p)
        attn_maps, record["maps"] = record["maps"], None
        for w in wrappers.values():
            w.use_eraser = True
    attn_masks = get_mask(attn_maps, word_indices, cfg.mask_threshold)
    eraser_outs = {}
    hooks = [w.adapter.register_forward_hook(lambda m, i, o, s=site: eraser_outs.__setitem__(s, o))
             for site, w in wrappers.items()]
    for inner_it in range(cfg.adversarial_iterations):
        emb_n = emb_n.detach()
        if fixed:
            emb_n[:, advrs_indices, :] = advrs.data
        else:
            emb_n[:, advrs_indices, :].data = advrs.data  # the official line: writes into a copy
        emb_n.requires_grad = True
        e_n = apply_model(z, emb_n)
        loss_adv = F.mse_loss(e_n, e_p, reduction="mean")
        tmp_grad, = torch.autograd.grad(loss_adv, [emb_n], retain_graph=True)
        advrs.grad = tmp_grad[:, advrs_indices, :]
        advrs_opt.step()
        advrs_opt.zero_grad()
        if inner_it == cfg.adversarial_iterations - 1:
            if not fixed:
                assert torch.equal(emb_n.detach(), emb_p)  # the attack never reached the conditioning
            loss_total = F.mse_loss(e_n, e_0 - (cfg.negative_guidance * (e_p - e_0)))
            loss_reg, count = torch.tensor(0.0), 0
            for name, e_out in eraser_outs.items():
                count += 1
                flip_mask = (~attn_masks[name].unsqueeze(1).bool()).float()
                w = flip_mask.shape[2]
                e_out = e_out.view(e_out.shape[0], w, -1, e_out.shape[-1]).permute(
                    0, 3, 1, 2
                )  # b (w h) d → b d w h
                loss_reg = loss_reg + ((e_out * flip_mask) ** 2).mean(1).sum() / (flip_mask.sum() + 1e-9)
            loss_total = loss_total + cfg.concept_reg_weight * (loss_reg / count)
            loss_total.backward()
    for h in hooks:
        h.remove()
    grads = {f"{site}.{n}": p.grad for site, e in erasers.items() for n, p in e.named_parameters()}
    return float(loss_total.detach()), grads, advrs.detach()


@pytest.mark.parametrize("insert", [False, True])
def test_receler_step_matches_official(tiny_pipe_factory, insert):
    pipe = tiny_pipe_factory(0)
    cfg = ReceLerConfig.build(
        {
            "ddim_steps": STEPS,
            "eraser_rank": 8,
            "mask_map_size": MASK_RES,
            "adversarial_iterations": 2,
            "adversarial_prompts": 4,
            "insert_adversarial": insert,
            "seed": 3,
        },
        pipe,
        "receler",
    )
    training = ReceLerTraining(pipe, ["circle"], cfg)
    try:
        training.iteration()  # a real step first (the Adam states move) ...
        with torch.no_grad():  # ... then erasers well away from zero, so every gradient is far above rounding
            for e in training.erasers.values():
                e.up.weight.add_(
                    0.2 * torch.randn(e.up.weight.shape, generator=torch.Generator().manual_seed(5))
                )
        state = training.generator.get_state()
        adversarial = training.adversarial["circle"].detach().clone()
        adv_state = copy.deepcopy(training.adversarial_opts["circle"].state_dict())
        training.optimizer.zero_grad(set_to_none=True)
        loss = training.step_loss()
        loss.backward()
        ours = {
            f"{site}.{n}": p.grad for site, e in training.erasers.items() for n, p in e.named_parameters()
        }
        theirs_loss, theirs, theirs_adv = official_step(
            pipe, training, cfg, state, adversarial, adv_state, insert
        )
        assert abs(float(loss.detach()) - theirs_loss) <= TOL * abs(theirs_loss)
        assert set(ours) == set(theirs)
        for name, grad in theirs.items():
            assert grad.abs().max() > 0, name
            assert rel(ours[name], grad) <= TOL, name
        if insert:
            assert rel(training.adversarial["circle"].detach(), theirs_adv) <= TOL
            assert not torch.allclose(theirs_adv, adversarial)
    finally:
        training.close()


def test_eraser_forward_matches_official_wrapper(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    cfg = ReceLerConfig.build({"eraser_rank": 8, "mask_map_size": MASK_RES}, pipe, "receler")
    training = ReceLerTraining(pipe, ["circle"], cfg)
    try:
        for e in training.erasers.values():
            nn.init.normal_(e.up.weight, std=0.3)
        erasers = {}
        for site, e in training.erasers.items():
            erasers[site] = OfficialEraser(e.down.in_features, e.down.out_features)
            erasers[site].load_state_dict(e.state_dict())
        unet, _, _ = official_unet(pipe.unet, erasers)
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        emb = encode(pipe, ["circle"])
        with torch.no_grad():
            ours = pipe.unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample
            theirs = unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample
            with training.attachment.disabled():
                plain = pipe.unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample
        assert rel(ours, theirs) <= TOL and not torch.allclose(ours, plain)
    finally:
        training.close()
