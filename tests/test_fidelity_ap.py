"""AP's default recipe against its official code, re-derived in plain torch from
tuananhbui89/Erasing-Adversarial-Preservation@7222925bc31348c00ed0896eb3148acf2d669d7d:
train_adversarial_gumbel.py (the loop, its DDIM rollout via ldm/models/diffusion/ddim.py with till_T, its x̂₀
with ddim_alphas[t_enc]) and gen_embedding_matrix.py (search_closest_tokens, my_kmean). Same tiny SD-1-shaped
pipeline, same inputs."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_fidelity_esd import compvis_sample_till

from eraselab.methods.adversarial import concept_weights, mix, search_step
from eraselab.methods.ap import AP, APConfig
from eraselab.methods.diffusion import NoiseSchedule
from eraselab.methods.params import in_group
from eraselab.methods.text import PromptEncoder
from eraselab.methods.training import TrainingSession
from eraselab.methods.vocabulary import candidate_concepts

S, T = 50, 1000  # the reference's DDIM steps and training timesteps
# fmt: off
WORDS = ["cat", "dog", "car", "tree", "house", "river", "moon", "star", "bird", "fish", "chair", "table",
         "road", "city", "music", "paint", "glass", "stone", "cloud", "fire", "snow", "horse", "apple",
         "bread", "light", "dark", "green", "ocean", "forest", "mountain", "t-shirt", "ice cream", "x1"]
# fmt: on
TARGETS = ["cat", "ocean"]


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- the official procedure --------------------------------------------------------------------------------
def encode(pipe, prompt):
    """get_learned_conditioning([prompt]): the CLIP text encoder's last hidden state, (1, 77, d)."""
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0].float()


def official_candidates(pipe, concept, words, k, num_centers):
    from sklearn.cluster import KMeans

    concept_emb = encode(pipe, concept).view(1, -1)
    matrix = torch.cat([encode(pipe, w) for w in words]).view(len(words), -1)
    sims, idx = torch.sort(-F.pairwise_distance(concept_emb, matrix, p=2), descending=True)
    sim_dict = {}
    for s, i in zip(sims, idx):
        word = words[int(i)]
        if any(ch not in "abcdefghijklmnopqrstuvwxyz</>" for ch in word.lower()):
            continue
        sim_dict[word] = s
    top = list(sim_dict)[:k]
    sim_dict = {w: sim_dict[w] for w in top}
    if len(top) <= num_centers:
        return top
    values = np.array([sim_dict[w].item() for w in sim_dict]).reshape(-1, 1)
    centres = KMeans(n_clusters=num_centers, random_state=0).fit(values).cluster_centers_
    chosen = {}
    for centre in centres:
        best, best_sim = None, -float("inf")
        for w in sim_dict:
            if abs(sim_dict[w].item() - centre) < abs(best_sim - centre):
                best, best_sim = w, sim_dict[w].item()
        chosen[best] = None
    return list(chosen)


def ddim_grid(pipe):
    ac = pipe.scheduler.alphas_cumprod.float()
    ts = np.arange(0, T, T // S) + 1  # make_ddim_timesteps("uniform"), ascending
    return ac, ts, ac[ts], torch.cat([ac[:1], ac[ts[:-1]]])  # ddim_alphas, ddim_alphas_prev


def official_rollout(unet, pipe, cond, uncond, code, till, scale=3.0):
    """DDIMSampler.sample(..., till_T=till): the same CompVis sampler loop ESD's reference re-derives."""
    return compvis_sample_till(
        unet, pipe.scheduler.alphas_cumprod.float(), S, code, cond, uncond, scale, till
    )


def gumbel(logits, u, tau, hard=True, k=None, eps=1e-10):
    y = torch.softmax((logits - torch.log(-torch.log(u + eps) + eps)) / tau, dim=-1)
    if hard:
        y_hard = torch.zeros_like(logits).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
        return (y_hard - y).detach() + y
    top = torch.topk(y, k, dim=-1).values
    y = y * (y >= top[..., -1:]).float()
    return y / y.sum(-1, keepdim=True)


class Official:
    """One iteration of train_adversarial_gumbel.py / train_age.py on given z, z_r, t_enc, t_ddpm and π."""

    def __init__(self, pipe, lr, pi_lr, n):
        self.model, self.orig = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.unet)
        self.model.requires_grad_(False)
        self.orig.requires_grad_(False)
        self.params = [p for name, p in self.model.named_parameters() if "attn2" in name]
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.one_hot = torch.zeros(1, n) + 1 / n
        self.one_hot.requires_grad_(True)
        self.opt_pi = torch.optim.Adam([self.one_hot], lr=pi_lr)
        self.pipe = pipe

    def step(self, theta_step, z, z_r, t_enc, t_ddpm, emb_n, emb_0, emb_r, eta=1.0, lam=1.0, age=False,
             batched=True):
        """The reference's loss for one iteration; θ steps back-propagate and step θ, π steps π."""
        self.opt.zero_grad()
        self.opt_pi.zero_grad()
        t = torch.tensor([t_ddpm])
        if age:
            emb_0 = emb_r.clone().detach()
        # The reference makes five separate UNet calls; `batched` stacks the θ step's (frozen: ∅/c/c_a,
        # trained: c/c_a) as eraselab does: the same arithmetic with the same float32 rounding.
        with torch.no_grad():
            if batched and theta_step:
                e_0_org, e_n_org, e_r_org = self.orig(
                    torch.cat([z, z, z_r]),
                    t.expand(3),
                    encoder_hidden_states=torch.cat([emb_0, emb_n, emb_r]),
                ).sample.chunk(3)
            else:
                e_0_org = self.orig(z, t, encoder_hidden_states=emb_0).sample
                e_n_org = self.orig(z, t, encoder_hidden_states=emb_n).sample
                e_r_org = self.orig(z_r, t, encoder_hidden_states=emb_r).sample
        if batched and theta_step:
            e_n, e_r = self.model(
                torch.cat([z, z_r]), t.expand(2), encoder_hidden_states=torch.cat([emb_n, emb_r])
            ).sample.chunk(2)
        else:
            e_n = self.model(z, t, encoder_hidden_states=emb_n).sample
            e_r = self.model(z_r, t, encoder_hidden_states=emb_r).sample
        a = ddim_grid(self.pipe)[2][t_enc]
        def x0(zz, e):
            return (zz - torch.sqrt(1 - a) * e) / torch.sqrt(a)

        mse = torch.nn.MSELoss()
        if theta_step:
            loss = mse(x0(z, e_n), x0(z, e_0_org) - eta * (x0(z, e_n_org) - x0(z, e_0_org)))
            loss = loss + lam * mse(x0(z_r, e_r), x0(z_r, e_r_org))
            loss.backward()
            self.opt.step()
        else:
            loss = -lam * mse(x0(z_r, e_r), x0(z_r, e_r_org))
            if age:
                loss = loss - mse(x0(z, e_n), x0(z, e_0_org))
            loss.backward()
            self.opt_pi.step()
        return float(loss.detach())


