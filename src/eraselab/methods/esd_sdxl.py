"""ESD's training step on SDXL, as rohitgandikota/erasing@25613d27892326e0c7770f7f3555bea4be150089,
esd_sdxl.py with utils/sdxl_utils.py (`esd_sdxl_call`): recipe "sdxl" of methods/esd.py, for esd-x and
esd-x-strict.

One step, as the script's loop:
- draw run_till ~ U{0..S−1} (S = 50 sampler steps) and fresh noise (1024 px: 128×128 latents);
- roll out run_till steps of the pipeline's own scheduler (Euler on SDXL base) with the frozen UNet and CFG
  scale 2: `pipe(concept)` without a negative prompt, so its unconditional branch is all-zero text and pooled
  embeddings (SDXL's force_zeros_for_empty_prompt), with time ids (h, w, 0, 0, h, w);
- at t = timesteps[run_till], on that latent as it is (the script does not apply the scheduler's
  scale_model_input here), the frozen model's ε*(c) and ε*(∅), where ∅ is now the encoded "" (the script
  encodes it as an explicit negative prompt), each with its own pooled embedding and the same time ids;
- regress ε_θ(x_t, c) onto ε*(c) − η′ (ε*(c) − ε*(∅)) with η′ = 1 (MSE; Adam at 2e-4, 200 iterations), which
  is the paper's η = 0: the target is ε*(∅).

Text: SDXL's conditioning as encode_prompt builds it (methods/text.py SDXLPromptEncoder). Precision: bfloat16,
as the script (its text encoders and UNets), set by the recipe's `train_dtype`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import EraseLabError
from .diffusion import latent_shape
from .text import SDXLPromptEncoder, concept_prompt


@dataclass
class SDXLText:
    """One text's SDXL conditioning: hidden states (tokens, width) and the pooled embedding (pooled_dim,)."""

    embeds: torch.Tensor
    pooled: torch.Tensor


def check_sdxl_config(cfg) -> None:
    """The SDXL step is esd_sdxl.py's: the pipeline's scheduler, trained at the rollout's own timestep."""
    if cfg.rollout_sampler != "pipeline" or cfg.timestep_pairing != "exact":
        raise EraseLabError("on SDXL, ESD rolls out with the pipeline's scheduler and trains at the "
                            "rollout's timestep, as esd_sdxl.py (rollout_sampler=pipeline, "
                            "timestep_pairing=exact); drop those keys or the recipe key")


class SDXLSteps:
    """The texts, time ids and scheduler of an ESD run on an SDXL pipeline, and its training step."""

    def __init__(self, pipe, targets: list[str], cfg):
        from ..models import default_image_size
        from .esd import TRAIN_DTYPES, encoding_in

        self.dtype = TRAIN_DTYPES[cfg.train_dtype]
        encoder = encoding_in(SDXLPromptEncoder(pipe), self.dtype)
        prompts = [concept_prompt(pipe, t) for t in targets] + [""]
        embeds, pooled = encoder(prompts), encoder.pooled(prompts)
        self.conds = {t: SDXLText(embeds[i], pooled[i]) for i, t in enumerate(targets)}
        self.null = SDXLText(embeds[-1], pooled[-1])
        zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", False))
        self.rollout_null = (SDXLText(torch.zeros_like(self.null.embeds), torch.zeros_like(self.null.pooled))
                             if zeros else self.null)
        side = int(cfg.image_size) or default_image_size(pipe)
        self.shape = latent_shape(pipe, 1, side)
        self.time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32,
                                     device=embeds.device)
        self.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(cfg.ddim_steps)

    def added(self, *texts: SDXLText) -> dict:
        """added_cond_kwargs for a batch with one row per text, in the training dtype."""
        return {"text_embeds": torch.stack([x.pooled for x in texts]).to(self.dtype),
                "time_ids": self.time_ids.repeat(len(texts), 1).to(self.dtype)}

    def iteration(self, session, target: str, cfg) -> float:
        from .esd import recipe_target

        cond = self.conds[target]
        stop = int(torch.randint(cfg.ddim_steps, (1,), generator=session.generator))
        t = self.scheduler.timesteps[stop]
        z = self.rollout(session, session.randn(self.shape), cond, stop, cfg)
        with torch.no_grad():
            both = torch.stack([self.null.embeds, cond.embeds])
            added = self.added(self.null, cond)
            out_u, out_c = session.frozen_out(torch.cat([z, z]), t, both, added).chunk(2)
        goal = recipe_target(out_u, out_c, cfg)
        if not cfg.anchor_unconditional:
            return session.step(F.mse_loss(session.trained_out(z, t, cond.embeds, self.added(cond)), goal))
        both = torch.stack([cond.embeds, self.null.embeds])
        pred_c, pred_u = session.trained_out(torch.cat([z, z]), t, both, self.added(cond, self.null)).chunk(2)
        return session.step(F.mse_loss(pred_c, goal) + cfg.anchor_unconditional * F.mse_loss(pred_u, out_u))

    @torch.no_grad()
    def rollout(self, session, noise: torch.Tensor, cond: SDXLText, stop: int, cfg) -> torch.Tensor:
        """The first `stop` steps of `pipe(prompt, guidance_scale=g)` (a fresh scheduler, as each pipeline
        call sets its timesteps anew), with the frozen model (esd_sdxl.py) or the trained one."""
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(cfg.ddim_steps)
        model = session.frozen_out if cfg.rollout_model == "frozen" else session.trained_out
        both = torch.stack([self.rollout_null.embeds, cond.embeds])
        added = self.added(self.rollout_null, cond)
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps[:stop]:
            out_u, out_c = model(sched.scale_model_input(torch.cat([x, x]), t), t, both, added).chunk(2)
            x = sched.step(out_u + cfg.rollout_guidance * (out_c - out_u), t, x, return_dict=False)[0]
        return x
