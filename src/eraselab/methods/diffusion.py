"""Diffusion arithmetic the training-based methods share: partial rollouts (eraselab's DDIM, or the pipeline's
own scheduler), ESD's pairing of the rollout's stopping step with a training timestep, and ε ↔ x̂₀
conversion."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import EraseLabError


@dataclass
class NoiseSchedule:
    """The training schedule's ᾱ_t and the DDIM timesteps of an n-step sampler (from the pipeline's
    scheduler)."""

    alphas_cumprod: torch.Tensor  # (T,)
    timesteps: torch.Tensor  # (steps,), descending
    final_alpha: float
    prediction_type: str
    steps: int = 0  # sampler steps S; 0 = len(timesteps) (a multistep sampler such as PNDM may list S + 1)
    scheduler: object = None  # "pipeline" sampler: a private copy of the pipeline's scheduler, else None

    @classmethod
    def from_pipe(cls, pipe, steps: int, sampler: str = "ddim") -> NoiseSchedule:
        """The DDIM schedule of `steps` steps (sampler "ddim"), or the timesteps of a private copy of the
        pipeline's own scheduler class (sampler "pipeline", what esd_sd.py rolls out with)."""
        from diffusers import DDIMScheduler

        if sampler not in SAMPLERS:
            raise EraseLabError(
                f"config rollout_sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}"
            )
        # Private schedulers: the pipeline's own scheduler object (and its state) stays untouched.
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        sched.set_timesteps(steps)
        ptype = sched.config.prediction_type
        if ptype not in ("epsilon", "v_prediction"):
            raise EraseLabError(
                f"the model predicts {ptype!r}; these methods support epsilon and v_prediction"
            )
        timesteps, own = sched.timesteps.long(), None
        if sampler == "pipeline":
            own = type(pipe.scheduler).from_config(pipe.scheduler.config)
            own.set_timesteps(steps)
            timesteps = torch.as_tensor(own.timesteps).long().cpu()
        return cls(
            sched.alphas_cumprod.float(), timesteps, float(sched.final_alpha_cumprod), ptype, steps, own
        )

    @property
    def stride(self) -> int:
        return int(len(self.alphas_cumprod) // (self.steps or len(self.timesteps)))

    def alpha(self, t) -> torch.Tensor:
        t = torch.as_tensor(t).long().cpu()
        return self.alphas_cumprod[t]

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def sample_step_and_timestep(
        self, generator: torch.Generator, pairing: str = "in-bin"
    ) -> tuple[int, int]:
        """How many rollout steps to run (`stop`: the latent is then at noise level timesteps[stop]) and the
        training timestep t to use on that latent, drawn by `pairing` (S DDIM steps, T training timesteps):

        - "compvis": the CompVis ESD code (rohitgandikota/erasing, train-scripts/train-esd.py). It draws
          t_enc ~ U{0..S−1} and trains at t ~ U[round(t_enc/S·T), round((t_enc+1)/S·T)), a bin counted up
          from t = 0. Its sampler walks the DDIM indices S−1, S−2, … and stops after index t_enc − 1, i.e.
          after S + 1 − t_enc steps (t_enc 0 and 1 both run all S), so the latent sits at noise level
          timesteps[S + 1 − t_enc] while t is 2–3 DDIM steps (2.4 on average) noisier.
        - "exact": the diffusers rewrite (esd_sd.py): i ~ U{0..S−1}, i steps, t = timesteps[i], the latent's
          own noise level.
        - "in-bin": i ~ U{0..S−1}, i steps, t ~ U(timesteps[i] − stride, timesteps[i]], the bin of training
          timesteps DDIM step i stands for (eraselab's own pairing: the latent's noise level, jittered)."""
        if pairing == "compvis":
            _, stop, t = self.compvis_draw(generator)
            return stop, t
        i = int(torch.randint(self.steps or len(self.timesteps), (1,), generator=generator))
        if pairing == "exact":
            return i, int(self.timesteps[i])
        if pairing == "in-bin":
            hi = int(self.timesteps[i])
            lo = max(hi - self.stride + 1, 0)
            return i, int(torch.randint(lo, hi + 1, (1,), generator=generator))
        raise EraseLabError(f"config timestep_pairing must be one of {', '.join(PAIRINGS)}, not {pairing!r}")

    def compvis_draw(self, generator: torch.Generator) -> tuple[int, int, int]:
        """(t_enc, rollout steps, training timestep) as the CompVis code draws them (see "compvis" above); AP
        also needs t_enc itself, for the ᾱ its x̂₀ uses."""
        steps = self.steps or len(self.timesteps)
        t_enc = int(torch.randint(steps, (1,), generator=generator))
        lo, hi = compvis_timestep_range(t_enc, steps, self.num_train_timesteps)
        return t_enc, min(steps + 1 - t_enc, steps), int(torch.randint(lo, hi, (1,), generator=generator))

    # ---- conversions ---------------------------------------------------------------------------------------
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


PAIRINGS = ("compvis", "exact", "in-bin")
SAMPLERS = ("ddim", "pipeline")


def compvis_timestep_range(t_enc: int, steps: int, train_timesteps: int) -> tuple[int, int]:
    """The half-open range [lo, hi) of training timesteps the CompVis ESD code draws from for its t_enc
    (Python's round, as there)."""
    return round(t_enc / steps * train_timesteps), round((t_enc + 1) / steps * train_timesteps)


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = a.to(device=like.device, dtype=like.dtype)
    return a.reshape(-1, *([1] * (like.dim() - 1))) if a.dim() else a


def unet_out(unet, x: torch.Tensor, t, cond: torch.Tensor, added: dict | None = None) -> torch.Tensor:
    """The UNet's raw prediction for a batch; `cond` is (B, tokens, d) or (tokens, d) shared by the batch;
    `added`: SDXL's added conditions (added_cond_kwargs, one row per sample)."""
    if cond.dim() == 2:
        cond = cond.unsqueeze(0)
    if cond.shape[0] != x.shape[0]:
        cond = cond.expand(x.shape[0], -1, -1)
    tt = torch.as_tensor(t, device=x.device)
    if tt.dim() == 0:
        tt = tt.expand(x.shape[0])
    extra = {} if added is None else {"added_cond_kwargs": added}
    return unet(x, tt, encoder_hidden_states=cond.to(x.dtype), **extra).sample


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


def rollout(unet, schedule: NoiseSchedule, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            stop: int, guidance: float) -> torch.Tensor:
    """`stop` steps of the schedule's sampler: eraselab's DDIM, or the pipeline's scheduler."""
    if schedule.scheduler is None:
        return ddim_rollout(unet, schedule, noise, cond, uncond, stop, guidance)
    return scheduler_rollout(unet, schedule, noise, cond, uncond, stop, guidance)


@torch.no_grad()
def scheduler_rollout(unet, schedule: NoiseSchedule, noise: torch.Tensor, cond: torch.Tensor,
                      uncond: torch.Tensor, stop: int, guidance: float) -> torch.Tensor:
    """The first `stop` steps of the pipeline's own sampler (schedule.scheduler) with CFG on the raw model
    output, as a diffusers pipeline runs them; a fresh copy per call, so multistep state (PNDM) starts
    empty."""
    sched = type(schedule.scheduler).from_config(schedule.scheduler.config)
    sched.set_timesteps(schedule.steps or len(schedule.timesteps))
    b = noise.shape[0]
    c = cond.unsqueeze(0) if cond.dim() == 2 else cond
    u = uncond.unsqueeze(0) if uncond.dim() == 2 else uncond
    both = torch.cat([u.expand(b, -1, -1), c.expand(b, -1, -1)])
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps[:stop]:
        out_u, out_c = unet_out(unet, sched.scale_model_input(torch.cat([x, x]), t), t, both).chunk(2)
        x = sched.step(out_u + guidance * (out_c - out_u), t, x, return_dict=False)[0]
    return x


def latent_shape(pipe, batch: int = 1, image_size: int = 0) -> tuple[int, ...]:
    """Latent shape of a batch at the model's native size, or at `image_size` pixels when that is given."""
    cfg = pipe.unet.config
    side = int(cfg.sample_size) if not image_size else int(image_size) // int(pipe.vae_scale_factor)
    return (batch, int(cfg.in_channels), side, side)
