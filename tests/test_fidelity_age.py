"""AGE's recipes against its official code, re-derived in plain torch from
tuananhbui89/Adaptive-Guided-Erasure@b56a903932fa9921fefc1a1e4c8585e37a8698bb, train_age.py: the anchor is the
sampled concept (detached), the θ loss weighs preservation by λ, and the π step ascends the erase term
(constant in π) plus λ times the preservation term, with the frozen predictions computed without gradient. The
reference procedure itself lives in test_fidelity_ap.py (`Official`, the two scripts share it)."""
from test_fidelity_ap import theta_and_search_step

import eraselab.methods  # noqa: F401  (registers the methods)
from eraselab.methods.age import AGE, AGEConfig


def test_published_recipe_defaults():
    cfg = AGEConfig.build({})
    assert (cfg.recipe, cfg.tau, cfg.mode, cfg.k_closest, cfg.num_centers, cfg.target_weight) == \
        ("published", 0.1, "hard", 100, 100, 1.0)
    assert not cfg.exact_search_gradient and not cfg.in_bin_timestep and not cfg.exclude_targets


def test_theta_and_search_steps_match_the_reference(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0, sd1_shapes=True)
    # λ ≠ 1 so that its place in both losses is checked; hard mode (published) and top-k (script defaults).
    for recipe, mode, top_k, tau in [("published", "hard", 2, 0.1), ("script-defaults", "topk", 2, 2.0)]:
        cfg = AGEConfig.build(
            {"recipe": recipe, "lr": 1e-3, "target_weight": 0.7, "mode": mode, "top_k": top_k, "preset": "sd"}
        )
        assert cfg.tau == tau
        d = theta_and_search_step(pipe, AGE(), cfg, mode=mode, top_k=top_k, age=True, lam=0.7, exact_too=True)
        print(recipe, {k: f"{v:.2e}" for k, v in d.items()})
        for key in (
            "theta_loss",
            "theta_grad",
            "theta_update",
            "search_loss",
            "search_grad",
            "search_update",
        ):
            assert d[key] <= 1e-5, (recipe, key, d[key])
        assert d["exact_vs_reference_grad"] > 1e-2, d
