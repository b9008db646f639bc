"""The denoising loop for one batch of probes (same steps, size and sampler), from seeds to PIL images.

Everything that differs between model families (text conditioning, latent layout, the denoiser call, the
decode) is asked of the family object (generation/sd.py, sdxl.py, flux.py); the loop itself, the batching
into lanes and classifier-free guidance are shared. The step arithmetic is the diffusers pipeline's (same
latents, scale_model_input, CFG formula, scheduler.step arguments, VAE scaling and post-processing), so with
lanes of the pipeline's own shapes it reproduces `pipe(...)` bit for bit. Each probe draws its initial latent
(and, for stochastic samplers, its step noise) from its own `torch.Generator("cpu").manual_seed(seed)`, so its
pixels do not depend on its batch.
"""
from __future__ import annotations

import torch

from ..errors import EraseLabError
from ..guidance import Guidance
from ..probes import Probe
from .lanes import Lanes, in_lanes, probe_branches, resolved_size
from .text_cache import ZERO_TEXT, TextEmbeddings


@torch.no_grad()
def denoise_batch(pipe, probes: list[Probe], guidance: Guidance, texts: TextEmbeddings, hooks,
                  lane: Lanes) -> list:
    """Denoise one batch (same steps, size and sampler) and return PIL images in probe order."""
    family = texts.family
    first = probes[0]
    h, w = resolved_size(pipe, first)
    device = family.denoiser.device
    scheduler = family.make_scheduler(first.sampler)
    family.set_timesteps(scheduler, first.steps, h, w)

    # One generator per probe, seeded as a user seeds `pipe(generator=...)`: latents first, then step noise.
    generators = [torch.Generator("cpu").manual_seed(p.seed) for p in probes]
    latents = family.initial_latents(generators, h, w, scheduler)

    rows = [(i, branch, text) for i, p in enumerate(probes)
            for branch, text in probe_branches(guidance, p, family.classifier_free_guidance)]
    row_probe = torch.tensor([r[0] for r in rows], device=device)
    conditioning = [c.to(device) for c in texts.stack([_text_key(family, branch, text)
                                                       for _, branch, text in rows])]
    conditioning += [c.to(device) for c in family.row_inputs([probes[r[0]] for r in rows])]
    where = {(i, branch): n for n, (i, branch, _) in enumerate(rows)}
    n_extra = len(guidance.extra_prompts())
    # Probes sharing a guidance scale are combined together; plain-CFG probes at guidance <= 1 take ε_cond.
    by_scale: dict[float, list[int]] = {}
    cond_only = []
    for i, p in enumerate(probes):
        (by_scale.setdefault(float(p.guidance), []) if (i, "uncond") in where else cond_only).append(i)
    states = {g: {} for g in by_scale}
    extra_step_args = family.step_kwargs(scheduler, generators)
    call_hooks = [hk.on_unet_call for hk in hooks if hasattr(hk, "on_unet_call")]
    lane_rows = [(r[0], r[1]) for r in rows]

    for step_index, t in enumerate(scheduler.timesteps):
        model_input = family.model_input(scheduler, latents[row_probe], t)

        def before(start, stop, _step=step_index, _t=t):
            layout = [lane_rows[n] if n < len(lane_rows) else None for n in range(start, stop)]
            for call in call_hooks:
                call(_step, _t, layout)

        def denoiser(x, *cond, _t=t):
            return family.predict(x, _t, list(cond), h, w)

        eps_rows = in_lanes(denoiser, [model_input, *conditioning], lane.unet, before if call_hooks else None)
        eps = torch.empty_like(latents)
        if cond_only:
            eps[cond_only] = eps_rows[[where[(i, "cond")] for i in cond_only]]
        for g, members in by_scale.items():
            uncond = eps_rows[[where[(i, "uncond")] for i in members]]
            cond = eps_rows[[where[(i, "cond")] for i in members]]
            extra = [eps_rows[[where[(i, f"extra{j}")] for i in members]] for j in range(n_extra)]
            eps[members] = guidance.combine(uncond, cond, extra, g, step_index, states[g])
        latents = scheduler.step(eps, t, latents, **extra_step_args, return_dict=False)[0]

    bad = [i for i in range(len(probes)) if not bool(torch.isfinite(latents[i]).all())]
    if bad:
        p = probes[bad[0]]
        raise EraseLabError(f"sampling {p.prompt!r} (seed {p.seed}) at guidance {p.guidance} produced "
                            "non-finite latents (NaN/inf), which would be stored as black images; lower "
                            "--guidance (7.5 is usual) or check the edit")
    decoded = family.decode(latents, h, w, lane.vae)
    return pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True] * len(probes))


def _text_key(family, branch: str, text: str) -> str | None:
    """The text a row is conditioned on; an empty negative prompt is zeros in families that say so."""
    if branch == "uncond" and text == "" and family.zeros_for_empty_negative:
        return ZERO_TEXT
    return text
