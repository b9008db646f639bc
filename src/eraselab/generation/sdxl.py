"""The SDXL family's part of generation: two CLIP text encoders, pooled text and added time ids.

As in diffusers' StableDiffusionXLPipeline (txt2img, no refiner): each text goes through both encoders, the
penultimate hidden states are concatenated along the feature axis, the second encoder's projected pooled
output is the "text_embeds" added condition, and the "time_ids" are (original size, crop top-left, target
size) = (h, w, 0, 0, h, w) for every row. An empty negative prompt is all-zero conditioning when the
pipeline's force_zeros_for_empty_prompt is set (SDXL base sets it), as `pipe(prompt)` does without a negative
prompt. The VAE decodes in float32 when the pipeline runs in float16 and the VAE config asks to be upcast.
"""
from __future__ import annotations

import torch

from .lanes import TEXT_LANE, in_lanes
from .sd import SDFamily


class SDXLFamily(SDFamily):
    name = "sdxl"

    def key_settings(self) -> dict:
        return {"family": self.name,
                "text": "penultimate hidden states of both encoders + pooled of the second",
                "time_ids": "(h, w, 0, 0, h, w)", "zeros_for_empty_negative": self.zeros_for_empty_negative,
                "vae_upcast": self._vae_upcast}

    @property
    def zeros_for_empty_negative(self) -> bool:
        return bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.text_encoder_2.dtype

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.pipe.tokenizer, self.pipe.text_encoder),
                                   (self.pipe.tokenizer_2, self.pipe.text_encoder_2)):
            ids = self._tokens(tokenizer, texts).input_ids.to(encoder.device)

            def run(ids_chunk, _encoder=encoder):
                out = _encoder(ids_chunk, output_hidden_states=True)
                return torch.cat([out.hidden_states[-2].flatten(1), out[0].flatten(1)], dim=1)

            # Both outputs travel as one tensor through the lanes, split again below.
            flat = in_lanes(run, [ids], TEXT_LANE)
            seq = ids.shape[1] * encoder.config.hidden_size
            hidden.append(flat[:, :seq].reshape(len(texts), ids.shape[1], -1))
            pooled = flat[:, seq:]
        dtype = self.pipe.text_encoder_2.dtype
        return [torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype)]

    def predict(self, x: torch.Tensor, t, conditioning: list[torch.Tensor], height: int,
                width: int) -> torch.Tensor:
        embeds, pooled = conditioning
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype,
                                device=x.device).repeat(x.shape[0], 1)
        return self.pipe.unet(x, t, encoder_hidden_states=embeds, timestep_cond=None,
                              added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                              return_dict=False)[0]

    @property
    def _vae_upcast(self) -> bool:
        vae = self.pipe.vae
        return vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))

    def decode(self, latents: torch.Tensor, height: int, width: int, lane: int) -> torch.Tensor:
        vae, config = self.pipe.vae, self.pipe.vae.config
        upcast = self._vae_upcast
        if upcast:
            vae.to(torch.float32)
        try:
            z = latents.to(vae.dtype)
            if config.get("latents_mean") is not None and config.get("latents_std") is not None:
                mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(z.device, z.dtype)
                std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(z.device, z.dtype)
                z = z * std / config.scaling_factor + mean
            else:
                z = z / config.scaling_factor
            return in_lanes(lambda chunk: vae.decode(chunk, return_dict=False)[0], [z], lane)
        finally:
            if upcast:
                vae.to(torch.float16)
