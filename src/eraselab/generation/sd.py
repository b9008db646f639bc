"""The SD 1.x/2.x family's part of generation: one CLIP text encoder, a UNet conditioned on its last hidden
state, a VAE. The denoising loop (denoise.py) calls a family object for everything that differs between model
families; this class is that object for SD and the base the SDXL family extends.

Every method mirrors the diffusers StableDiffusionPipeline's arithmetic (encode_prompt, prepare_latents, the
UNet call, the VAE decode), so the engine reproduces `pipe(...)` bit for bit with lanes of its shapes. SD 2.x
needs nothing else: its v-prediction lives in the scheduler config, its OpenCLIP text encoder is a
CLIPTextModel whose last layer already is OpenCLIP's penultimate one.
"""
from __future__ import annotations

import torch

from ..samplers import make_scheduler, sampler_config, step_kwargs
from .lanes import TEXT_LANE, in_lanes


class SDFamily:
    name = "sd"

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    def key_settings(self) -> dict:
        """Settings besides weights, scheduler and size that decide the pixels (they enter the image key)."""
        return {}

    # Whether probes run classifier-free guidance branches (unconditional / negative, hook extras).
    classifier_free_guidance = True

    @property
    def zeros_for_empty_negative(self) -> bool:
        """Whether an empty negative prompt is all-zero conditioning instead of the encoding of ""."""
        return False

    # text
    # ----------------------------------------------------------------------------------------------------
    def _tokens(self, tokenizer, texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        """The conditioning tensors of each text, stacked over texts (text encoders run in fixed lanes)."""
        encoder = self.pipe.text_encoder
        tok = self._tokens(self.pipe.tokenizer, texts)
        ids, mask = tok.input_ids.to(encoder.device), tok.attention_mask.to(encoder.device)
        use_mask = bool(getattr(encoder.config, "use_attention_mask", False))

        def run(ids_chunk, mask_chunk):
            return encoder(ids_chunk, attention_mask=mask_chunk if use_mask else None)[0]

        return [in_lanes(run, [ids, mask], TEXT_LANE).to(encoder.dtype)]

    def check_request(self, guidance, probes: list) -> None:
        """Refuse, before any work, a request this family cannot carry out (every one, for SD)."""

    def row_inputs(self, probes: list) -> list[torch.Tensor]:
        """Per-row tensors besides text that the denoiser needs (one entry per row's probe)."""
        return []

    # sampler
    # -------------------------------------------------------------------------------------------------
    def make_scheduler(self, name: str):
        return make_scheduler(self.pipe, name)

    def sampler_config(self, name: str) -> dict:
        return sampler_config(self.pipe, name)

    def step_kwargs(self, scheduler, generators: list) -> dict:
        return step_kwargs(scheduler, generators)

    # latents and steps
    # ---------------------------------------------------------------------------------------
    def initial_latents(self, generators: list, height: int, width: int, scheduler) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        shape = (len(generators), self.denoiser.config.in_channels, height // scale, width // scale)
        latents = randn_tensor(shape, generator=generators, device=self.denoiser.device, dtype=self.dtype)
        return latents * scheduler.init_noise_sigma

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.text_encoder.dtype

    def set_timesteps(self, scheduler, steps: int, height: int, width: int) -> None:
        scheduler.set_timesteps(steps, device=self.denoiser.device)

    def model_input(self, scheduler, latents: torch.Tensor, t) -> torch.Tensor:
        return scheduler.scale_model_input(latents, t)

    def predict(self, x: torch.Tensor, t, conditioning: list[torch.Tensor], height: int,
                width: int) -> torch.Tensor:
        """The denoiser's output for rows `x` at timestep `t`, each row with its own conditioning."""
        return self.pipe.unet(x, t, encoder_hidden_states=conditioning[0], return_dict=False)[0]

    # pixels
    # --------------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, height: int, width: int, lane: int) -> torch.Tensor:
        vae = self.pipe.vae
        return in_lanes(lambda z: vae.decode(z / vae.config.scaling_factor, return_dict=False)[0],
                        [latents.to(vae.dtype)], lane)
