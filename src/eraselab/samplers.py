"""Samplers by name: diffusers schedulers built from a pipeline's own scheduler config.

Every sampler keeps the model's noise schedule (betas, prediction type, timestep spacing) and only changes the
update rule, as swapping `pipe.scheduler` with `Scheduler.from_config(pipe.scheduler.config)` does in
diffusers.
"""
from __future__ import annotations

import inspect

from .errors import EraseLabError
from .probes import SAMPLERS

# name → (diffusers class name, config overrides)
_SAMPLER_CLASSES: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    # skip_prk_steps: the PLMS variant Stable Diffusion uses; the Runge-Kutta warm-up would cost 3 extra
    # steps.
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddpm": ("DDPMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}
assert set(_SAMPLER_CLASSES) == set(SAMPLERS), (
    "probes.SAMPLERS and the sampler table must list the same names"
)


def make_scheduler(pipe, name: str):
    """A fresh scheduler (its own step state) for sampler `name`, using `pipe`'s noise schedule."""
    import diffusers

    if name not in _SAMPLER_CLASSES:
        raise EraseLabError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    class_name, overrides = _SAMPLER_CLASSES[name]
    cls = getattr(diffusers, class_name)
    return cls.from_config(pipe.scheduler.config, **overrides)


def sampler_config(pipe, name: str) -> dict:
    """What decides a sampler's arithmetic: its class and its config (diffusers' private keys dropped, since
    the library version is recorded separately)."""
    scheduler = make_scheduler(pipe, name)
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return {"sampler": name, "class": type(scheduler).__name__, "config": config}


def step_kwargs(scheduler, generators: list) -> dict:
    """Extra arguments for `scheduler.step`: the per-probe generators for stochastic samplers and eta=0 for
    DDIM, as the diffusers Stable Diffusion pipeline passes them."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs
