"""Receler — Reliable Concept Erasing via Lightweight Erasers (Huang et al., ECCV 2024): a small eraser
network after every cross-attention of the UNet, trained with ESD's negative-guidance loss, adversarial
prompts and a concept-localised regulariser; the UNet's own weights never change, so the Edit carries the
erasers as added modules (edit_modules.py).

Reference: jasper0314-huang/Receler@3ccedc9aa1c2a2644258edf67e564a07447019c0, train_receler.py with
receler/erasers/utils.py (AdapterEraser), receler/erasers/ldm_erasers.py (where the eraser acts),
receler/erasers/diffusers_erasers.py (the same at inference), receler/concept_reg.py (get_mask, the captures)
and receler/ldm/models/diffusion/ddim.py (the partial rollout). Settings of train_receler.py's command line
(the README's): 500 iterations, Adam lr 3e-4, eraser rank 128, start (rollout) guidance 3, negative guidance
1, 50 DDIM steps, concept_reg_weight 0.1, mask_thres 0.1, 50 adversarial iterations, 16 adversarial prompts
(Adam lr 0.1, weight decay 0.1).

Eraser: h ↦ h + up(GELU(down(h))) on each cross-attention output h (attn2, its output projection included),
down a default-initialised Linear(dim, rank), up a zero-initialised Linear(rank, dim).
One iteration (batch 1, one target drawn per iteration):
1. t_enc ~ U{0..S−1}, t ~ U[round(t_enc/S·T), round((t_enc+1)/S·T)); a latent z rolled out from noise with
   CFG 3 on the target, by the model with its erasers (ESD's CompVis pairing, diffusion.py);
2. with the erasers off: ε*(z, ∅) and ε*(z, c), recording the cross-attention of the latter;
3. masks: each 16×16 cross-attention layer's map of the target's word tokens (mean over the tokens, then over
   heads), averaged over those layers, min-max normalised per image, thresholded at 0.1, resized (nearest) to
   every eraser's resolution;
4. the adversarial inner loop (below), then ε_θ(z, c) with the erasers on, and
   loss = ‖ε_θ(z, c) − [ε*(∅) − η(ε*(c) − ε*(∅))]‖² + λ · mean over erasers of
          Σ_pixels mean_channels (eraser output outside the mask)² / #pixels outside the mask.
   Adam on the erasers' parameters only.

The adversarial prompts of the official code never reach the erasers' training: train_receler.py writes them
with `emb_n[:, advrs_indices, :].data = ...`, which assigns to the copy that advanced indexing returns, so the
conditioning ε_θ sees stays the plain target embedding; the prompts are optimised against it (Adam on
‖ε_θ(z, c ⊕ prompts) − ε*(z, c)‖²) but change nothing else. eraselab reproduces that outcome by default
without running the inner loop (the erasers' update is the same); `insert_adversarial` (eraselab's fix, off in
the recipe) writes the prompts into the conditioning after the target's tokens, as the paper describes, and
runs the loop: `adversarial_iterations` attack steps, the last one's ε_θ is the one trained on.

Deviations: the official code takes masks from 16×16 maps, the resolution SD 1.x has at 512 px; other models
name the map side with `mask_map_size` (0 = the coarsest cross-attention resolution outside the mid block, the
one 16 is on SD 1.x). The official conditions on the bare concept; on miniworld the caption form ("a circle",
text.concept_prompt), with the mask on the concept's own tokens and the adversarial prompts after the caption.
Erasers start from the method's seed rather than torch's global state.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attention import token_positions
from ..edit_modules import AddedModule, ModuleSpec, attach
from ..edits import Edit, applied_edit
from ..errors import EraseLabError
from ..models import fingerprint
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
from .diffusion import NoiseSchedule, latent_shape, rollout, unet_out
from .esd import esd_target
from .registry import register
from .text import PromptEncoder, concept_prompt
from .training import loss_summary, progress_bar

REFERENCE = Reference(
    "jasper0314-huang/Receler", "3ccedc9aa1c2a2644258edf67e564a07447019c0", "train_receler.py"
)
ERASER_KIND = "receler_eraser"  # edit_modules.MODULE_KINDS
MASK_EPS = 1e-9  # concept_reg's guard against an all-concept mask


class AdapterEraser(torch.nn.Module):
    """Receler's eraser: up(GELU(down(h))) on a cross-attention output h, up zero-initialised so a fresh
    eraser changes nothing (receler/erasers/utils.py AdapterEraser)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = torch.nn.Linear(dim, rank)
        self.act = torch.nn.GELU()
        self.up = torch.nn.Linear(rank, dim)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden_states)))


