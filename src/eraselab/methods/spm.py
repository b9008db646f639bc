"""SPM — concept-SemiPermeable Membrane (Lyu et al., CVPR 2024): a one-dimensional adapter (LoRA of rank 1) on
every Linear and Conv2d inside the UNet's transformer blocks, trained with ESD's erase loss plus latent
anchoring, and scaled at inference by how close the prompt is to the erased concept (facilitated transport).

Reference: Con6924/SPM@3dd762e6895b23cd20cf1653a16addc5c16a12f3, train_spm.py with src/models/spm.py
(SPMLayer, SPMNetwork), src/engine/train_util.py (diffusion, predict_noise, the optimiser and lr schedule),
src/engine/sampling.py (sample: the anchor embeddings), src/configs/prompt.py (the losses) and infer_spm.py
(facilitated transport), with the settings of its configs/*/config.yaml and prompt.yaml: rank 1, alpha 1,
3000 iterations, lr 1e-4, AdamW8bit, cosine_with_restarts (500 warm-up steps, 3 cycles), 30 DDIM steps,
erase_with_la with la_strength 1000 and 4 anchors, erase guidance 1, 512 px with dynamic resolution.

Adapter: out = W x + up(down(x)) · m · α/r (down: Linear or a Conv2d of W's kernel; up: 1×1; down kaiming-
uniform(a=√5), up zeros). Training turns the adapters on (m 1) or off (m 0):
1. t_to ~ U{1..S−1}; a latent of noise rolled out t_to DDIM steps (the training scheduler: DDIMScheduler with
   the model's betas, steps_offset 0, final ᾱ 1) on [∅, c] with CFG 3, adapters on;
2. t = the 1000-step timesteps[⌊t_to·1000/S⌋]; with guidance 1 (predict_noise: ε_u + 1·(ε_c − ε_u)) the
   frozen ε*(c⁺) and ε*(c⁰) (positive = the target, neutral = ∅) and the adapted ε_θ(c);
3. anchors: n embeddings drawn isotropically around the target's norm, each kept with probability
   1 − cos(c, s), scaled by U[0.8, 1.2)·‖c‖, arranged [∅, s₁, ∅, s₂, …] and run through predict_noise as the
   reference does: its chunk(2) splits that list in halves, so the anchoring loss compares rows
   [∅, s_{n/2+1}, ∅, …] (kept);
4. loss = ‖ε_θ(c) − [ε*(c⁰) − η (ε*(c⁺) − ε*(c⁰))]‖² + λ_LA ‖ε_θ(anchors) − ε*(anchors)‖².
Facilitated transport (infer_spm.py, matching "clipcos_tokenuni"): per prompt p, m = max over the erased
prompts e of max(cos(flat enc(p), flat enc(e)), |tokens(p) ∩ tokens(e)| / |tokens(e)|) (special tokens
dropped). The reference multiplies every adapter tensor (down and up) by m, so the adapter's output scales by
m²; eraselab keeps that (`transport_power` 2).

Deviations: the 8-bit AdamW (bitsandbytes) is torch's AdamW with its defaults (betas 0.9/0.999, eps 1e-8,
weight decay 1e-2), as 8-bit optimiser states cannot be reproduced on every device; the equivalence tests
compare the loss and its gradient, before the optimiser. On the miniworld model the target prompt is its
caption form ("a circle") and token matching uses the concept's own words, so the article "a" shared by every
caption does not count as a match.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import edits
from ..edit_modules import MODULE_KINDS, AddedModule, ModuleSpec, attach, attached_modules
from ..errors import EraseLabError
from ..threads import rebalance_threads
from .base import (
    NON_NEGATIVE,
    POSITIVE,
    Eraser,
    EraseRequest,
    MethodConfig,
    Recipe,
    Reference,
    setting,
)
from .diffusion import NoiseSchedule, rollout
from .registry import register
from .text import PromptEncoder, concept_prompt
from .training import loss_summary, progress_bar

REFERENCE = Reference("Con6924/SPM", "3dd762e6895b23cd20cf1653a16addc5c16a12f3", "train_spm.py")
TRANSFORMER_CLASSES = ("Transformer2DModel",)
ADAPTED_CLASSES = ("Linear", "Conv2d")
ADAPTER_KIND = "spm_adapter"


@dataclass
class SPMConfig(MethodConfig):
    iterations: int = setting(3000, "training steps (batch 1)", POSITIVE)
    lr: float = setting(1e-4, "peak learning rate of AdamW (the reference: AdamW8bit)", POSITIVE)
    rank: int = setting(1, "adapter rank (SPM: 1, the one-dimensional membrane)", POSITIVE)
    alpha: float = setting(1.0, "adapter alpha; the adapter output is scaled by alpha/rank", POSITIVE)
    lr_warmup_steps: int = setting(500, "linear warm-up steps of the cosine-with-restarts schedule",
                                   NON_NEGATIVE)
    lr_cycles: int = setting(3, "hard restarts of the cosine schedule", POSITIVE)
    weight_decay: float = setting(1e-2, "AdamW weight decay", NON_NEGATIVE)
    max_grad_norm: float = setting(0.0, "gradient-norm clip (0 = none, as the reference)", NON_NEGATIVE)
    max_denoising_steps: int = setting(30, "DDIM steps of the training rollouts", POSITIVE)
    rollout_guidance: float = setting(3.0, "CFG scale of the rollouts")
    negative_guidance: float = setting(1.0, "η of the erase target (the prompt's guidance_scale)")
    la_strength: float = setting(1000.0, "weight λ of the latent-anchoring loss", NON_NEGATIVE)
    anchors: int = setting(4, "anchor embeddings sampled per step (sampling_batch_size; even)", POSITIVE)
    resolution: int = setting(512, "training image size in pixels (0 = the model's own)", NON_NEGATIVE)
    dynamic_resolution: bool = setting(True, "draw height and width per step from [size/2, size) in 64 px "
                                       "steps")
    transport: bool = setting(True, "facilitated transport: scale the adapters per prompt by its "
                              "similarity to the erased concept (off: always 1)")
    transport_power: float = setting(2.0, "the adapter output scales by m^power (reference: 2, every "
                                     "adapter tensor multiplied by m)", NON_NEGATIVE)

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe("official", REFERENCE,
               "the repository's configs: rank-1 adapters in the transformer blocks, 3000 steps at lr 1e-4 "
               "(AdamW, cosine with 3 hard restarts after 500 warm-up steps), latent anchoring λ 1000 with 4 "
               "anchors, 30 DDIM steps, facilitated transport (clipcos_tokenuni) at inference"),
    )
    # miniworld: 8×8 latents at its own resolution, fewer steps at a larger lr with a proportionally shorter
    # warm-up, and a shorter DDIM schedule. At λ_LA 1000 the anchoring held the 300 short steps back (circle
    # kept at 61 %): λ_LA 100 and lr 5e-3 erase. Chosen by trials on circle and star of the tuning half,
    # checked on square, heart and triangle (benchmarks/RESULTS.md, preset_trials.py).
    miniworld: ClassVar[dict] = {"iterations": 300, "lr": 5e-3, "lr_warmup_steps": 30, "la_strength": 100.0,
                                 "max_denoising_steps": 20, "resolution": 0, "dynamic_resolution": False}

    def validate(self) -> None:
        super().validate()
        if self.max_denoising_steps < 2:
            raise EraseLabError("config max_denoising_steps must be at least 2 (the rollout length is drawn "
                                "from 1 to max_denoising_steps − 1)")
        if self.anchors % 2:
            raise EraseLabError(f"config anchors must be even (the reference splits them in halves), got "
                                f"{self.anchors}")


# ---- the adapters ------------------------------------------------------------------------------------------
class SPMAdapter(torch.nn.Module):
    """SPMLayer's low-rank branch beside one Linear or Conv2d (edit-module kind "spm_adapter", hook
    "add_beside"): up(down(x)) · α/r · multiplier. Constructor arguments are JSON (edit_modules.py);
    `transport` holds facilitated transport's settings, which generation reads (`FacilitatedTransport`).
    `multiplier` is set at inference: a number, or one value per row of the UNet batch; 1 = the adapter
    fully on."""

    @staticmethod
    def generation_hook():
        """Generation runs an SPM edit with facilitated transport, as infer_spm.py does (edit_modules.py)."""
        return FacilitatedTransport()

    def __init__(self, in_dim: int, out_dim: int, rank: int = 1, alpha: float = 1.0,
                 kernel: list | None = None, transport: dict | None = None):
        super().__init__()
        if kernel:  # [kernel_size, stride, padding] of the Conv2d it sits beside
            size, stride, padding = (tuple(v) for v in kernel)
            rank = min(rank, in_dim, out_dim)
            self.down = torch.nn.Conv2d(in_dim, rank, size, stride, padding, bias=False)
            self.up = torch.nn.Conv2d(rank, out_dim, 1, 1, bias=False)
        else:
            self.down = torch.nn.Linear(in_dim, rank, bias=False)
            self.up = torch.nn.Linear(rank, out_dim, bias=False)
        self.scale = alpha / rank
        self.transport = dict(transport or {})
        self.multiplier: float | torch.Tensor = 1.0
        torch.nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.down(x)) * self.scale
        m = self.multiplier
        if isinstance(m, torch.Tensor):
            return out * m.to(out).reshape(-1, *([1] * (out.dim() - 1)))
        return out * m


MODULE_KINDS.add(ADAPTER_KIND, "eraselab.methods.spm:SPMAdapter")


def adapter_config(module: torch.nn.Module, rank: int, alpha: float, transport: dict) -> dict:
    if isinstance(module, torch.nn.Conv2d):
        kernel = [list(module.kernel_size), list(module.stride), list(module.padding)]
        return {"in_dim": module.in_channels, "out_dim": module.out_channels, "rank": rank, "alpha": alpha,
                "kernel": kernel, "transport": transport}
    return {"in_dim": module.in_features, "out_dim": module.out_features, "rank": rank, "alpha": alpha,
            "transport": transport}


def adapted_modules(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(UNet-relative name, module) of every Linear/Conv2d inside a transformer block, in SPMNetwork's
    order."""
    out = []
    for name, module in unet.named_modules():
        if type(module).__name__ in TRANSFORMER_CLASSES:
            for child, sub in module.named_modules():
                if type(sub).__name__ in ADAPTED_CLASSES:
                    out.append((f"{name}.{child}", sub))
    if not out:
        raise EraseLabError("spm found no Linear/Conv2d inside Transformer2DModel blocks of this UNet; use "
                            "an SD 1.x/2.x-style UNet")
    return out


