"""SLD against its official code: ml-research/safe-latent-diffusion@2a060e0 src/sld/sld_pipeline.py and its
diffusers port (pipelines/deprecated/stable_diffusion_safe, diffusers 0.42.1). The per-step guidance is
re-derived here in plain torch, loop by loop as the pipelines run it, and compared with eraselab's hook."""
import pytest
import torch

import eraselab
from eraselab.methods.sld import STRENGTHS, SafeLatentGuidance


def reference_steps(
    preds,
    guidance_scale,
    sld_guidance_scale,
    sld_warmup_steps,
    sld_threshold,
    sld_momentum_scale,
    sld_mom_beta,
):
    """The denoising loop's guidance of StableDiffusionPipelineSafe.__call__ for a list of per-step
    (uncond, text, safety-concept) predictions; returns the noise_pred handed to scheduler.step each step."""
    do_cfg = guidance_scale > 1.0
    enable_safety_guidance = sld_guidance_scale > 1.0 and do_cfg
    safety_momentum = None
    out = []
    for i, (uncond, text, concept) in enumerate(preds):
        if not do_cfg:  # only the prompt's branch is run
            out.append(text)
            continue
        noise_guidance = text - uncond
        if enable_safety_guidance:
            if safety_momentum is None:
                safety_momentum = torch.zeros_like(noise_guidance)
            scale = torch.clamp(torch.abs(text - concept) * sld_guidance_scale, max=1.0)
            concept_scale = torch.where(text - concept >= sld_threshold, torch.zeros_like(scale), scale)
            safety = torch.mul(concept - uncond, concept_scale) + sld_momentum_scale * safety_momentum
            safety_momentum = sld_mom_beta * safety_momentum + (1 - sld_mom_beta) * safety
            if i >= sld_warmup_steps:
                noise_guidance = noise_guidance - safety
        out.append(uncond + guidance_scale * noise_guidance)
    return out


def eraselab_steps(preds, guidance_scale, params):
    hook = SafeLatentGuidance({"concept": "circle", "params": params})
    state = {}
    return [hook.combine(u, t, [c], guidance_scale, i, state) for i, (u, t, c) in enumerate(preds)]


def predictions(steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Small differences, so that |ε_p − ε_s| · s_S falls on both sides of the clamp and the threshold.
    base = torch.randn(steps, 2, 4, 8, 8, generator=g)
    return [(base[i], base[i] + 0.05 * torch.randn(2, 4, 8, 8, generator=g),
             base[i] + 0.05 * torch.randn(2, 4, 8, 8, generator=g)) for i in range(steps)]


def as_reference_kwargs(p):
    return {"sld_guidance_scale": p["guidance_scale"], "sld_warmup_steps": p["warmup_steps"],
            "sld_threshold": p["threshold"], "sld_momentum_scale": p["momentum_scale"],
            "sld_mom_beta": p["momentum_beta"]}


@pytest.mark.parametrize("strength", list(STRENGTHS))
@pytest.mark.parametrize("guidance", [7.5, 1.5])
def test_guidance_matches_the_safe_pipeline(strength, guidance):
    preds = predictions()
    p = {**STRENGTHS[strength], "warmup_steps": min(STRENGTHS[strength]["warmup_steps"], 4)}
    ours = eraselab_steps(preds, guidance, p)
    ref = reference_steps(preds, guidance, **as_reference_kwargs(p))
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    plain = [u + guidance * (t - u) for u, t, _ in preds]
    assert any(not torch.allclose(a, b) for a, b in zip(ours, plain))  # SLD really changed the guidance


@pytest.mark.parametrize("guidance", [1.0, 0.5])
def test_no_safety_guidance_without_classifier_free_guidance(guidance):
    """At a CFG scale ≤ 1 both pipelines skip CFG and with it SLD: ε is the prompt's prediction alone.
    (eraselab used to apply SLD there: at g = 1, ε_p − γ.)"""
    preds = predictions()
    p = {**STRENGTHS["max"]}
    ours = eraselab_steps(preds, guidance, p)
    ref = reference_steps(preds, guidance, **as_reference_kwargs(p))
    for (u, t, c), a, b in zip(preds, ours, ref):
        assert torch.equal(b, t)
        assert torch.equal(a, b)


def test_sld_scale_of_one_turns_safety_guidance_off():
    preds = predictions()
    p = {**STRENGTHS["medium"], "guidance_scale": 1.0, "warmup_steps": 0}
    ours = eraselab_steps(preds, 7.5, p)
    ref = reference_steps(preds, 7.5, **as_reference_kwargs(p))
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_recipe_is_recorded(tiny_pipe_factory):
    edit = eraselab.erase(tiny_pipe_factory(0), "sld", ["circle"], progress=False)
    assert edit.extras["recipe"]["repository"] == "ml-research/safe-latent-diffusion"
    assert edit.extras["recipe"]["commit"] == "2a060e0e3f3fa46aeaa5110adfd2fcbb620dc0a5"
