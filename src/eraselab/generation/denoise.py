"""The denoising loop for one batch of probes (same steps, size and sampler), from seeds to PIL images.

The step arithmetic is the diffusers Stable Diffusion pipeline's (same latents, scale_model_input, CFG
formula, scheduler.step arguments, VAE scaling and post-processing), so with lanes of the pipeline's own
shapes it reproduces `pipe(...)` bit for bit. Each probe draws its initial latent (and, for stochastic
samplers, its step noise) from its own `torch.Generator("cpu").manual_seed(seed)`, so its pixels do not depend
on its batch.
"""
from __future__ import annotations

import torch

from ..errors import EraseLabError
from ..guidance import Guidance
from ..probes import Probe
from ..samplers import make_scheduler, step_kwargs
from .lanes import Lanes, in_lanes, probe_branches, resolved_size
from .text_cache import TextEmbeddings


@torch.no_grad()
def denoise_batch(pipe, probes: list[Probe], guidance: Guidance, texts: TextEmbeddings, hooks,
                  lane: Lanes) -> list:
    """Denoise one batch (same steps, size and sampler) and return PIL images in probe order."""
    first = probes[0]
    h, w = resolved_size(pipe, first)
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    device, dtype = pipe.unet.device, pipe.text_encoder.dtype
    scheduler = make_scheduler(pipe, first.sampler)
    scheduler.set_timesteps(first.steps, device=device)

    from diffusers.utils.torch_utils import randn_tensor

    # One generator per probe, seeded as a user seeds `pipe(generator=...)`: latents first, then step noise.
    generators = [torch.Generator("cpu").manual_seed(p.seed) for p in probes]
    shape = (len(probes), pipe.unet.config.in_channels, h // scale, w // scale)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    latents = latents * scheduler.init_noise_sigma

    rows = [(i, branch, text) for i, p in enumerate(probes) for branch, text in probe_branches(guidance, p)]
    row_probe = torch.tensor([r[0] for r in rows], device=device)
    embeds = texts.stack([r[2] for r in rows]).to(device)
    where = {(i, branch): n for n, (i, branch, _) in enumerate(rows)}
    n_extra = len(guidance.extra_prompts())
    # Probes sharing a guidance scale are combined together; plain-CFG probes at guidance <= 1 take ε_cond.
    by_scale: dict[float, list[int]] = {}
    cond_only = []
    for i, p in enumerate(probes):
        (by_scale.setdefault(float(p.guidance), []) if (i, "uncond") in where else cond_only).append(i)
    states = {g: {} for g in by_scale}
    extra_step_args = step_kwargs(scheduler, generators)
    call_hooks = [hk.on_unet_call for hk in hooks if hasattr(hk, "on_unet_call")]
    lane_rows = [(r[0], r[1]) for r in rows]

    for step_index, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents[row_probe], t)

        def before(start, stop, _step=step_index, _t=t):
            layout = [lane_rows[n] if n < len(lane_rows) else None for n in range(start, stop)]
            for call in call_hooks:
                call(_step, _t, layout)

        def unet(x, e, _t=t):
            return pipe.unet(x, _t, encoder_hidden_states=e, return_dict=False)[0]

        eps_rows = in_lanes(unet, [model_input, embeds], lane.unet, before if call_hooks else None)
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
    vae_scale = pipe.vae.config.scaling_factor
    decoded = in_lanes(lambda z: pipe.vae.decode(z / vae_scale, return_dict=False)[0],
                       [latents.to(pipe.vae.dtype)], lane.vae)
    return pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True] * len(probes))