@dataclass
class ReceLerConfig(MethodConfig):
    iterations: int = setting(500, "training steps (batch 1, one target per step)", POSITIVE)
    lr: float = setting(3e-4, "Adam learning rate of the erasers", POSITIVE)
    eraser_rank: int = setting(128, "hidden width of each eraser", POSITIVE)
    negative_guidance: float = setting(1.0, "η of ESD's target ε*(∅) − η(ε*(c) − ε*(∅))")
    rollout_guidance: float = setting(3.0, "CFG scale of the partial rollout")
    ddim_steps: int = setting(50, "DDIM steps of the sampler the partial rollout stops inside", POSITIVE)
    concept_reg_weight: float = setting(0.1, "weight of the concept-localised regulariser", NON_NEGATIVE)
    mask_threshold: float = setting(0.1, "threshold of the min-max normalised attention map", POSITIVE)
    mask_map_size: int = setting(16, "side of the cross-attention maps the mask averages (16 = SD 1.x at "
                                 "512 px; 0 = the model's coarsest outside the mid block)", NON_NEGATIVE)
    adversarial_iterations: int = setting(
        50, "attack steps per iteration (run only with insert_adversarial)", POSITIVE)
    adversarial_prompts: int = setting(16, "learned adversarial embeddings per target", POSITIVE)
    adversarial_lr: float = setting(0.1, "Adam learning rate of the adversarial embeddings", POSITIVE)
    adversarial_weight_decay: float = setting(
        0.1, "Adam weight decay of the adversarial embeddings", NON_NEGATIVE)
    insert_adversarial: bool = setting(False, "eraselab's fix: feed the adversarial embeddings to the "
                                       "erasers' training (the official code never does)")

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe(
            "official",
            REFERENCE,
            (
                "train_receler.py's defaults: rank-128 erasers after every cross-attention, 500 steps at lr "
                "3e-4, concept-localised regularisation 0.1 on 16×16 attention masks (threshold 0.1), 16 "
                "adversarial prompts × 50 attack steps (which the official code never feeds to the erasers)"
            ),
        ),
    )
    # 8×8 latents: a coarser DDIM grid, maps of the model's own coarsest level, and a larger step size so the
    # erasers move within fewer iterations. lr chosen on circle and star (tuning half of preset_trials.py),
    # checked on heart and triangle: at 1e-3 (chosen on circle alone) hearts kept half their rate.
    miniworld: ClassVar[dict] = {"iterations": 200, "lr": 2e-3, "ddim_steps": 20, "mask_map_size": 0,
                                 "eraser_rank": 32}

    def validate(self) -> None:
        super().validate()
        if self.mask_threshold > 1:
            raise EraseLabError(f"config mask_threshold must be at most 1 (the map is normalised to [0, 1]), "
                                f"got {self.mask_threshold}")


def eraser_sites(unet) -> list[str]:
    """UNet-relative names of the cross-attention modules that get an eraser: attn2 of every
    BasicTransformerBlock, in the UNet's module order (what ldm_erasers.py replaces)."""
    return [
        f"{name}.attn2"
        for name, module in unet.named_modules()
        if type(module).__name__ == "BasicTransformerBlock" and getattr(module, "attn2", None) is not None
    ]


def eraser_specs(unet, rank: int) -> list[ModuleSpec]:
    specs = []
    for site in eraser_sites(unet):
        dim = unet.get_submodule(site).to_out[0].out_features
        specs.append(
            ModuleSpec(site, ERASER_KIND, f"unet.{site}", "add_to_output", {"dim": dim, "rank": rank})
        )
    return specs


