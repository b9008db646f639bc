"""Diffusion arithmetic the training-based methods share: DDIM partial rollout with the model being trained,
ESD's sampling of the stopping step and training timestep, and ε ↔ x̂₀ conversion."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import EraseLabError


@dataclass
class NoiseSchedule:
    """The training schedule's ᾱ_t and the DDIM timesteps of an n-step sampler (from the pipeline's scheduler)."""

    alphas_cumprod: torch.Tensor  # (T,)
    timesteps: torch.Tensor  # (steps,), descending
    final_alpha: float
    prediction_type: str

    @classmethod
    def from_pipe(cls, pipe, steps: int) -> NoiseSchedule:
        from diffusers import DDIMScheduler

        # A private DDIM scheduler: the pipeline's own scheduler object (and its state) stays untouched.
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        sched.set_timesteps(steps)
        ptype = sched.config.prediction_type
        if ptype not in ("epsilon", "v_prediction"):
            raise EraseLabError(f"the model predicts {ptype!r}; these methods support epsilon and v_prediction")
        return cls(sched.alphas_cumprod.float(), sched.timesteps.long(), float(sched.final_alpha_cumprod), ptype)

    @property
    def stride(self) -> int:
        return int(len(self.alphas_cumprod) // len(self.timesteps))

    def alpha(self, t) -> torch.Tensor:
        t = torch.as_tensor(t).long().cpu()
        return self.alphas_cumprod[t]

    def sample_step_and_timestep(self, generator: torch.Generator) -> tuple[int, int]:
        """A DDIM step index i to stop the rollout at (uniform), and a training timestep drawn uniformly in the
        bin of training timesteps that DDIM step i stands for: (timesteps[i] − stride, timesteps[i]].

        The CompVis ESD code indexes the bin by i counted from t = 0 although the rollout has run i steps from
        t = T; we take the bin of the noise level the rolled-out latent actually has (as the diffusers rewrite
        does by using timesteps[i] itself)."""
        i = int(torch.randint(len(self.timesteps), (1,), generator=generator))
        hi = int(self.timesteps[i])
        lo = max(hi - self.stride + 1, 0)
        return i, int(torch.randint(lo, hi + 1, (1,), generator=generator))

    # ---- conversions ----------------------------------------------------------------------------------------
    def to_eps(self, model_out: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return model_out
        a = _bcast(self.alpha(t), x)
        return a.sqrt() * model_out + (1 - a).sqrt() * x

    def x0_from_eps(self, eps: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        """x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
        a = _bcast(self.alpha(t), x)
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def x0(self, model_out: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        return self.x0_from_eps(self.to_eps(model_out, x, t), x, t)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        a = _bcast(self.alpha(t), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = a.to(device=like.device, dtype=like.dtype)
    return a.reshape(-1, *([1] * (like.dim() - 1))) if a.dim() else a


def unet_out(unet, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
    """The UNet's raw prediction for a batch; `cond` is (B, tokens, d) or (tokens, d) shared by the batch."""
    if cond.dim() == 2:
        cond = cond.unsqueeze(0)
    if cond.shape[0] != x.shape[0]:
        cond = cond.expand(x.shape[0], -1, -1)
    tt = torch.as_tensor(t, device=x.device)
    if tt.dim() == 0:
        tt = tt.expand(x.shape[0])
    return unet(x, tt, encoder_hidden_states=cond.to(x.dtype)).sample


@torch.no_grad()
def ddim_rollout(unet, schedule: NoiseSchedule, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 stop: int, guidance: float) -> torch.Tensor:
    """Run `stop` deterministic DDIM steps (η = 0) from `noise` with classifier-free guidance `guidance`,
    conditional and unconditional branches in one UNet batch. Returns the latent at noise level
    timesteps[stop] (or the clean latent when stop == len(timesteps))."""
    x = noise
    b = x.shape[0]
    c = cond.unsqueeze(0) if cond.dim() == 2 else cond
    u = uncond.unsqueeze(0) if uncond.dim() == 2 else uncond
    both = torch.cat([u.expand(b, -1, -1), c.expand(b, -1, -1)])
    ts = schedule.timesteps
    for i in range(stop):
        t = int(ts[i])
        out = unet_out(unet, torch.cat([x, x]), t, both)
        eps_u, eps_c = schedule.to_eps(out, torch.cat([x, x]), t).chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        x0 = schedule.x0_from_eps(eps, x, t)
        a_prev = (schedule.alpha(int(ts[i + 1])) if i + 1 < len(ts)
                  else torch.tensor(schedule.final_alpha)).to(x)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def latent_shape(pipe, batch: int = 1) -> tuple[int, ...]:
    cfg = pipe.unet.config
    return (batch, int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
