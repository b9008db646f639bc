"""The Flux family's part of generation: an MMDiT transformer on packed latents, T5 + pooled CLIP text, a
flow-matching Euler scheduler with resolution-dependent shift, and a guidance embedding (-dev; none in
-schnell).

As in diffusers' FluxPipeline with its defaults: the prompt goes through CLIP (pooled output) and through T5
(last hidden state, padded to 512 tokens); latents are drawn as (C, h/8, w/8) and packed into 2×2 patches;
sigmas are linspace(1, 1/steps, steps), shifted by mu from the image's token count when the scheduler config
asks for dynamic shifting; each probe's `guidance` is the distilled guidance the transformer embeds (-dev),
and there is no classifier-free guidance branch (the pipeline's true_cfg_scale is 1 by default), so a probe's
negative prompt and CFG-based erasure hooks have nothing to act on. Flow matching has one sampler, Euler; the
deterministic DDIM update is the same step on a flow-matching ODE, so "ddim" (the probes' default) is taken as
it, and other sampler names are refused.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import EraseLabError, warn_once
from ..guidance import Guidance
from .lanes import TEXT_LANE, in_lanes
from .sd import SDFamily

T5_TOKENS = 512  # FluxPipeline's max_sequence_length default
FLOW_SAMPLERS = ("euler", "ddim")


class FluxFamily(SDFamily):
    name = "flux"
    classifier_free_guidance = False

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.text_encoder_2.dtype  # the pipeline draws latents in the T5 states' dtype

    def key_settings(self) -> dict:
        return {"family": self.name, "t5_tokens": T5_TOKENS,
                "guidance_embeds": bool(self.denoiser.config.get("guidance_embeds", False)),
                "sigmas": "linspace(1, 1/steps, steps), dynamic shift from the image's token count"}

    def check_request(self, guidance: Guidance, probes) -> None:
        """Refuse what cannot act on Flux before any work; warn once about settings it ignores."""
        if type(guidance) is not Guidance:
            raise EraseLabError(f"the {guidance.kind} guidance of this edit needs classifier-free guidance "
                                "branches, which Flux pipelines do not run; erase with a weight-editing "
                                "method")
        if any(p.negative_prompt for p in probes):
            warn_once("Flux runs no unconditional branch: the probes' negative prompts are ignored")

    # text
    # ----------------------------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        clip, t5 = self.pipe.text_encoder, self.pipe.text_encoder_2
        clip_ids = self._tokens(self.pipe.tokenizer, texts).input_ids.to(clip.device)
        pooled = in_lanes(lambda ids: clip(ids, output_hidden_states=False).pooler_output, [clip_ids],
                          TEXT_LANE)
        t5_ids = self.pipe.tokenizer_2(texts, padding="max_length", max_length=T5_TOKENS, truncation=True,
                                       return_tensors="pt").input_ids.to(t5.device)
        states = in_lanes(lambda ids: t5(ids, output_hidden_states=False)[0], [t5_ids], TEXT_LANE)
        return [states.to(t5.dtype), pooled.to(clip.dtype)]

    def row_inputs(self, probes: list) -> list[torch.Tensor]:
        return [torch.tensor([float(p.guidance) for p in probes], dtype=torch.float32)]

    # sampler
    # -------------------------------------------------------------------------------------------------
    def make_scheduler(self, name: str):
        if name not in FLOW_SAMPLERS:
            raise EraseLabError(f"sampler {name!r} does not apply to flow-matching Flux pipelines; pass "
                                "--sampler euler (ddim is the same update for flow matching)")
        return type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)

    def sampler_config(self, name: str) -> dict:
        scheduler = self.make_scheduler(name)
        config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
        return {"sampler": "flow-euler", "class": type(scheduler).__name__, "config": config}

    def step_kwargs(self, scheduler, generators: list) -> dict:
        return {}

    # latents and steps
    # ---------------------------------------------------------------------------------------
    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        scale = int(self.pipe.vae_scale_factor)
        return 2 * (int(height) // (scale * 2)), 2 * (int(width) // (scale * 2))

    def initial_latents(self, generators: list, height: int, width: int, scheduler) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        h, w = self._latent_hw(height, width)
        channels = self.denoiser.config.in_channels // 4
        latents = randn_tensor((len(generators), channels, h, w), generator=generators,
                               device=self.denoiser.device, dtype=self.dtype)
        return self.pipe._pack_latents(latents, len(generators), channels, h, w)

    def set_timesteps(self, scheduler, steps: int, height: int, width: int) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        h, w = self._latent_hw(height, width)
        config = scheduler.config
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift((h // 2) * (w // 2), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        scheduler.set_timesteps(steps, device=self.denoiser.device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)

    def model_input(self, scheduler, latents: torch.Tensor, t) -> torch.Tensor:
        return latents

    def predict(self, x: torch.Tensor, t, conditioning: list[torch.Tensor], height: int,
                width: int) -> torch.Tensor:
        states, pooled, guidance = conditioning
        h, w = self._latent_hw(height, width)
        image_ids = self.pipe._prepare_latent_image_ids(x.shape[0], h // 2, w // 2, x.device, states.dtype)
        text_ids = torch.zeros(states.shape[1], 3, device=x.device, dtype=states.dtype)
        timestep = t.expand(x.shape[0]).to(x.dtype)
        embedded = guidance if self.denoiser.config.get("guidance_embeds", False) else None
        return self.denoiser(hidden_states=x, timestep=timestep / 1000, guidance=embedded,
                             pooled_projections=pooled, encoder_hidden_states=states, txt_ids=text_ids,
                             img_ids=image_ids, return_dict=False)[0]

    # pixels
    # --------------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, height: int, width: int, lane: int) -> torch.Tensor:
        vae = self.pipe.vae
        z = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        return in_lanes(lambda chunk: vae.decode(chunk, return_dict=False)[0], [z.to(vae.dtype)], lane)
