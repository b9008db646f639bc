"""ESD on Flux-style MMDiT transformers (diffusers FluxPipeline): eraselab's own adaptation, recipe "flux" of
methods/esd.py for esd-x and esd-x-strict. No official ESD for Flux exists: rohitgandikota/erasing@
25613d27892326e0c7770f7f3555bea4be150089 ships esd_sd.py and esd_sdxl.py only. This port carries esd_sdxl.py's
step (with utils/sdxl_utils.py) over to flow matching; nothing here reproduces published numbers.

One step, as esd_sdxl.py's loop with flow-matching velocities in place of noise predictions:
- draw run_till ~ U{0..S−1} (S = 50 sampler steps) and fresh noise, drawn and 2×2-packed as
  FluxPipeline.prepare_latents does, at the family's default resolution (1024 px on FLUX.1);
- roll out run_till steps of `pipe(target, guidance_scale=g)` with the frozen transformer: the pipeline's
  FlowMatchEulerDiscreteScheduler with its sigmas linspace(1, 1/S, S) and its resolution-dependent shift, and
  no classifier-free branch (FluxPipeline's true_cfg_scale is 1);
- at t = timesteps[run_till], on that latent, the frozen model's v*(x_t, c) and v*(x_t, ∅), where ∅ is the
  empty prompt's encodings (T5 states and pooled CLIP, as FluxPipeline.encode_prompt gives them);
- regress the trained model's v_θ(x_t, c) onto v*(x_t, ∅) − η (v*(x_t, c) − v*(x_t, ∅)) (the paper's η, as
  methods/esd.py; MSE, Adam, batch 1).

Parameters: ESD-x trains the cross-attention, where text enters the image; Flux has none, and the text enters
the image tokens' attention in the double-stream blocks through the text stream's projections of the joint
attention. esd-x trains add_q_proj, add_k_proj, add_v_proj and to_add_out of every double-stream block;
esd-x-strict only add_k_proj and add_v_proj (the keys and values image queries read text through, as SD's
attn2.to_k/to_v). The single-stream blocks project text and image tokens with the same weights, so training
them would change how images attend to images too: they stay frozen, as ESD-x leaves SD's self-attention.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import EraseLabError
from .text import concept_prompt

# The text-stream projections of the double-stream blocks' joint attention, per ESD parameter group.
FLUX_PROJECTIONS = {"x": ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
                    "x-strict": ("add_k_proj", "add_v_proj")}
DOUBLE_STREAM = "transformer_blocks."


def flux_parameter_names(transformer: torch.nn.Module, group: str) -> list[str]:
    """Transformer parameter names (weights and biases) ESD group `group` trains on Flux, in model order."""
    if group not in FLUX_PROJECTIONS:
        raise EraseLabError(f"on Flux, ESD trains parameter group x or x-strict (the joint attention's text "
                            f"projections), not {group!r}; drop the parameter_group key")
    wanted = FLUX_PROJECTIONS[group]
    names = [f"{m}.{n}" for m, module in transformer.named_modules()
             if m.startswith(DOUBLE_STREAM) and m.rsplit(".", 1)[-1] in wanted
             and isinstance(module, torch.nn.Linear) for n, _ in module.named_parameters(recurse=False)]
    if not names:
        raise EraseLabError("this transformer has no double-stream joint-attention text projections "
                            "(add_k_proj/add_v_proj) for ESD to train; use a FLUX.1-style model")
    return names


def check_flux_config(cfg) -> None:
    """The Flux step rolls out with the pipeline's scheduler, trains at the rollout's own timestep, in
    float32."""
    if cfg.rollout_sampler != "pipeline" or cfg.timestep_pairing != "exact":
        raise EraseLabError("on Flux, ESD rolls out with the pipeline's flow-matching scheduler and trains "
                            "at the rollout's timestep (rollout_sampler=pipeline, timestep_pairing=exact); "
                            "drop those keys or the recipe key")
    if cfg.train_dtype != "float32":
        raise EraseLabError("on Flux, ESD trains in float32 (train_dtype=float32); drop the train_dtype key")


@dataclass
class FluxText:
    """One text's Flux conditioning: T5 states (tokens, d_t5) and the pooled CLIP output (d_clip,)."""

    states: torch.Tensor
    pooled: torch.Tensor


