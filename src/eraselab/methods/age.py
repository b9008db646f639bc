"""AGE — Adaptive Guided Erasure (Bui et al., follow-up of AP): the concept found by AP's search is also the
erasure's anchor — the erase term guides away from the target relative to c_t instead of ∅,
    ‖x̂₀_θ(z,c) − [x̂₀*(z,c_t) − η(x̂₀*(z,c) − x̂₀*(z,c_t))]‖² + λ ‖x̂₀_θ(z_t,c_t) − x̂₀*(z_t,c_t)‖²,
so the target is steered towards a concept that is then kept intact. The search step ascends the same two
terms (without η's guidance target: ‖x̂₀_θ(z,c) − x̂₀*(z,c_t)‖² + λ ‖…‖²) with every frozen prediction and the
anchor held constant, so its gradient is λ times the preservation term's through θ's prediction. c_t is a hard
one-hot choice or (mode topk) a renormalised top-k mixture of candidates.

Reference: tuananhbui89/Adaptive-Guided-Erasure@b56a903932fa9921fefc1a1e4c8585e37a8698bb, train_age.py, with
the settings of its published runs (scripts/imagenette/erase_imagenette.sh): hard Gumbel-softmax at τ 0.1
(its --gumbel_topk 2 is inert in hard mode), the 100 closest words with 100 centres (so no k-means), λ 1,
special tokens kept, π lr 1e-2, lr 1e-5. Those runs use an ImageNet class-name vocabulary that the repository
does not ship for SD 1.4; eraselab's default vocabulary stands in (`vocabulary=imagenet` for its own list).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .adversarial import MODES
from .ap import AP, APConfig
from .base import NON_NEGATIVE, POSITIVE, OneOf, Recipe, Reference, setting
from .registry import register

AGE_REFERENCE = Reference("tuananhbui89/Adaptive-Guided-Erasure", "b56a903932fa9921fefc1a1e4c8585e37a8698bb",
                          "train_age.py")


@dataclass
class AGEConfig(APConfig):
    tau: float = 0.1
    k_closest: int = 100
    num_centers: int = 100
    ignore_special_tokens: bool = False
    mode: str = setting("hard", "hard (one-hot concept) or topk (renormalised mixture of the top_k)",
                        OneOf(MODES))
    top_k: int = setting(2, "candidates mixed in topk mode", POSITIVE)
    target_weight: float = setting(1.0, "λ, weight of preserving the found target concept", NON_NEGATIVE)

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe(
            "published",
            AGE_REFERENCE,
            (
                "AGE as in its published runs: hard Gumbel-softmax τ 0.1, the 100 closest words without "
                "k-means, λ 1, π lr 1e-2, search gradient through θ only"
            ),
        ),
        Recipe(
            "script-defaults",
            AGE_REFERENCE,
            (
                "train_age.py's own argument defaults: soft top-5 mixture, τ 2, k-means++ to 100 of the 1000 "
                "closest words without special tokens, π lr 1e-3"
            ),
            {
                "tau": 2.0,
                "mode": "topk",
                "top_k": 5,
                "k_closest": 1000,
                "num_centers": 100,
                "ignore_special_tokens": True,
                "pi_lr": 1e-3,
            },
        ),
    )
    # Preserving the searched concept as well as the neighbours pulls harder against the erasure than in AP.
    # AGE erases on miniworld with the reference's timestep pairing (unlike AP): only the step size changes.
    miniworld: ClassVar[dict] = {**APConfig.miniworld, "lr": 4e-4, "in_bin_timestep": False}


@register
class AGE(AP):
    name = "age"
    description = "adaptive guided erasure: steer the target towards the searched concept, which is preserved"
    Config = AGEConfig

    def search_mode(self, cfg):
        return cfg.mode, cfg.top_k

    def anchor(self, uncond, concept):
        return concept

    def preserve_weight(self, cfg) -> float:
        return cfg.target_weight

    def search_objective(self, session, schedule, z, z_a, t, t_x0, cond, uncond, cfg, adv) -> torch.Tensor:
        # The erase part's value: θ on the target against the frozen model at the (detached) sampled concept;
        # constant in π, as in the reference.
        with torch.no_grad():
            erase = F.mse_loss(self.x0(schedule, session.trained_out(z, t, cond), z, t, t_x0),
                               self.x0(schedule, session.frozen_out(z, t, adv.detach()), z, t, t_x0))
        return erase + super().search_objective(session, schedule, z, z_a, t, t_x0, cond, uncond, cfg, adv)
