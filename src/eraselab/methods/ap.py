"""AP — Adversarial Preservation (Bui et al., NeurIPS 2024): ESD-style erasure in x̂₀ space that at the same
time preserves the concept the current edit damages most, found by a Gumbel-softmax search over candidate
concepts.

Reference: tuananhbui89/Erasing-Adversarial-Preservation@7222925bc31348c00ed0896eb3148acf2d669d7d,
train_adversarial_gumbel.py (with gen_embedding_matrix.py for the candidates), run as its run_*.sh scripts do
(gumbel_lr 1e-2, temperature 2, hard, 100 centres of the 1000 closest EN3K words, lr 1e-5, 1000 iterations).

Per step, for a target c drawn at random: sample a concept c_a from that target's own logits π_c
(Gumbel-softmax), draw a DDIM index s and a timestep as the CompVis code does, roll out with the model being
trained from one shared noise conditioned on c (→ z) and on c_a (→ z_a). Even steps update θ:
    ‖x̂₀_θ(z,c) − [x̂₀*(z,a) − η(x̂₀*(z,c) − x̂₀*(z,a))]‖² + w ‖x̂₀_θ(z_a,c_a) − x̂₀*(z_a,c_a)‖²
with anchor a = ∅ (AGE replaces it); odd steps update π_c to maximise the second term, the frozen model's
x̂₀* being a constant (computed without gradient), so the search gradient flows through θ's prediction only.
x̂₀ is formed with ᾱ of DDIM timestep s counted from t = 0 (the reference's `ddim_alphas[t_enc]`), the UNet
sees a training timestep in [s·T/S, (s+1)·T/S), and the rollout has run S + 1 − s steps from t = T.
Candidates per target: vocabulary → the k closest by L2 of the full encoder output (the target itself
included) → the word nearest each of num_centers sklearn-style k-means++ centres of those similarities
(vocabulary.py).

eraselab's own options (off in every reference recipe): `exact_search_gradient` (differentiate the frozen
model's prediction in c_a too), `in_bin_timestep` (train at a timestep of the rolled-out latent's own noise
level and form x̂₀ with it), `exclude_targets` (drop the targets and their synonyms in the concept
domain from the candidates). Concepts passed as `preserve` are added to every target's candidates (the
reference has no such input).
"""
from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .adversarial import concept_weights, mix, ranking, search_step
from .base import (
    NON_NEGATIVE,
    POSITIVE,
    Eraser,
    EraseRequest,
    MethodConfig,
    OneOf,
    Recipe,
    Reference,
    setting,
)
from .diffusion import NoiseSchedule, _bcast, ddim_rollout, latent_shape
from .registry import register
from .text import PromptEncoder, concept_prompt
from .training import TrainingSession, loss_summary, progress_bar
from .vocabulary import candidate_concepts, load_vocabulary

AP_REFERENCE = Reference("tuananhbui89/Erasing-Adversarial-Preservation",
                         "7222925bc31348c00ed0896eb3148acf2d669d7d", "train_adversarial_gumbel.py")


@dataclass
class APConfig(MethodConfig):
    iterations: int = setting(1000, "θ updates (as many π updates alternate with them)", POSITIVE)
    lr: float = setting(1e-5, "Adam learning rate of θ", POSITIVE)
    pi_lr: float = setting(1e-2, "Adam learning rate of the logits π", POSITIVE)
    tau: float = setting(2.0, "Gumbel-softmax temperature", POSITIVE)
    negative_guidance: float = setting(1.0, "η of the erase term (paper convention, as ESD)")
    preserve_weight: float = setting(1.0, "weight of the preservation term", NON_NEGATIVE)
    ddim_steps: int = setting(50, "DDIM steps of the partial rollout's sampler", POSITIVE)
    rollout_guidance: float = setting(3.0, "CFG scale of the partial rollout")
    vocabulary: str = setting("auto", "auto (the domain's: miniworld's words or en3k), concepts (the "
                              "domain's concept names), en3k, clip, imagenet, miniworld or a file")
    k_closest: int = setting(1000, "vocabulary words kept by L2 distance to the target", POSITIVE)
    num_centers: int = setting(100, "k-means++ centres = candidates per target; ≤ 0 or ≥ k_closest: no "
                               "k-means, the k_closest words themselves")
    ignore_special_tokens: bool = setting(
        True, "skip vocabulary words with characters outside a-z (spaces, hyphens, digits), as the "
        "reference does")
    kmeans_runs: int = setting(1, "k-means++ restarts (sklearn's n_init: 1 in sklearn ≥ 1.4, 10 before)",
                               POSITIVE)
    train: str = setting("x", "parameters: x (cross-attention: objects, artists) or u (the rest: nudity)",
                         OneOf(("x", "u")))
    exact_search_gradient: bool = setting(
        False, "eraselab option: the π search also differentiates the frozen model's prediction "
        "(reference: θ's only)")
    in_bin_timestep: bool = setting(False, "eraselab option: train at a timestep of the rolled-out "
                                    "latent's own noise level (reference: CompVis pairing, ~2 DDIM steps "
                                    "off)")
    exclude_targets: bool = setting(False, "eraselab option: drop the targets (and their synonyms in the "
                                    "domain) from the candidates (reference: the target stays a candidate)")

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe("official", AP_REFERENCE,
               "AP as in its run scripts: per-target candidates (1000 closest words, 100 k-means++ centres, "
               "target kept), hard Gumbel-softmax τ 2, π lr 1e-2, search gradient through θ only"),
    )
    # The preservation term pulls against the erasure, so AP needs a larger step than ESD-x on miniworld. The
    # one setting beyond scale: the reference's CompVis timestep pairing does not erase on miniworld's 20-step
    # schedule, and more steps or a finer schedule make it worse (benchmarks/RESULTS.md, effect on miniworld),
    # so the preset trains at the rolled-out latent's own timestep (eraselab's in_bin_timestep option).
    miniworld: ClassVar[dict] = {"iterations": 150, "lr": 2e-4, "ddim_steps": 20, "num_centers": 20,
                                 "in_bin_timestep": True}


@dataclass
class Pool:
    """One target's candidate concepts, their encodings (n, tokens, d) and its logits π."""

    names: list[str]
    embeddings: torch.Tensor
    distances: list[float]
    logits: torch.Tensor


@register
class AP(Eraser):
    name = "ap"
    description = (
        "adversarial preservation: ESD-like x̂₀ erasure preserving the most damaged candidate concept"
    )
    Config = APConfig

    # ---- what AGE changes ----------------------------------------------------------------------------------
    def search_mode(self, cfg) -> tuple[str, int]:
        return "hard", 1

    def anchor(self, uncond: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
        """The erase term's anchor: ∅ for AP."""
        return uncond

    def preserve_weight(self, cfg) -> float:
        return cfg.preserve_weight

    # ---- the loop ------------------------------------------------------------------------------------------
    def erase(self, pipe, request: EraseRequest):
        cfg = request.config
        session = TrainingSession(pipe, cfg.train, cfg.lr, cfg.seed)
        try:
            encode = PromptEncoder(pipe)
            scan_started = time.perf_counter()
            pools = self.pools(pipe, encode, request, cfg, session.device)
            scan_seconds = round(time.perf_counter() - scan_started, 3)
            conds = dict(zip(request.targets, encode([concept_prompt(pipe, t) for t in request.targets])))
            uncond = encode([""])[0]
            pi_optimizer = torch.optim.Adam([p.logits for p in pools.values()], lr=cfg.pi_lr)
            schedule = NoiseSchedule.from_pipe(pipe, cfg.ddim_steps)
            mode, top_k = self.search_mode(cfg)
            picks, search_losses = Counter(), []
            with progress_bar(2 * cfg.iterations, self.name, request.progress) as advance:
                for step in range(2 * cfg.iterations):
                    target = session.choice(request.targets)
                    cond, pool = conds[target], pools[target]
                    # One concept sample per step, used for the rollout and the loss alike; differentiable in
                    # π on search steps.
                    search = step % 2 == 1
                    weights = concept_weights(pool.logits if search else pool.logits.detach(), cfg.tau, mode,
                                              top_k, session.generator)
                    adv = mix(weights.detach(), pool.embeddings)
                    stop, t, t_x0 = self.sample_timesteps(schedule, session.generator, cfg)
                    z, z_a = self.rollouts(session, schedule, pipe, cond, uncond, adv, stop, cfg)
                    if not search:
                        advance(self.model_step(session, schedule, z, z_a, t, t_x0, cond, uncond, adv, cfg))
                        continue
                    loss_fn = functools.partial(
                        self.search_objective, session, schedule, z, z_a, t, t_x0, cond, uncond, cfg
                    )
                    pick, value = search_step(pool.logits, pi_optimizer, pool.embeddings, loss_fn, weights)
                    picks[f"{target}: {pool.names[pick]}" if len(pools) > 1 else pool.names[pick]] += 1
                    search_losses.append(value)
                    advance(value)
        except BaseException:
            session.restore()
            raise
        extras = {"parameter_group": cfg.train, "candidate_search_seconds": scan_seconds,
                  "candidates": [{"target": t, "concept": n, "distance": round(d, 4)}
                                 for t, p in pools.items() for n, d in zip(p.names, p.distances)],
                  "adversarial_concepts": [{"target": t, **r} for t, p in pools.items()
                                           for r in ranking(p.logits, p.names)],
                  "adversarial_picks": dict(picks.most_common()),
                  "search_loss_curve": loss_summary(search_losses).get("loss_curve", [])}
        return session.finish(self.name, cfg.as_dict(), request.targets, request.preserve, extras=extras)

    def pools(self, pipe, encode, request, cfg, device) -> dict[str, Pool]:
        """Each target's own candidate set (the reference keeps one set and one π per erased word)."""
        domain = request.domain_for(pipe)
        words = load_vocabulary(cfg.vocabulary, pipe, domain)
        exclude = []
        if cfg.exclude_targets:
            h = domain.hierarchy
            exclude = list(request.targets) + [n for t in request.targets if t in h for n in h.names(t)]
        pools = {}
        for target in request.targets:
            names, emb, dist = candidate_concepts(encode, target, words, cfg.k_closest, cfg.num_centers,
                                                  cfg.ignore_special_tokens, cfg.kmeans_runs, exclude=exclude)
            extra = [p for p in request.preserve if p not in names]
            if extra:
                names, emb = names + extra, torch.cat([emb, encode(extra)])
                dist = dist + [float("nan")] * len(extra)
            # Uniform start, as the reference's 1/n (the softmax does not see the constant).
            logits = torch.zeros(len(names), device=device, requires_grad=True)
            pools[target] = Pool(names, emb, dist, logits)
        return pools

    # ---- one step's pieces ---------------------------------------------------------------------------------
    @staticmethod
    def sample_timesteps(schedule: NoiseSchedule, generator: torch.Generator, cfg) -> tuple[int, int, int]:
        """(DDIM steps to roll out, the UNet's training timestep, the timestep whose ᾱ forms x̂₀).

        Reference pairing: s uniform in [0, S); the CompVis sampler's `till_T=s` stops after S + 1 − s steps
        from t = T (all S for s ≤ 1); the UNet gets t ~ U[round(s·T/S), round((s+1)·T/S)); x̂₀ uses ᾱ of the
        s-th DDIM timestep counted from t = 0. in_bin_timestep: the rolled-out latent's own bin and its t."""
        if cfg.in_bin_timestep:
            stop, t = schedule.sample_step_and_timestep(generator)
            return stop, t, t
        s, stop, t = schedule.compvis_draw(generator)
        return stop, t, int(schedule.timesteps.flip(0)[s])

    @staticmethod
    def rollouts(session, schedule, pipe, cond, uncond, adv, stop, cfg):
        """z (conditioned on c) and z_a (on c_a) from one shared noise, in one batched rollout with θ."""
        noise = session.randn(latent_shape(pipe)).expand(2, -1, -1, -1)
        z = ddim_rollout(session.unet, schedule, noise, torch.stack([cond, adv.detach()]), uncond, stop,
                         cfg.rollout_guidance)
        return z[:1], z[1:]

    @staticmethod
    def x0(schedule: NoiseSchedule, out: torch.Tensor, z: torch.Tensor, t, t_x0) -> torch.Tensor:
        """x̂₀ = (z − √(1−ᾱ) ε) / √ᾱ with ε from the prediction at timestep t and ᾱ of timestep t_x0."""
        a = _bcast(schedule.alpha(t_x0), z)
        return (z - (1 - a).sqrt() * schedule.to_eps(out, z, t)) / a.sqrt()

    def model_step(self, session, schedule, z, z_a, t, t_x0, cond, uncond, adv, cfg) -> float:
        anchor = self.anchor(uncond, adv.detach())
        with torch.no_grad():
            frozen = session.frozen_out(torch.cat([z, z, z_a]), t, torch.stack([anchor, cond, adv]))
            x0_anchor, x0_cond, x0_adv = self.x0(schedule, frozen, torch.cat([z, z, z_a]), t, t_x0).chunk(3)
        target = x0_anchor - cfg.negative_guidance * (x0_cond - x0_anchor)
        pred = session.trained_out(torch.cat([z, z_a]), t, torch.stack([cond, adv]))
        x0_pred, x0_pred_adv = self.x0(schedule, pred, torch.cat([z, z_a]), t, t_x0).chunk(2)
        loss = F.mse_loss(x0_pred, target) + self.preserve_weight(cfg) * F.mse_loss(x0_pred_adv, x0_adv)
        return session.step(loss)

    def search_objective(self, session, schedule, z, z_a, t, t_x0, cond, uncond, cfg, adv) -> torch.Tensor:
        """What π ascends, differentiable in c_a: AP's preservation loss (AGE adds its constant erase
        term)."""
        return self.preserve_weight(cfg) * self.preservation(session, schedule, z_a, t, t_x0, adv, cfg)

    def preservation(self, session, schedule, z_a, t, t_x0, adv, cfg) -> torch.Tensor:
        """‖x̂₀_θ(z_a, c_a) − x̂₀*(z_a, c_a)‖²; x̂₀* is a constant unless exact_search_gradient."""
        trained = session.trained_out(z_a, t, adv)
        if cfg.exact_search_gradient:
            frozen = session.frozen_out(z_a, t, adv)
        else:
            with torch.no_grad():
                frozen = session.frozen_out(z_a, t, adv)
        return F.mse_loss(self.x0(schedule, trained, z_a, t, t_x0), self.x0(schedule, frozen, z_a, t, t_x0))