def build_erasers(specs: list[ModuleSpec], seed: int) -> dict[str, AdapterEraser]:
    """Fresh erasers in spec order, their `down` layers drawn from torch's default init under `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {spec.name: spec.build() for spec in specs}


class CrossAttentionProbs:
    """Records softmax(QKᵀ/√d) of the chosen rows at every eraser site during one UNet call, per site as
    (rows, heads, pixels, tokens); the LDM CrossAttention Receler edits returns these beside its output."""

    def __init__(self, unet, sites: list[str]):
        self.unet, self.sites = unet, sites
        self.probs: dict[str, torch.Tensor] = {}

    @contextmanager
    def recording(self, rows: list[int]):
        self.probs = {}
        handles = [
            self.unet.get_submodule(site).register_forward_hook(self._hook(site, rows), with_kwargs=True)
            for site in self.sites
        ]
        try:
            yield self.probs
        finally:
            for h in handles:
                h.remove()

    def _hook(self, site: str, rows: list[int]):
        def record(attn, args, kwargs, out):
            hs = args[0] if args else kwargs["hidden_states"]
            ehs = kwargs.get("encoder_hidden_states")
            if ehs is None and len(args) > 1:
                ehs = args[1]
            idx = torch.tensor(rows, device=hs.device)
            q = attn.head_to_batch_dim(attn.to_q(hs.index_select(0, idx)))
            k = attn.head_to_batch_dim(attn.to_k(ehs.index_select(0, idx)))
            p = attn.get_attention_scores(q, k, None)
            self.probs[site] = p.view(len(rows), attn.heads, p.shape[1], p.shape[2])

        return record


def concept_masks(probs: dict[str, torch.Tensor], word_indices: list[int], threshold: float,
                  map_size: int) -> dict[str, torch.Tensor]:
    """concept_reg.get_mask: site → (rows, side, side) binary mask of where the word's tokens are attended.

    map_size 0: the smallest map side among the sites outside the mid block."""
    maps, sides = {}, {}
    for site, p in probs.items():
        a = p[..., word_indices].mean(-1).mean(1)  # (rows, pixels)
        side = math.isqrt(a.shape[-1])
        if side * side != a.shape[-1]:
            raise EraseLabError(f"cross-attention at {site} has {a.shape[-1]} positions, not a square map; "
                                "train Receler at a square image size")
        maps[site], sides[site] = a.view(-1, side, side), side
    if not map_size:
        map_size = min(s for site, s in sides.items() if not site.startswith("mid_block"))
    chosen = [maps[site] for site in maps if sides[site] == map_size]
    if not chosen:
        raise EraseLabError(
            f"no cross-attention map is {map_size}×{map_size} on this model (it has "
            f"{', '.join(str(s) for s in sorted(set(sides.values())))}); set mask_map_size to "
            "one of those or 0"
        )
    avg = torch.stack(chosen, dim=1).mean(1)  # (rows, side, side)
    lo = avg.amin(dim=(1, 2), keepdim=True)
    hi = avg.amax(dim=(1, 2), keepdim=True)
    mask = (avg - lo) / (hi - lo)
    mask = (mask >= threshold).to(avg.dtype)
    resized = {
        side: F.interpolate(mask.unsqueeze(0), (side, side)).squeeze(0) for side in set(sides.values())
    }
    return {site: resized[sides[site]] for site in maps}


def localisation_loss(
    eraser_outputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The concept-localised regulariser: each eraser's output outside its mask, squared, averaged over
    channels, summed over pixels and divided by the outside's pixel count; then the mean over erasers."""
    terms = []
    for site, out in eraser_outputs.items():
        outside = 1.0 - masks[site].unsqueeze(1)  # (rows, 1, side, side)
        side = outside.shape[2]
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, -1)  # (rows, dim, side, side)
        terms.append(((out * outside) ** 2).mean(1).sum() / (outside.sum() + MASK_EPS))
    return torch.stack(terms).mean()