# ---- tests -------------------------------------------------------------------------------------------------
def test_candidates_match_the_reference_selection(tiny_pipe_factory):
    pytest.importorskip("sklearn")
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    for target in TARGETS:
        for k, centres in [(20, 6), (8, 10)]:  # k-means++ on the 20 closest; no k-means when k ≤ centres
            want = official_candidates(pipe, target, WORDS, k, centres)
            names, emb, _ = candidate_concepts(PromptEncoder(pipe), target, WORDS, k, centres)
            assert names == want, (target, k, names, want)
            assert target in names  # the reference keeps the target among its own candidates
            assert torch.allclose(emb, torch.cat([encode(pipe, w) for w in names]), atol=1e-5)


def test_timestep_pairing_is_the_compvis_one(tiny_pipe_factory):
    schedule = NoiseSchedule.from_pipe(tiny_pipe_factory(0, sd1_shapes=True), S)
    _, ts, _, _ = ddim_grid(tiny_pipe_factory(0, sd1_shapes=True))
    cfg = APConfig()
    for seed in range(20):
        g, ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        stop, t, t_x0 = AP.sample_timesteps(schedule, g, cfg)
        s = int(torch.randint(S, (1,), generator=ref))
        t_ref = int(torch.randint(round(s / S * T), round((s + 1) / S * T), (1,), generator=ref))
        assert (t, t_x0) == (t_ref, int(ts[s]))
        assert stop == min(S, S + 1 - s)  # the number of DDIM steps the reference's till_T=s runs