class Membrane(torch.nn.Module):
    """SPM's adapters for one UNet, as edit modules (one spec and instance per adapted layer), hooked in by
    edit_modules.attach: the UNet's own modules and names stay untouched. Down-projections are initialised
    kaiming-uniform(a=√5) from `generator`, in SPMNetwork's order; up-projections are zero."""

    def __init__(self, unet: torch.nn.Module, rank: int, alpha: float,
                 generator: torch.Generator | None = None, transport: dict | None = None):
        super().__init__()
        self.specs = [ModuleSpec(key(n), ADAPTER_KIND, f"unet.{n}", "add_beside",
                                 adapter_config(m, rank, alpha, transport or {}))
                      for n, m in adapted_modules(unet)]
        self.adapters = torch.nn.ModuleDict({s.name: SPMAdapter(**s.config) for s in self.specs})
        for adapter in self.adapters.values():
            torch.nn.init.kaiming_uniform_(adapter.down.weight, a=math.sqrt(5), generator=generator)
        self._attachment = None

    @property
    def multiplier(self):
        return next(iter(self.adapters.values())).multiplier

    @multiplier.setter
    def multiplier(self, value) -> None:
        for adapter in self.adapters.values():
            adapter.multiplier = value

    def attach(self, pipe) -> Membrane:
        self._attachment = attach(pipe, [(s, self.adapters[s.name]) for s in self.specs])
        return self

    def detach(self) -> None:
        if self._attachment is not None:
            self._attachment.remove()
            self._attachment = None

    def added_modules(self) -> list[AddedModule]:
        return [AddedModule(s, {k: v.detach().cpu().clone()
                                for k, v in self.adapters[s.name].state_dict().items()}) for s in self.specs]