class FluxSteps:
    """The texts, image size, token ids and scheduler of an ESD run on a Flux pipeline, and its step."""

    def __init__(self, pipe, targets: list[str], cfg):
        from ..generation.flux import FluxFamily
        from ..models import default_image_size

        self.pipe, self.family = pipe, FluxFamily(pipe)
        with torch.no_grad():
            states, pooled = self.family.encode([concept_prompt(pipe, t) for t in targets] + [""])
        self.conds = {t: FluxText(states[i], pooled[i]) for i, t in enumerate(targets)}
        self.null = FluxText(states[-1], pooled[-1])
        self.side = int(cfg.image_size) or default_image_size(pipe)
        h, w = self.family._latent_hw(self.side, self.side)
        self.image_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, states.device, states.dtype)
        self.text_ids = torch.zeros(states.shape[1], 3, device=states.device, dtype=states.dtype)
        # -dev embeds the pipeline's guidance scale in every prediction, rollout and loss alike (the model
        # was distilled to predict at that guidance); -schnell has no guidance embedding.
        guided = bool(pipe.transformer.config.get("guidance_embeds", False))
        self.guidance = float(cfg.rollout_guidance) if guided else None
        self.timesteps = self.scheduler(cfg).timesteps

    def scheduler(self, cfg):
        """A fresh copy of the pipeline's scheduler with its timesteps set as `pipe(...)` sets them."""
        sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        self.family.set_timesteps(sched, cfg.ddim_steps, self.side, self.side)
        return sched

    def velocity(self, model, x: torch.Tensor, t, *texts: FluxText) -> torch.Tensor:
        """`model`'s velocity for latent x (one row, repeated) under each text, batched as FluxPipeline
        calls the transformer."""
        n = len(texts)
        batch = x.expand(n, -1, -1)
        guidance = None if self.guidance is None else torch.full([n], self.guidance, dtype=torch.float32,
                                                                 device=x.device)
        timestep = torch.as_tensor(t, device=x.device).expand(n).to(x.dtype)
        return model(hidden_states=batch, timestep=timestep / 1000, guidance=guidance,
                     pooled_projections=torch.stack([c.pooled for c in texts]),
                     encoder_hidden_states=torch.stack([c.states for c in texts]), txt_ids=self.text_ids,
                     img_ids=self.image_ids, return_dict=False)[0]

    @staticmethod
    def frozen(session):
        """θ*: the transformer called with the trained parameters' original values."""
        def call(**kwargs):
            return torch.func.functional_call(session.unet, session.originals, (), kwargs)

        return call

    def iteration(self, session, target: str, cfg) -> float:
        from .esd import esd_target

        cond = self.conds[target]
        stop = int(torch.randint(cfg.ddim_steps, (1,), generator=session.generator))
        t = self.timesteps[stop]
        noise = self.family.initial_latents([session.generator], self.side, self.side, None)
        z = self.rollout(session, noise, cond, stop, cfg)
        with torch.no_grad():
            out_u, out_c = self.velocity(self.frozen(session), z, t, self.null, cond).chunk(2)
        goal = esd_target(out_u, out_c, cfg.negative_guidance)
        if not cfg.anchor_unconditional:
            return session.step(F.mse_loss(self.velocity(session.unet, z, t, cond), goal))
        pred_c, pred_u = self.velocity(session.unet, z, t, cond, self.null).chunk(2)
        return session.step(F.mse_loss(pred_c, goal) + cfg.anchor_unconditional * F.mse_loss(pred_u, out_u))

    @torch.no_grad()
    def rollout(self, session, noise: torch.Tensor, cond: FluxText, stop: int, cfg) -> torch.Tensor:
        """The first `stop` steps of `pipe(prompt, guidance_scale=g)` on packed latents, with the frozen
        model (as esd_sdxl.py rolls out with the base UNet) or the trained one; a fresh scheduler, as each
        pipeline call sets its timesteps anew."""
        sched = self.scheduler(cfg)
        model = self.frozen(session) if cfg.rollout_model == "frozen" else session.unet
        x = noise
        for t in sched.timesteps[:stop]:
            x = sched.step(self.velocity(model, x, t, cond), t, x, return_dict=False)[0]
        return x
