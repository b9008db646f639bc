"""Where a concept is in a method's training images: examples of the concept with a region mask each.

MACE (methods/mace.py) restricts its attention loss to the target's region; its official code segments images
of the target with Grounded-SAM. Here the examples come from one of two sources:

- "renderer": a world that draws its own images (its Domain's renderer: the embedded miniworld) renders the
  concept and knows every object's coverage exactly; the mask is that coverage.
- "attention": any other model generates the images itself, and the mask is the thresholded cross-attention
  map of the concept's tokens recorded during that generation (averaged over layers, heads and steps),
  min-max normalised per image.

Examples are latent-space: each carries the VAE posterior's mean and standard deviation (zero for generated
latents), and its mask at any resolution (the loss resizes it to each layer's).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..domain import Domain, noun_phrase
from ..errors import EraseLabError
from .diffusion import NoiseSchedule, ddim_rollout, latent_shape
from .text import PromptEncoder


@dataclass
class Examples:
    """n training examples of one concept: latent posterior mean/std (n, C, h, w) and masks (n, 1, H, W) in
    [0, 1], or None when the loss uses every pixel (styles)."""

    mean: torch.Tensor
    std: torch.Tensor
    masks: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return len(self.mean)


def has_renderer(domain: Domain) -> bool:
    """Whether the domain's world draws its own images with exact object masks."""
    return domain.renderer is not None


def rendered_examples(pipe, domain: Domain, concept: str, n: int, seed: int) -> Examples:
    """n renders of `concept` by the domain's renderer (one object each); masks are the objects' coverage."""
    if not has_renderer(domain):
        raise EraseLabError(f"the {domain.name} domain has no renderer; use regions=attention")
    images, masks = domain.renderer(domain, concept, n, seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    vae = pipe.vae
    with torch.no_grad():
        post = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist
    scale = float(vae.config.scaling_factor)
    mask = torch.from_numpy(masks).float().unsqueeze(1)
    return Examples(post.mean.float() * scale, post.std.float() * scale, mask, "renderer")


def generated_examples(pipe, encoder: PromptEncoder, prompt: str, word: str, n: int, steps: int,
                       guidance: float, generator: torch.Generator, threshold: float | None) -> Examples:
    """n latents the model generates for `prompt` (DDIM, CFG `guidance`), with masks where the min-max
    normalised attention of `word`'s tokens is at least `threshold` (threshold None: no masks)."""
    from ..attention import AttentionRecorder
    from ..probes import Probe

    schedule = NoiseSchedule.from_pipe(pipe, steps)
    cond, uncond = encoder([prompt])[0], encoder([""])[0]
    noise = torch.randn(latent_shape(pipe, n), generator=generator).to(pipe.unet.device)
    recorder = AttentionRecorder(words=[word]) if threshold is not None else None
    probes = [Probe(prompt=prompt, seed=i, concepts=(word,)) for i in range(n)]
    if recorder is not None:
        recorder.on_batch_start(pipe, probes)
    try:
        latents = ddim_rollout(pipe.unet, schedule, noise, cond, uncond, len(schedule.timesteps), guidance)
    except BaseException:
        if recorder is not None:
            recorder.restore()
        raise
    masks = None
    if recorder is not None:
        keys = [f"example-{i}" for i in range(n)]
        recorder.on_batch_end(probes, keys)
        maps = [recorder.maps.get(k, {}).get(word) for k in keys]
        if any(m is None for m in maps):
            raise EraseLabError(
                f"{word!r} has no tokens in {prompt!r}, so no attention region could be found; "
                "name the concept as the prompt writes it"
            )
        a = torch.from_numpy(np.stack(maps)).float().unsqueeze(1)
        # Min-max normalised per image, so a flat map still yields its strongest part rather than everything.
        low, high = a.flatten(1).amin(1).view(-1, 1, 1, 1), a.flatten(1).amax(1).view(-1, 1, 1, 1)
        masks = ((a - low) / (high - low).clamp_min(1e-12) >= threshold).float()
    return Examples(latents.float(), torch.zeros_like(latents, dtype=torch.float32), masks,
                    "attention" if masks is not None else "none")


def concept_phrase(concept: str, values=()) -> str:
    """The noun phrase the domain's captions use ('a red circle'); for an empty concept the article alone."""
    return noun_phrase(concept, tuple(values)) if concept else " ".join(("a", *values)) + " "