class ReceLerTraining:
    """The erasers hooked into `pipe.unet`, their optimiser, the adversarial embeddings and one step's
    parts."""

    def __init__(self, pipe, targets: list[str], cfg: ReceLerConfig):
        unet = pipe.unet
        if unet.dtype != torch.float32:
            raise EraseLabError(f"Receler trains in float32 but the UNet is {unet.dtype}; load the model "
                                "without a half-precision dtype")
        if applied_edit(pipe) is not None:
            raise EraseLabError(
                "the pipeline already has an edit applied; revert it (edit.revert(pipe)) before "
                "erasing, so the new edit is relative to the base model"
            )
        self.pipe, self.unet, self.cfg = pipe, unet, cfg
        self.specs = eraser_specs(unet, cfg.eraser_rank)
        if not self.specs:
            raise EraseLabError(
                "this UNet has no transformer blocks with cross-attention; Receler needs them"
            )
        self.erasers = build_erasers(self.specs, cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        encode = PromptEncoder(pipe)
        self.prompts = {t: concept_prompt(pipe, t) for t in targets}
        self.conds = dict(zip(targets, encode(list(self.prompts.values()))))
        self.uncond = encode([""])[0]
        tokenizer = pipe.tokenizer
        self.word_indices, self.adv_indices = {}, {}
        for t, prompt in self.prompts.items():
            words = token_positions(tokenizer, prompt, t)
            if not words:
                raise EraseLabError(
                    f"{t!r} has no tokens in its prompt {prompt!r}; name the concept as prompts write it"
                )
            start = encode.last_subject_index(prompt) + 1  # the end-of-text token, after the prompt's words
            if start + cfg.adversarial_prompts > tokenizer.model_max_length:
                raise EraseLabError(
                    f"{cfg.adversarial_prompts} adversarial prompts do not fit after {prompt!r} "
                    f"in {tokenizer.model_max_length} tokens; lower adversarial_prompts"
                )
            self.word_indices[t] = words
            self.adv_indices[t] = list(range(start, start + cfg.adversarial_prompts))
        dim = self.uncond.shape[-1]
        self.adversarial = {t: torch.nn.Parameter(torch.rand((1, cfg.adversarial_prompts, dim),
                                                             generator=self.generator).to(unet.device))
                            for t in targets}
        self.adversarial_opts = {t: torch.optim.Adam([p], lr=cfg.adversarial_lr,
                                                     weight_decay=cfg.adversarial_weight_decay)
                                 for t, p in self.adversarial.items()}
        self.schedule = NoiseSchedule.from_pipe(pipe, cfg.ddim_steps)
        self.capture = CrossAttentionProbs(unet, [s.name for s in self.specs])
        self._grad_flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        unet.requires_grad_(False)
        params = [p for e in self.erasers.values() for p in e.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.attachment = attach(pipe, [(s, self.erasers[s.name]) for s in self.specs])
        self.outputs: dict[str, torch.Tensor] = {}
        self._output_hooks = [
            e.register_forward_hook(self._keep_output(name)) for name, e in self.erasers.items()
        ]
        self.losses: list[float] = []

    def _keep_output(self, name: str):
        def keep(module, args, out):
            self.outputs[name] = out

        return keep

    def close(self) -> None:
        """Take the erasers out of the UNet and give its parameters their grad flags back."""
        self.attachment.remove()
        for h in self._output_hooks:
            h.remove()
        for n, p in self.unet.named_parameters():
            p.requires_grad_(self._grad_flags[n])

    # ---- one iteration -------------------------------------------------------------------------------------
    def draw(self) -> tuple[str, int, int, torch.Tensor]:
        """(target, rollout steps, training timestep, start noise), in the official order of draws."""
        targets = list(self.conds)
        target = targets[int(torch.randint(len(targets), (1,), generator=self.generator))]
        _, stop, t = self.schedule.compvis_draw(self.generator)
        noise = torch.randn(latent_shape(self.pipe, 1), generator=self.generator).to(self.unet.device)
        return target, stop, t, noise

    def latent(self, target: str, stop: int, noise: torch.Tensor) -> torch.Tensor:
        """The partial rollout, by the model with its erasers."""
        return rollout(self.unet, self.schedule, noise, self.conds[target], self.uncond, stop,
                       self.cfg.rollout_guidance)

    @torch.no_grad()
    def frozen(self, target: str, z: torch.Tensor, t: int):
        """ε*(z, ∅), ε*(z, c) with the erasers off, and the masks from the latter's cross-attention."""
        with self.attachment.disabled():
            # Two calls as the official code makes them: batching them moves the loss's gradients by ~1e-5.
            e_0 = unet_out(self.unet, z, t, self.uncond)
            with self.capture.recording(rows=[0]) as probs:
                e_p = unet_out(self.unet, z, t, self.conds[target])
        masks = concept_masks(
            probs, self.word_indices[target], self.cfg.mask_threshold, self.cfg.mask_map_size
        )
        return e_0, e_p, masks

    def attacked_prediction(self, target: str, z: torch.Tensor, t: int, e_p: torch.Tensor) -> torch.Tensor:
        """ε_θ(z, ·) the erasers train on: on the plain target (the official outcome), or with
        insert_adversarial after the attack steps, each an Adam step on the embeddings against ‖ε_θ(z, c ⊕ a)
        − ε*(z, c)‖²."""
        cond = self.conds[target].unsqueeze(0)
        if not self.cfg.insert_adversarial:
            return unet_out(self.unet, z, t, cond)
        prompts, opt, idx = self.adversarial[target], self.adversarial_opts[target], self.adv_indices[target]
        for inner in range(self.cfg.adversarial_iterations):
            attacked = cond.detach().clone()
            attacked[:, idx, :] = prompts.detach()
            attacked.requires_grad_(True)
            e_n = unet_out(self.unet, z, t, attacked)
            last = inner == self.cfg.adversarial_iterations - 1
            grad, = torch.autograd.grad(F.mse_loss(e_n, e_p), [attacked], retain_graph=last)
            prompts.grad = grad[:, idx, :]
            opt.step()
            opt.zero_grad()
        return e_n

    def loss(self, e_n, e_0, e_p, masks) -> torch.Tensor:
        erase = F.mse_loss(e_n, esd_target(e_0, e_p, self.cfg.negative_guidance))
        return erase + self.cfg.concept_reg_weight * localisation_loss(self.outputs, masks)

    def step_loss(self) -> torch.Tensor:
        """Draw, roll out, attack (if inserted) and return the erasers' loss, before its backward pass."""
        target, stop, t, noise = self.draw()
        z = self.latent(target, stop, noise)
        e_0, e_p, masks = self.frozen(target, z, t)
        self.outputs = {}
        e_n = self.attacked_prediction(target, z, t, e_p)
        return self.loss(e_n, e_0, e_p, masks)

    def iteration(self) -> float:
        rebalance_threads()
        loss = self.step_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise EraseLabError("the Receler loss became non-finite; lower the learning rate")
        self.losses.append(value)
        return value

    def modules(self) -> list[AddedModule]:
        return [
            AddedModule(
                s, {k: v.detach().cpu().clone() for k, v in self.erasers[s.name].state_dict().items()}
            )
            for s in self.specs
        ]


@register
class Receler(Eraser):
    name = "receler"
    description = (
        "Receler: lightweight erasers after cross-attention, adversarial prompts, localised regulariser"
    )
    Config = ReceLerConfig

    def erase(self, pipe, request: EraseRequest) -> Edit:
        cfg: ReceLerConfig = request.config
        started = time.perf_counter()
        base = fingerprint(pipe)
        training = ReceLerTraining(pipe, request.targets, cfg)
        try:
            with progress_bar(cfg.iterations, self.name, request.progress) as advance:
                for _ in range(cfg.iterations):
                    advance(training.iteration())
        finally:
            training.close()
        extras = {"erasers": len(training.specs), "eraser_parameters": sum(
            p.numel() for e in training.erasers.values() for p in e.parameters()),
            "adversarial": "inserted" if cfg.insert_adversarial else "not fed to the erasers (official code)",
            **loss_summary(training.losses)}
        return Edit(
            tensors={},
            method=self.name,
            base_fingerprint=base,
            config=cfg.as_dict(),
            targets=list(request.targets),
            preserved=list(request.preserve),
            seconds=round(time.perf_counter() - started, 3),
            extras=extras,
            modules=training.modules(),
        )