def theta_and_search_step(pipe, method, cfg, mode="hard", top_k=1, age=False, lam=1.0, exact_too=False,
                          batched=True):
    """One θ step then one π step, eraselab beside the reference. Returns the max relative differences."""
    cands = ["dog", "moon", "table", "fire"]
    enc = PromptEncoder(pipe)
    emb_n, emb_0, matrix = encode(pipe, "cat"), encode(pipe, ""), torch.cat([encode(pipe, w) for w in cands])
    gen = torch.Generator().manual_seed(3)
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    z, z_r = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    t_enc, t_ddpm = 37, 751
    ref = Official(pipe, cfg.lr, cfg.pi_lr, len(cands))
    session = TrainingSession(pipe, cfg.train, cfg.lr, 0)
    schedule = NoiseSchedule.from_pipe(pipe, S)
    t_x0 = int(schedule.timesteps.flip(0)[t_enc])
    logits = torch.zeros(len(cands), requires_grad=True)
    pi_opt = torch.optim.Adam([logits], lr=cfg.pi_lr)
    diffs = {}
    try:
        assert sorted(session.names) == sorted(n for n, _ in ref.model.named_parameters() if "attn2" in n)
        assert all(in_group(n, "x") for n in session.names)
        cond, uncond = enc(["cat"])[0], enc([""])[0]
        for theta in (True, False):
            u = torch.rand(len(cands), generator=torch.Generator().manual_seed(11 + theta))
            w_ref = gumbel(ref.one_hot if not theta else ref.one_hot.detach(), u.unsqueeze(0), cfg.tau,
                           hard=mode == "hard", k=top_k)
            emb_r = torch.reshape(w_ref @ matrix.flatten(1), (1, 77, -1))
            loss_ref = ref.step(
                theta, z, z_r, t_enc, t_ddpm, emb_n, emb_0, emb_r, cfg.negative_guidance, lam, age, batched
            )
            weights = concept_weights(logits if not theta else logits.detach(), cfg.tau, mode, top_k,
                                      torch.Generator().manual_seed(11 + theta))
            adv = mix(weights.detach(), enc(cands))
            if theta:
                loss = method.model_step(session, schedule, z, z_r, t_ddpm, t_x0, cond, uncond, adv, cfg)
                diffs["theta_loss"] = abs(loss - loss_ref) / abs(loss_ref)
                named = dict(pipe.unet.named_parameters())
                ref_named = dict(ref.model.named_parameters())
                # Relative to the whole trained group's norm: the batched and the reference's separate UNet
                # calls round differently, which a single small-gradient tensor would magnify.
                def flat(ts):
                    return torch.cat([t.flatten() for t in ts])

                diffs["theta_grad"] = rel(flat(named[n].grad for n in session.names),
                                          flat(ref_named[n].grad for n in session.names))
                diffs["theta_update"] = rel(
                    flat(named[n].detach() - session.originals[n] for n in session.names),
                    flat(ref_named[n].detach() - session.originals[n] for n in session.names),
                )
            else:
                before = logits.detach().clone()
                def objective(c):
                    return method.search_objective(
                        session, schedule, z, z_r, t_ddpm, t_x0, cond, uncond, cfg, c
                    )

                _, value = search_step(logits, pi_opt, enc(cands), objective, weights)
                diffs["search_loss"] = abs(value + loss_ref) / abs(loss_ref)
                diffs["search_grad"] = rel(logits.grad, ref.one_hot.grad[0])
                # Relative to Adam's step size: at τ 0.1 most entries of the gradient are ~1e-20, whose steps
                # the reference's 1/n start rounds away in float32 while our zero start keeps them.
                step_ref = ref.one_hot.detach()[0] - (1 / len(cands))
                # Less the float32 resolution at 1/n that the reference's π is stored with.
                ulp = float(torch.finfo(torch.float32).eps) * (1 / len(cands))
                diffs["search_update"] = (
                    max(0.0, float((logits.detach() - before - step_ref).abs().max()) - ulp) / cfg.pi_lr
                )
                if exact_too:
                    exact = type(cfg)(**{**cfg.as_dict(), "exact_search_gradient": True})
                    w = concept_weights(logits, cfg.tau, mode, top_k, torch.Generator().manual_seed(12))
                    c = mix(w, enc(cands))
                    val = method.search_objective(
                        session, schedule, z, z_r, t_ddpm, t_x0, cond, uncond, exact, c
                    )
                    (g_exact,) = torch.autograd.grad(val, [logits])
                    w = concept_weights(logits, cfg.tau, mode, top_k, torch.Generator().manual_seed(12))
                    c = mix(w, enc(cands))
                    val = method.search_objective(
                        session, schedule, z, z_r, t_ddpm, t_x0, cond, uncond, cfg, c
                    )
                    (g_ref,) = torch.autograd.grad(val, [logits])
                    diffs["exact_vs_reference_grad"] = rel(g_exact, g_ref)
    finally:
        session.restore()
    return diffs


def test_theta_and_search_steps_match_the_reference(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    cfg = APConfig(lr=1e-3)  # a larger step than 1e-5 so that θ ≠ θ* measurably before the π step
    d = theta_and_search_step(pipe, AP(), cfg, exact_too=True)
    print({k: f"{v:.2e}" for k, v in d.items()})
    for key in ("theta_loss", "theta_grad", "theta_update", "search_loss", "search_grad", "search_update"):
        assert d[key] <= 1e-5, (key, d[key])
    # eraselab's exact search gradient (through the frozen model too) is a different gradient.
    assert d["exact_vs_reference_grad"] > 1e-2, d
    # The reference's separate UNet calls: the same up to float32 summation order (measured 1.5e-5 on the
    # gradient; Adam's first step, ≈ lr·sign(g), magnifies that on near-zero entries).
    d = theta_and_search_step(pipe, AP(), cfg, batched=False)
    assert d["theta_loss"] <= 1e-5 and d["theta_grad"] <= 1e-4 and d["search_grad"] <= 1e-4, d


def test_rollout_matches_the_reference_sampler(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    schedule = NoiseSchedule.from_pipe(pipe, S)
    cond, uncond = encode(pipe, "cat"), encode(pipe, "")
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    code = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    class Session:  # what AP.rollouts needs of a TrainingSession
        unet = pipe.unet

        @staticmethod
        def randn(_shape):
            return code

    for s in (48, 46):
        stop = min(S, S + 1 - s)
        z, _ = AP.rollouts(Session, schedule, pipe, cond[0], uncond[0], cond[0], stop, APConfig())
        assert rel(z, official_rollout(pipe.unet, pipe, cond, uncond, code, s)) <= 1e-5