def key(name: str) -> str:
    """Module names cannot hold dots."""
    return name.replace(".", "_")


# ---- facilitated transport ---------------------------------------------------------------------------------
def special_token_ids(tokenizer) -> set[int]:
    return set(tokenizer.convert_tokens_to_ids(list(tokenizer.special_tokens_map.values())))


def token_sets(tokenizer, prompts: list[str]) -> list[set[int]]:
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    special = special_token_ids(tokenizer)
    return [set(row.tolist()) - special for row in ids]


def matching_scores(prompt_embeds: torch.Tensor, prompt_tokens: list[set[int]], erased_embeds: torch.Tensor,
                    erased_tokens: list[set[int]]) -> torch.Tensor:
    """calculate_matching_score("clipcos_tokenuni") for each prompt (rows) and erased prompt (columns):
    max(cosine of the flattened encodings, share of the erased prompt's tokens the prompt contains)."""
    cos = F.cosine_similarity(prompt_embeds.flatten(1)[:, None], erased_embeds.flatten(1)[None], dim=-1)
    uni = torch.tensor([[len(p & e) / len(e) if e else 0.0 for e in erased_tokens] for p in prompt_tokens],
                       dtype=cos.dtype)
    return torch.maximum(cos, uni.to(cos.device))


def transport_multipliers(scores: torch.Tensor, power: float) -> torch.Tensor:
    """One multiplier per prompt: the best match over the erased prompts, to the power the adapter sees it."""
    return scores.max(dim=1).values ** power


class FacilitatedTransport:
    """infer_spm.py's per-prompt scaling as a generation hook (generation/hooks.py) over the SPM adapters of
    the Edit applied to the pipeline: at each batch, every probe's prompt gets m = its best matching score
    with the erased prompts, to `power` (the adapters' `transport` settings); before each UNet call every row
    gets its probe's m (its unconditional and conditional branches alike: the reference runs both in one
    pipeline call with the reweighted adapters), padding rows 0. An edit made with transport off keeps every
    row at 1."""

    def __init__(self):
        self.adapters: list[SPMAdapter] = []
        self.per_probe = torch.ones(0)

    @staticmethod
    def multipliers(pipe, settings: dict, prompts: list[str]) -> torch.Tensor:
        if not settings:
            return torch.ones(len(prompts))
        encode = PromptEncoder(pipe)
        erased = settings["erased_prompts"]
        scores = matching_scores(encode(prompts), token_sets(pipe.tokenizer, prompts), encode(erased),
                                 token_sets(pipe.tokenizer, settings["erased_words"]))
        return transport_multipliers(scores, settings["power"]).cpu()

    def on_batch_start(self, pipe, probes) -> None:
        self.adapters = [m for m in attached_modules(pipe).values() if isinstance(m, SPMAdapter)]
        settings = self.adapters[0].transport if self.adapters else {}
        self.per_probe = self.multipliers(pipe, settings, [p.prompt for p in probes])

    def on_unet_call(self, step_index, timestep, rows) -> None:
        m = torch.tensor([0.0 if r is None else float(self.per_probe[r[0]]) for r in rows])
        for adapter in self.adapters:
            adapter.multiplier = m

    def on_batch_end(self, probes, image_keys) -> None:
        for adapter in self.adapters:
            adapter.multiplier = 1.0


# ---- training ----------------------------------------------------------------------------------------------
def training_scheduler(pipe):
    """create_noise_scheduler("ddim"): the model's betas and prediction type, steps_offset 0, final ᾱ 1."""
    from diffusers import DDIMScheduler

    cfg = pipe.scheduler.config
    return DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule, clip_sample=False,
                         prediction_type=cfg.get("prediction_type", "epsilon"))


def cosine_with_restarts(step: int, warmup: int, total: int, cycles: int) -> float:
    """diffusers' get_cosine_with_hard_restarts_schedule_with_warmup factor for optimiser step `step`."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))


def predict_noise(unet, latents: torch.Tensor, t, embeddings: torch.Tensor, guidance: float) -> torch.Tensor:
    """train_util.predict_noise: the latents twice, the embeddings as given, the output's two halves
    guided."""
    out = unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeddings).sample
    first, second = out.chunk(2)
    return first + guidance * (second - first)


def anchor_embeddings(target: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """sample(): n embeddings of the target's shape, isotropic directions kept with probability 1 − cos to
    the target, scaled by U[0.8, 1.2)·‖target‖."""
    flat = target.reshape(-1)
    out = []
    while len(out) < n:
        while True:
            noise = torch.randn(target.shape, generator=generator).to(target)
            noise = noise / noise.reshape(-1).norm()
            sim = F.cosine_similarity(flat, noise.reshape(-1), dim=-1)
            if float(torch.rand(1, generator=generator)) < 1 - float(sim):
                break
        scale = float(torch.rand(1, generator=generator)) * 0.4 + 0.8
        out.append(scale * noise * flat.norm())
    return torch.stack(out)


def training_size(pipe, cfg: SPMConfig) -> int:
    """The training image side in pixels; refuses a dynamic bucket with no 64 px size in [side/2, side)."""
    size = cfg.resolution or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    if cfg.dynamic_resolution and not 0 < (size // 2) // 64 < size // 64:
        raise EraseLabError(f"dynamic_resolution draws sizes in 64 px steps from [{size // 2}, {size}), "
                            "which holds none; set dynamic_resolution=false or a resolution of at least 192")
    return size


@dataclass
class StepInputs:
    """What one training step draws: rollout length, latent size, start noise and anchors."""

    steps_to: int
    noise: torch.Tensor
    anchors: torch.Tensor


@register
class SPM(Eraser):
    name = "spm"
    description = "one-dimensional adapters with latent anchoring, scaled per prompt at inference"
    Config = SPMConfig

    def erase(self, pipe, request: EraseRequest):
        cfg: SPMConfig = request.config
        training_size(pipe, cfg)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed)
        prompts = [concept_prompt(pipe, t) for t in request.targets]
        transport = ({"erased_prompts": prompts, "erased_words": list(request.targets),
                      "power": cfg.transport_power} if cfg.transport else {})
        membrane = Membrane(pipe.unet, cfg.rank, cfg.alpha, generator, transport)
        encode = PromptEncoder(pipe)
        encoded = dict(zip(["", *prompts], encode(["", *prompts])))
        flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
        pipe.unet.requires_grad_(False)
        membrane.attach(pipe)
        try:
            params = list(membrane.parameters())
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=cfg.weight_decay)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_restarts(
                s, cfg.lr_warmup_steps, cfg.iterations, cfg.lr_cycles))
            sched = training_scheduler(pipe)
            losses = []
            with progress_bar(cfg.iterations, self.name, request.progress) as advance:
                for _ in range(cfg.iterations):
                    prompt = prompts[int(torch.randint(len(prompts), (1,), generator=generator))]
                    inputs = self.draw(pipe, cfg, encoded[prompt], generator)
                    loss = self.loss(pipe, membrane, sched, cfg, encoded[""], encoded[prompt], inputs)
                    rebalance_threads()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise EraseLabError("the training loss became non-finite; lower the learning rate")
                    losses.append(value)
                    advance(value)
        finally:
            membrane.detach()
            for n, p in pipe.unet.named_parameters():
                p.requires_grad_(flags[n])
        return self.package(pipe, request, cfg, membrane, prompts, round(time.perf_counter() - started, 3),
                            loss_summary(losses))

    # ---- one step ------------------------------------------------------------------------------------------
    @staticmethod
    def draw(pipe, cfg: SPMConfig, target: torch.Tensor, generator: torch.Generator) -> StepInputs:
        """The reference's draws, in its order: rollout length, (dynamic) size, start noise, anchors."""
        steps_to = int(torch.randint(1, cfg.max_denoising_steps, (1,), generator=generator))
        size = training_size(pipe, cfg)
        h = w = size
        if cfg.dynamic_resolution:  # get_random_resolution_in_bucket
            lo, hi = (size // 2) // 64, size // 64
            h = int(torch.randint(lo, hi, (1,), generator=generator)) * 64
            w = int(torch.randint(lo, hi, (1,), generator=generator)) * 64
        f = int(pipe.vae_scale_factor)
        noise = torch.randn((1, int(pipe.unet.config.in_channels), h // f, w // f), generator=generator)
        anchors = anchor_embeddings(target, cfg.anchors, generator) if cfg.la_strength > 0 else target[:0]
        return StepInputs(steps_to, noise.to(pipe.unet.device), anchors)

    @staticmethod
    def loss(pipe, membrane: Membrane, sched, cfg: SPMConfig, uncond: torch.Tensor, target: torch.Tensor,
             inputs: StepInputs) -> torch.Tensor:
        """train_spm.py's loss for one step (erase_with_la), differentiable in the adapters."""
        unet = pipe.unet
        sched.set_timesteps(cfg.max_denoising_steps)
        schedule = NoiseSchedule(sched.alphas_cumprod.float(), sched.timesteps.long(), 1.0,
                                 sched.config.prediction_type, cfg.max_denoising_steps, sched)
        membrane.multiplier = 1.0
        # scheduler_rollout multiplies by init_noise_sigma, as get_initial_latents does
        z = rollout(unet, schedule, inputs.noise, target, uncond, inputs.steps_to, cfg.rollout_guidance)
        sched.set_timesteps(1000)
        t = sched.timesteps[int(inputs.steps_to * 1000 / cfg.max_denoising_steps)]
        pair = torch.stack([uncond, target])
        membrane.multiplier = 0.0
        with torch.no_grad():
            positive_out = predict_noise(unet, z, t, pair, 1.0)
            neutral_out = predict_noise(unet, z, t, torch.stack([uncond, uncond]), 1.0)
        membrane.multiplier = 1.0
        target_out = predict_noise(unet, z, t, pair, 1.0)
        loss = F.mse_loss(target_out, neutral_out - cfg.negative_guidance * (positive_out - neutral_out))
        if cfg.la_strength > 0:
            anchors = torch.cat([torch.stack([uncond, s]) for s in inputs.anchors])
            repeated = z.repeat(len(inputs.anchors), 1, 1, 1)
            anchored = predict_noise(unet, repeated, t, anchors, 1.0)
            membrane.multiplier = 0.0
            with torch.no_grad():
                original = predict_noise(unet, repeated, t, anchors, 1.0)
            loss = loss + cfg.la_strength * F.mse_loss(anchored, original)
        membrane.multiplier = 0.0
        return loss

    def package(self, pipe, request, cfg, membrane, prompts, seconds, summary) -> edits.Edit:
        """The Edit: no parameter changes, one added module per adapter (edit_modules.py)."""
        from ..models import fingerprint

        extras = {"adapters": len(membrane.specs), "erased_prompts": prompts,
                  "adapter_parameters": sum(p.numel() for p in membrane.parameters()), **summary}
        return edits.Edit(tensors={}, modules=membrane.added_modules(), method=self.name,
                          base_fingerprint=fingerprint(pipe), config=cfg.as_dict(),
                          targets=list(request.targets), preserved=list(request.preserve), seconds=seconds,
                          extras=extras)
