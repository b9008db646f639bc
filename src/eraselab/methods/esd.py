"""ESD — Erased Stable Diffusion (Gandikota et al., 2023): fine-tune the model so that its prediction for the
target concept equals the frozen model's prediction negatively guided away from it.

One step (both references): draw a rollout length and a training timestep t, roll a latent z out from noise
with CFG (scale 3) on the target prompt, take the frozen model's ε*(z, ∅) and ε*(z, c) at t, and regress the
trained model's ε_θ(z, c) (MSE) onto the target below; Adam, batch 1.

References (rohitgandikota/erasing):
- recipe "compvis" (default for esd-x and esd-u; the code behind the paper's numbers):
  b8aeab6d4b6b613b88ad0bf219e3697c79003838, train-scripts/train-esd.py with ldm/models/diffusion/ddim.py
  (the file is unchanged until it was deleted in 414dc94). 1000 iterations, lr 1e-5, η 1, 50 DDIM steps, the
  rollout with the model being trained, training timestep paired as `timestep_pairing="compvis"` describes
  (diffusion.NoiseSchedule.sample_step_and_timestep).
- recipe "diffusers" (the only reference of esd-x-strict): 25613d27892326e0c7770f7f3555bea4be150089, esd_sd.py
  with utils/sd_utils.py. 200 iterations, lr 5e-5, η′ 2 (= η 1), the rollout with the frozen model and the
  pipeline's own scheduler (PNDM for the hub's SD 1.4) at 1024 px, stopped at timesteps[i] and trained at
  exactly that timestep; its esd-u trains every Linear/Conv2d outside attn2 (also conv_out and the time
  embedding, no norm layers: parameter group "u-linear-conv"). Like esd_sd.py it trains in bfloat16
  (`train_dtype`: text encoder, both UNets, rollout, loss and Adam state; the Edit holds the trained values in
  the model's own dtype), where the CompVis code trains in float32.

η convention: this project uses the paper's η (`negative_guidance`, default 1):
    target = ε*(x_t, ∅) − η (ε*(x_t, c) − ε*(x_t, ∅)).
The later diffusers rewrite writes target = ε*(c) − η′ (ε*(c) − ε*(∅)); the two agree when η′ = η + 1, so its
default η′ = 2 is the paper's η = 1 (`paper_eta(eta_prime)` converts). The recipes "diffusers" and "sdxl"
compute the target in the rewrite's form (`recipe_target`): the same value, but in bfloat16 the order of the
operations decides the rounding.

- recipe "sdxl" (the default on SDXL, for esd-x and esd-x-strict): the same commit, esd_sdxl.py with
  utils/sdxl_utils.py; the step is methods/esd_sdxl.py. 200 iterations, lr 2e-4, η′ 1 (= the paper's η 0),
  rollout with the frozen model, the pipeline's scheduler, CFG 2, 50 steps, 1024 px, in bfloat16 (as there).
- recipe "flux" (the default on Flux, for esd-x and esd-x-strict): eraselab's own adaptation, NOT an official
  reference: no official ESD for Flux exists (the commit above has esd_sd.py and esd_sdxl.py only). The step,
  methods/esd_flux.py, ports esd_sdxl.py to flow matching: the joint attention's text projections of the
  double-stream blocks, velocities in place of noise predictions, the paper's η 1, 200 iterations at lr 2e-4,
  rollout with the frozen model and the pipeline's scheduler, 50 steps, FluxPipeline's guidance 3.5 (embedded
  on -dev), the family's default resolution, float32. It is cited with esd_sdxl.py, the script it ports.

eraselab's own options, off in all recipes: `anchor_unconditional` (a term keeping ε_θ(∅) at ε*(∅)) and
`timestep_pairing="in-bin"` (train inside the rolled-out latent's own timestep bin).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import (
    NON_NEGATIVE,
    POSITIVE,
    Eraser,
    EraseRequest,
    MethodConfig,
    OneOf,
    Recipe,
    Reference,
    model_family,
    setting,
)
from .diffusion import PAIRINGS, SAMPLERS, NoiseSchedule, latent_shape, rollout
from .params import GROUPS
from .registry import register
from .text import PromptEncoder, concept_prompt
from .training import TrainingSession, copy_in, progress_bar


def esd_target(out_uncond: torch.Tensor, out_cond: torch.Tensor, eta: float, convention: str = "paper"):
    """ESD's training target from the frozen model's unconditional and conditional predictions."""
    if convention == "paper":
        return out_uncond - eta * (out_cond - out_uncond)
    if convention == "diffusers":
        return out_cond - eta * (out_cond - out_uncond)
    raise ValueError(f"convention must be 'paper' or 'diffusers', not {convention!r}")


def paper_eta(eta_prime: float) -> float:
    """The paper's η for the diffusers rewrite's η′."""
    return eta_prime - 1.0


def recipe_target(out_u: torch.Tensor, out_c: torch.Tensor, cfg) -> torch.Tensor:
    """ESD's target (paper η), computed in the form the recipe's reference writes it."""
    if cfg.recipe in ETA_PRIME_RECIPES:
        return esd_target(out_u, out_c, cfg.negative_guidance + 1.0, "diffusers")
    return esd_target(out_u, out_c, cfg.negative_guidance)


def encoding_in(encoder: PromptEncoder, dtype: torch.dtype) -> PromptEncoder:
    """`encoder` running private copies of the pipeline's text encoders in `dtype` (the diffusers scripts
    encode in bfloat16); its outputs stay float32 tensors, which hold bfloat16 values exactly."""
    if dtype != torch.float32:
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(encoder, name, None) is not None:
                setattr(encoder, name, copy_in(getattr(encoder, name), dtype))
    return encoder


REPOSITORY = "rohitgandikota/erasing"
COMPVIS = Reference(REPOSITORY, "b8aeab6d4b6b613b88ad0bf219e3697c79003838", "train-scripts/train-esd.py")
DIFFUSERS = Reference(REPOSITORY, "25613d27892326e0c7770f7f3555bea4be150089", "esd_sd.py")
ROLLOUT_MODELS = ("trained", "frozen")
# What esd_sd.py sets apart from the CompVis code (η′ 2 there is the same η 1 here).
DIFFUSERS_SETTINGS = {"iterations": 200, "lr": 5e-5, "timestep_pairing": "exact", "rollout_model": "frozen",
                      "rollout_sampler": "pipeline", "image_size": 1024, "train_dtype": "bfloat16"}
TRAIN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The recipes whose reference writes the target as ε*(c) − η′ (ε*(c) − ε*(∅)): the same value as the paper's
# form, but in bfloat16 the order of the operations decides the rounding.
ETA_PRIME_RECIPES = ("diffusers", "sdxl")
COMPVIS_RECIPE = Recipe("compvis", COMPVIS, "the paper's CompVis training script: 1000 steps at lr 1e-5, "
                        "rollout with the trained model, CompVis timestep pairing")
DIFFUSERS_SUMMARY = ("the diffusers rewrite: 200 steps at lr 5e-5, rollout with the frozen model and the "
                     "pipeline's scheduler at 1024 px, trained at the rollout's own timestep, in bfloat16")
SDXL = Reference(REPOSITORY, "25613d27892326e0c7770f7f3555bea4be150089", "esd_sdxl.py")
# esd_sdxl.py's defaults; its η′ 1 is the paper's η 0 (target ε*(∅)).
SDXL_SETTINGS = {**DIFFUSERS_SETTINGS, "lr": 2e-4, "negative_guidance": 0.0, "rollout_guidance": 2.0}
SDXL_RECIPE = Recipe(
    "sdxl",
    SDXL,
    (
        "the SDXL script: 200 steps at lr 2e-4, η′ 1 (paper η 0), rollout with the "
        "frozen model and the pipeline's scheduler at CFG 2, 1024 px, trained at the rollout's "
        "timestep, in bfloat16"
    ),
    SDXL_SETTINGS,
    families=("sdxl",),
)
# eraselab's own Flux port (no official Flux ESD). esd_sdxl.py's scale (200 steps, lr 2e-4, 50 steps, the
# family's resolution: image_size 0); the paper's η 1, because esd_sdxl.py's η′ 1 (η 0) makes the target
# v*(∅) alone and drops the negative-guidance term the method is named for; guidance 3.5 is FluxPipeline's
# default guidance_scale, the value -dev embeds when it generates; float32, as nothing official fixes a
# lower precision to reproduce.
FLUX_SETTINGS = {**DIFFUSERS_SETTINGS, "lr": 2e-4, "negative_guidance": 1.0, "ddim_steps": 50,
                 "rollout_guidance": 3.5, "image_size": 0, "train_dtype": "float32"}
FLUX_SUMMARY = ("eraselab's own adaptation, no official reference (no official ESD for Flux exists; "
                "ported from esd_sdxl.py to flow matching): the double-stream joint attention's text "
                "projections, target v*(∅) − η (v*(c) − v*(∅)) with the paper's η 1, 200 steps at lr 2e-4, "
                "rollout with the frozen model and the pipeline's flow-matching scheduler (50 steps, "
                "guidance 3.5 embedded on -dev), the family's default resolution, trained at the "
                "rollout's timestep, float32")
FLUX_RECIPE = Recipe("flux", SDXL, FLUX_SUMMARY, FLUX_SETTINGS, families=("flux",), official=False)


@dataclass
class ESDConfig(MethodConfig):
    iterations: int = setting(1000, "training steps (batch 1)", POSITIVE)
    lr: float = setting(1e-5, "Adam learning rate", POSITIVE)
    negative_guidance: float = setting(1.0, "η in the paper's convention (diffusers' η′ = η + 1)")
    ddim_steps: int = setting(50, "DDIM steps of the sampler the partial rollout stops inside", POSITIVE)
    rollout_guidance: float = setting(3.0, "CFG scale of the partial rollout (Flux: the pipeline's "
                                      "guidance_scale, embedded in every prediction on -dev)")
    timestep_pairing: str = setting("compvis", "which training timestep goes with the rollout's length: "
                                    "compvis (train-esd.py), exact (esd_sd.py) or in-bin (eraselab's)",
                                    OneOf(PAIRINGS))
    rollout_model: str = setting("trained", "model the partial rollout runs: trained (train-esd.py) or "
                                 "frozen (esd_sd.py)", OneOf(ROLLOUT_MODELS))
    rollout_sampler: str = setting("ddim", "ddim (train-esd.py) or pipeline: the pipeline's own scheduler "
                                   "(esd_sd.py)", OneOf(SAMPLERS))
    image_size: int = setting(0, "pixel size of the rollout (0 = the model's own; esd_sd.py: 1024)",
                              NON_NEGATIVE)
    parameter_group: str = setting("", "parameters trained ('' = the method's: esd-x x, esd-u u, "
                                   "esd-x-strict x-strict; esd_sd.py's esd-u: u-linear-conv)",
                                   OneOf(("", *GROUPS)))
    anchor_unconditional: float = setting(
        0.0, "weight of a term keeping ε(x_t, ∅) at the frozen model's (0 = the paper's loss)", NON_NEGATIVE)
    train_dtype: str = setting("float32", "precision of training (text encoders, models, rollout, loss, "
                               "Adam): float32 (train-esd.py) or bfloat16 (esd_sd.py, esd_sdxl.py)",
                               OneOf(TRAIN_DTYPES))

    recipes: ClassVar[tuple[Recipe, ...]] = (
        COMPVIS_RECIPE, Recipe("diffusers", DIFFUSERS, DIFFUSERS_SUMMARY, DIFFUSERS_SETTINGS), SDXL_RECIPE,
        FLUX_RECIPE)

    # 8×8 latents and a small UNet: a tenth of the iterations at a larger step size reach the same loss drop.
    # The paper's loss lets ε(∅) follow ε(c) on miniworld: ε(c) moves away from the concept but ε(∅) nearly
    # as far, so the difference ε(c) − ε(∅) that guidance amplifies survives and the erasure comes and goes
    # with the step count. Hence the unconditional anchor (benchmarks/RESULTS.md, "ESD's unconditional
    # drift"); the anchored presets (lr, steps) were chosen by trials on the embedded model, recorded there.
    # image_size 0 also under recipe=diffusers: 1024 px would be 512×512 latents for the embedded 8×8 model;
    # float32 there too, the precision the presets were tuned in.
    miniworld: ClassVar[dict] = {"iterations": 150, "lr": 3e-4, "ddim_steps": 20, "anchor_unconditional": 1.0,
                                 "image_size": 0, "train_dtype": "float32"}


class ESD(Eraser):
    Config = ESDConfig
    group: ClassVar[str] = "x"

    def erase(self, pipe, request: EraseRequest):
        cfg: ESDConfig = request.config
        group = cfg.parameter_group or self.group
        family = model_family(pipe)
        dtype = TRAIN_DTYPES[cfg.train_dtype]
        if family == "sdxl":
            from .esd_sdxl import SDXLSteps, check_sdxl_config

            check_sdxl_config(cfg)
            session = TrainingSession(pipe, group, cfg.lr, cfg.seed, dtype=dtype)
            steps_class = SDXLSteps
        elif family == "flux":
            from .esd_flux import FluxSteps, check_flux_config, flux_parameter_names

            check_flux_config(cfg)
            session = TrainingSession(pipe, group, cfg.lr, cfg.seed, component="transformer",
                                      names=flux_parameter_names(pipe.transformer, group))
            steps_class = FluxSteps
        else:
            session = TrainingSession(pipe, group, cfg.lr, cfg.seed, dtype=dtype)
        try:
            if family != "sd":
                steps = steps_class(pipe, request.targets, cfg)

                def step():
                    return steps.iteration(session, session.choice(request.targets), cfg)
            else:
                encode = encoding_in(PromptEncoder(pipe), dtype)
                conds = dict(zip(request.targets, encode([concept_prompt(pipe, t) for t in request.targets])))
                uncond = encode([""])[0]
                schedule = NoiseSchedule.from_pipe(pipe, cfg.ddim_steps, cfg.rollout_sampler)

                def step():
                    return self.iteration(
                        session, schedule, conds[session.choice(request.targets)], uncond, cfg, pipe
                    )

            with progress_bar(cfg.iterations, self.name, request.progress) as advance:
                for _ in range(cfg.iterations):
                    advance(step())
        except BaseException:
            session.restore()
            raise
        return session.finish(self.name, cfg.as_dict(), request.targets, request.preserve,
                              extras={"parameter_group": group, "eta_convention": "paper"})

    @staticmethod
    def iteration(
        session: TrainingSession, schedule: NoiseSchedule, cond, uncond, cfg: ESDConfig, pipe
    ) -> float:
        """One ESD step: partial rollout (with θ or θ*), frozen predictions (one batch), θ's prediction, Adam
        step.

        With `anchor_unconditional` λ > 0 the loss adds λ·‖ε_θ(x_t, ∅) − ε*(x_t, ∅)‖². The paper's loss only
        constrains ε_θ(c); every parameter group also shapes ε_θ(∅) (ESD-u's weights see no text, ESD-x's K/V
        also project the empty prompt), and when ε_θ(∅) follows ε_θ(c) the guided difference ε_θ(c) − ε_θ(∅)
        that sampling amplifies keeps pointing at the concept (benchmarks/RESULTS.md, "ESD's unconditional
        drift")."""
        stop, t = schedule.sample_step_and_timestep(session.generator, cfg.timestep_pairing)
        model = session.unet if cfg.rollout_model == "trained" else FrozenUNet(session)
        z = rollout(model, schedule, session.randn(latent_shape(pipe, 1, cfg.image_size)), cond, uncond, stop,
                    cfg.rollout_guidance)
        with torch.no_grad():
            out_u, out_c = session.frozen_out(torch.cat([z, z]), t, torch.stack([uncond, cond])).chunk(2)
        target = recipe_target(out_u, out_c, cfg)
        if not cfg.anchor_unconditional:
            return session.step(F.mse_loss(session.trained_out(z, t, cond), target))
        pred_c, pred_u = session.trained_out(torch.cat([z, z]), t, torch.stack([cond, uncond])).chunk(2)
        return session.step(F.mse_loss(pred_c, target) + cfg.anchor_unconditional * F.mse_loss(pred_u, out_u))


class FrozenUNet:
    """The frozen model θ* behind the UNet call the rollouts make (esd_sd.py rolls out with the base UNet)."""

    def __init__(self, session: TrainingSession):
        self.session = session

    def __call__(self, x, t, encoder_hidden_states):
        return SimpleNamespace(sample=self.session.frozen_out(x, t, encoder_hidden_states))


@register
class ESDX(ESD):
    name = "esd-x"
    description = ("ESD fine-tuning of all cross-attention parameters (styles, specific objects); on Flux "
                   "eraselab's own port, no official reference")
    group = "x"
    families = ("sd", "sdxl", "flux")


@dataclass
class ESDUConfig(ESDConfig):
    # ESD-u trains only weights the text never reaches, so every step also moves the unconditional
    # prediction ε(∅) that sampling guides from: on miniworld η 1 leaves much of the concept, so the preset
    # uses η 2 with the anchor, which settles more slowly because it pulls against weights every prediction
    # shares (hence more steps at a smaller lr; trials in benchmarks/RESULTS.md). SD 1.x keeps the paper's
    # η = 1 and loss.
    recipes: ClassVar[tuple[Recipe, ...]] = (
        COMPVIS_RECIPE, Recipe("diffusers", DIFFUSERS, DIFFUSERS_SUMMARY + "; Linear/Conv2d outside attn2",
                               {**DIFFUSERS_SETTINGS, "parameter_group": "u-linear-conv"}))
    miniworld: ClassVar[dict] = {
        **ESDConfig.miniworld,
        "negative_guidance": 2.0,
        "iterations": 300,
        "lr": 1e-4,
    }


@register
class ESDU(ESD):
    name = "esd-u"
    description = (
        "ESD fine-tuning of everything but cross-attention, output layer and time embedding (nudity)"
    )
    group = "u"
    Config = ESDUConfig


@dataclass
class ESDXStrictConfig(ESDConfig):
    # esd_sd.py is the only reference that trains K/V alone, so its settings are this method's field defaults.
    iterations: int = DIFFUSERS_SETTINGS["iterations"]
    lr: float = DIFFUSERS_SETTINGS["lr"]
    timestep_pairing: str = DIFFUSERS_SETTINGS["timestep_pairing"]
    rollout_model: str = DIFFUSERS_SETTINGS["rollout_model"]
    rollout_sampler: str = DIFFUSERS_SETTINGS["rollout_sampler"]
    image_size: int = DIFFUSERS_SETTINGS["image_size"]
    train_dtype: str = DIFFUSERS_SETTINGS["train_dtype"]

    recipes: ClassVar[tuple[Recipe, ...]] = (Recipe("diffusers", DIFFUSERS, DIFFUSERS_SUMMARY), SDXL_RECIPE,
                                             FLUX_RECIPE)
    # Only the K/V projections train, a fraction of ESD-x's parameters, so on miniworld they need a larger
    # step. They also project the empty prompt, so ε(∅) moves with every step, and a stronger anchor (λ = 4)
    # than ESD-x's holds it across training seeds (trials in benchmarks/RESULTS.md).
    miniworld: ClassVar[dict] = {**ESDConfig.miniworld, "lr": 5e-4, "anchor_unconditional": 4.0}


@register
class ESDXStrict(ESD):
    name = "esd-x-strict"
    description = ("ESD fine-tuning of the cross-attention key/value projections only; on Flux eraselab's "
                   "own port, no official reference")
    group = "x-strict"
    Config = ESDXStrictConfig
    families = ("sd", "sdxl", "flux")
