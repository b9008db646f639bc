"""Does AP's concept-search gradient rank candidates by the damage the erasure really does to them?

Erases a concept on the miniworld model with AP's default recipe for a number of θ/π steps, then, for fresh
rollouts, compares two estimates of which candidate the edit damages most — the straight-through search
gradient ∂L/∂w_k at the sampled one-hot (L the preservation loss), with the frozen model's x̂₀* held constant
(the reference) or differentiated too (`exact_search_gradient`) — against each candidate's measured
preservation loss L(E_k) on the same rollouts (the gradient summed over uniformly drawn one-hots: π's expected
first move). Prints the Spearman rank correlation of each with the measured damage.

Run: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/ap_search_gradient.py --steps 60 --draws 16
"""
from __future__ import annotations

import argparse

import torch

from eraselab.methods.adversarial import concept_weights, mix, search_step
from eraselab.methods.ap import AP, APConfig
from eraselab.methods.base import EraseRequest
from eraselab.methods.diffusion import NoiseSchedule
from eraselab.methods.text import PromptEncoder, concept_prompt
from eraselab.methods.training import TrainingSession
from eraselab.models import load_pipeline


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="circle")
    ap.add_argument("--steps", type=int, default=60, help="θ steps before measuring (as many π steps)")
    ap.add_argument("--draws", type=int, default=16, help="rollouts the measurement averages over")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pipe = load_pipeline("miniworld")
    cfg = APConfig.build({"seed": args.seed, "iterations": args.steps}, pipe, "ap")
    method, request = AP(), EraseRequest([args.target], [], cfg, progress=False)
    session = TrainingSession(pipe, cfg.train, cfg.lr, cfg.seed)
    try:
        enc = PromptEncoder(pipe)
        pool = method.pools(pipe, enc, request, cfg, session.device)[args.target]
        cond, uncond = enc([concept_prompt(pipe, args.target)])[0], enc([""])[0]
        schedule = NoiseSchedule.from_pipe(pipe, cfg.ddim_steps)
        opt = torch.optim.Adam([pool.logits], lr=cfg.pi_lr)
        for step in range(2 * cfg.iterations):
            search = step % 2 == 1
            w = concept_weights(pool.logits if search else pool.logits.detach(), cfg.tau, "hard", 1,
                                session.generator)
            adv = mix(w.detach(), pool.embeddings)
            stop, t, t_x0 = method.sample_timesteps(schedule, session.generator, cfg)
            z, z_a = method.rollouts(session, schedule, pipe, cond, uncond, adv, stop, cfg)
            if not search:
                method.model_step(session, schedule, z, z_a, t, t_x0, cond, uncond, adv, cfg)
            else:
                search_step(pool.logits, opt, pool.embeddings,
                            lambda c: method.search_objective(session, schedule, z, z_a, t, t_x0, cond, uncond,  # noqa
                                                              cfg, c), w)
        exact = APConfig.build({**cfg.as_dict(), "exact_search_gradient": True}, pipe, "ap")
        n = len(pool.names)
        damage, grads = torch.zeros(n), {"reference": torch.zeros(n), "exact": torch.zeros(n)}
        for draw in range(args.draws):
            stop, t, t_x0 = method.sample_timesteps(schedule, session.generator, cfg)
            for k in range(n):
                onehot = torch.zeros(n)
                onehot[k] = 1.0
                adv = mix(onehot, pool.embeddings)
                g = torch.Generator().manual_seed(1000 + draw)
                session.generator, saved = g, session.generator
                z, z_a = method.rollouts(session, schedule, pipe, cond, uncond, adv, stop, cfg)
                session.generator = saved
                with torch.no_grad():
                    damage[k] += float(method.preservation(session, schedule, z_a, t, t_x0, adv, cfg))
                for name, c in (("reference", cfg), ("exact", exact)):
                    w = onehot.clone().requires_grad_(True)
                    loss = method.preservation(session, schedule, z_a, t, t_x0, mix(w, pool.embeddings), c)
                    (gw,) = torch.autograd.grad(loss, [w])
                    # The straight-through estimator evaluates ∂L/∂w at the sampled one-hot; summed over
                    # uniformly sampled k it is the expected direction π first moves in (up to the softmax).
                    grads[name] += gw
        print(f"{args.target}: {n} candidates, {cfg.iterations} θ steps, {args.draws} draws")
        order = damage.argsort(descending=True)
        print(
            "most damaged:",
            [(pool.names[int(i)], round(float(damage[i]) / args.draws, 5)) for i in order[:5]],
        )
        for name, g in grads.items():
            print(f"{name} search gradient: Spearman vs damage {spearman(g, damage):+.3f}; top pick "
                  f"{pool.names[int(g.argmax())]}")
    finally:
        session.restore()


if __name__ == "__main__":
    main()
