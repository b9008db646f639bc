"""AdvUnlearn (Zhang et al., NeurIPS 2024): adversarial training of the text encoder. An inner attack learns
adversarial prompt tokens that bring the target concept back; the outer step trains the text encoder with
ESD's loss on that adversarial prompt, plus a utility-retaining term on a set of retain prompts.

Reference: OPTML-Group/AdvUnlearn@9d231249f9af13626e8bb9dcef5521f11d262498, train-scripts/AdvUnlearn.py with
utils/attack_util.py (soft_prompt_attack), utils/get_loss.py (get_train_loss_retain) and utils/util.py
(param_choices, sample_model), run as its README's command: text_encoder_full, PGD, attack_init random, 30
attack steps, retain_train reg on coco_object, retain_loss_w 0.3; the remaining settings are the script's
argparse defaults (1000 iterations, lr 1e-5, 200 warm-up iterations, one adversarial token prefixed, attack lr
1e-3, a new attack every iteration, retain batch 5, start guidance 3, negative guidance 1, 50 DDIM steps).

Every iteration, for a target c drawn at random (θ_T the trained text encoder, θ*_T the frozen one; the UNet ε
is never trained; rollouts and timesteps as in CompVis ESD, `NoiseSchedule.compvis_draw`):
- attack (from the warm-up on): k word embeddings a (random vocabulary words, or the last attack's) are
  placed in the target prompt's token embeddings (prefix_k: right after the start token) and Adam (attack lr)
  takes `attack_steps` steps on ‖ε(z, t, θ_T(ids; a)) − ε(z, t, θ*_T(c))‖², each with a fresh latent z rolled
  out on θ*_T(c). As the reference: the attack's gradient accumulates over its steps (no zero_grad), and the
  prompt it returns is the one the last step evaluated, before that step's update;
- train step: z rolled out on θ*_T(c) and retain latents z_r on θ*_T(r) for a batch of retain prompts r
  (drawn without replacement, the pool refilled when fewer than a batch remain), same t,
      ‖ε(z, t, θ_T(c_adv)) − [ε(z, t, ∅*) − η (ε(z, t, θ*_T(c)) − ε(z, t, ∅*))]‖²
      + w ‖ε(z_r, t, θ_T(r)) − ε(z_r, t, θ*_T(r))‖²
  with c_adv the adversarial prompt (the plain target during warm-up); Adam on the chosen text-encoder layers.
The result is an Edit of `text_encoder.*` parameters.

Retain prompts: the reference's coco_object list (data/advunlearn_coco_object_retain.txt) on open-world
models; on a closed world (the embedded miniworld model) the domain's other classes in the model's caption
form; the request's preserved concepts are added to either (the reference has no such input).
Not implemented: retain_train "iter", attack_embd_type "condition_embd", the batched attack variants.
eraselab's own option, off in the recipe: `attack_zero_grad` (reset the attack's gradient every step).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import edits
from ..errors import EraseLabError
from ..threads import rebalance_threads
from .base import (
    NON_NEGATIVE,
    POSITIVE,
    Eraser,
    EraseRequest,
    MethodConfig,
    OneOf,
    Recipe,
    Reference,
    setting,
)
from .diffusion import NoiseSchedule, ddim_rollout, latent_shape, unet_out
from .esd import esd_target
from .registry import register
from .text import PromptEncoder, concept_prompt
from .training import check_trainable, loss_summary, progress_bar
from .uce import preserved_concepts

REFERENCE = Reference("OPTML-Group/AdvUnlearn", "9d231249f9af13626e8bb9dcef5521f11d262498",
                      "train-scripts/AdvUnlearn.py")
RETAIN_FILE = "data/advunlearn_coco_object_retain.txt"

# param_choices' text-encoder methods: None = every transformer layer; otherwise the layer-name prefixes it
# matches with str.startswith, so "encoder.layers.1" also picks layers 10 and 11 (kept, as the reference).
TRAIN_METHODS: dict[str, tuple[str, ...] | None] = {
    "text_encoder_full": None,
    **{f"text_encoder_layer{'0123456789'[:n]}": tuple("0123456789"[:n]) for n in range(1, 11)},
    "text_encoder_layer012345678910": tuple("0123456789") + ("10",),
    "text_encoder_layer01234567891011": tuple("0123456789") + ("10", "11"),
    "text_encoder_layer0_11": ("0", "11"),
    "text_encoder_layer01_1011": ("0", "1", "10", "11"),
    "text_encoder_layer012_91011": ("0", "1", "2", "9", "10", "11"),
}
COMPONENTS = ("all", "ffn", "attn")
ATTACK_METHODS = ("pgd", "fast_at")
ATTACK_TYPES = ("prefix_k", "suffix_k", "replace_k", "add")
ATTACK_INITS = ("random", "latest")
RETAIN_SOURCES = ("auto", "coco_object", "domain", "none")


@dataclass
class AdvUnlearnConfig(MethodConfig):
    iterations: int = setting(1000, "training steps of the text encoder (batch 1 + retain batch)", POSITIVE)
    lr: float = setting(1e-5, "Adam learning rate of the text encoder", POSITIVE)
    negative_guidance: float = setting(1.0, "η of the ESD target (paper convention)")
    rollout_guidance: float = setting(3.0, "CFG scale of the partial rollouts (the reference's "
                                      "start_guidance)")
    ddim_steps: int = setting(50, "DDIM steps of the sampler the rollouts stop inside", POSITIVE)
    train_method: str = setting("text_encoder_full", "text-encoder layers trained: text_encoder_full or "
                                "text_encoder_layer<ids> as the reference's param_choices",
                                OneOf(TRAIN_METHODS))
    component: str = setting("all", "all, ffn (MLPs) or attn (self-attention) of the chosen layers",
                             OneOf(COMPONENTS))
    norm_layer: bool = setting(False, "also train the final layer norm (text_encoder_full with component "
                               "all trains it anyway)")
    attack_method: str = setting("pgd", "pgd (Adam on the gradient) or fast_at (Adam on its sign)",
                                 OneOf(ATTACK_METHODS))
    attack_steps: int = setting(30, "Adam steps of each attack", POSITIVE)
    attack_lr: float = setting(1e-3, "Adam learning rate of the adversarial word embeddings", POSITIVE)
    adv_prompt_num: int = setting(1, "adversarial tokens k", POSITIVE)
    attack_type: str = setting("prefix_k", "where they go: prefix_k, suffix_k, replace_k or add",
                               OneOf(ATTACK_TYPES))
    attack_init: str = setting("random", "random vocabulary words, or latest (the previous attack's)",
                               OneOf(ATTACK_INITS))
    warmup_iterations: int = setting(200, "iterations on the plain target before the attacks start",
                                     NON_NEGATIVE)
    adv_prompt_update_step: int = setting(1, "a new target draw (and attack) every n iterations", POSITIVE)
    retain_prompts: str = setting("auto", "auto (closed world: domain, else coco_object), coco_object (the "
                                  "reference's list), domain (the domain's other classes), none or a text "
                                  "file with one prompt per line")
    retain_batch: int = setting(5, "retain prompts per training step", POSITIVE)
    retain_loss_weight: float = setting(0.3, "weight w of the retain term", NON_NEGATIVE)
    attack_zero_grad: bool = setting(False, "eraselab option: reset the attack's gradient every step "
                                     "(reference: it accumulates)")

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe("official", REFERENCE,
               "the README's command: full text encoder, PGD attack of 30 steps on one prefixed token from a "
               "random init, 200 warm-up iterations, retain regularisation (coco_object, weight 0.3)"),
    )
    # miniworld's 8×8 latents and 3-layer, 64-wide text encoder: fewer iterations at a larger step, a shorter
    # warm-up and fewer attack steps at a larger attack lr (the attack must find a prompt within a few steps
    # of each iteration); chosen by trials on target circle (reported in benchmarks/RESULTS.md).
    miniworld: ClassVar[dict] = {"iterations": 120, "lr": 1.5e-3, "ddim_steps": 20, "warmup_iterations": 40,
                                 "attack_steps": 3, "attack_lr": 1e-2}


def trained_names(text_encoder: torch.nn.Module, train_method: str, component: str,
                  norm_layer: bool) -> list[str]:
    """Text-encoder parameter names param_choices trains (an optional "text_model." prefix ignored)."""
    layers = TRAIN_METHODS[train_method]
    out = []
    for name, _ in text_encoder.named_parameters():
        local = name.removeprefix("text_model.")
        if local.startswith("final_layer_norm"):
            if norm_layer or (layers is None and component == "all"):
                out.append(name)
        elif local.startswith("encoder"):
            if layers is not None and not any(local.startswith(f"encoder.layers.{i}") for i in layers):
                continue
            if component == "all" or (component == "ffn" and "mlp" in local) or \
                    (component == "attn" and "self_attn" in local):
                out.append(name)
    if not out:
        raise EraseLabError(f"train_method {train_method} with component {component} selects no parameter of "
                            "this text encoder; choose text_encoder_full or fewer layers")
    return out


def token_table(text_encoder) -> torch.nn.Embedding:
    table = text_encoder.get_input_embeddings() if hasattr(text_encoder, "get_input_embeddings") else None
    if not isinstance(table, torch.nn.Embedding):
        raise EraseLabError("advunlearn needs a CLIP-style text encoder with a token embedding table; use an "
                            "SD 1.x/2.x model")
    return table


def encode_word_embeddings(text_encoder, ids: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
    """The encoder's last hidden states with `word_embeddings` (B, tokens, d) in place of the token lookup
    (position embeddings, causal mask and layers unchanged: the reference's CustomTextEncoder); `ids` give
    only the shape here."""
    table = token_table(text_encoder)
    handle = table.register_forward_hook(lambda m, args, out: word_embeddings.to(out.dtype))
    try:
        return text_encoder(ids)[0]
    finally:
        handle.remove()


@dataclass
class TargetPrompt:
    """A target's token ids (1, tokens), its word embeddings (1, tokens, d) and its word count (the reference
    splits the sequence by words, assuming one token per word)."""

    ids: torch.Tensor
    embeddings: torch.Tensor
    words: int

    def split(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        """[start token, the prompt's words, the k positions after them, the rest] along dim 1."""
        n = x.shape[1]
        return list(torch.split(x, [1, self.words, k, n - 1 - self.words - k], dim=1))

    def adversarial(self, adv: torch.Tensor, attack_type: str) -> torch.Tensor:
        """The prompt's word embeddings with the k adversarial embeddings `adv` (1, k, d) placed as
        construct_embd places them (the sequence keeps its length: k trailing pads drop). The token ids the
        reference builds alongside change only the pooled output, which SD does not use."""
        k = adv.shape[1]
        sot, mid, _, eot = self.split(self.embeddings, k)
        if attack_type == "prefix_k":
            return torch.cat([sot, adv, mid, eot], 1)
        if attack_type == "suffix_k":
            return torch.cat([sot, mid, adv, eot], 1)
        pad = eot[:, :1]
        if attack_type == "replace_k":
            return torch.cat([sot, adv, pad.expand(-1, mid.shape[1], -1), eot], 1)
        # "add": the perturbation adds to the words' embeddings (k = the word count)
        return torch.cat([sot, adv + mid, pad.expand(-1, k, -1), eot], 1)


class TextEncoderTraining:
    """Adam on named parameters of `pipe.text_encoder`, in place; the UNet is frozen (no gradients kept).
    `finish()` returns the Edit of the trained parameters and puts the original weights back."""

    def __init__(self, pipe, names: list[str], lr: float, seed: int):
        encoder = pipe.text_encoder
        check_trainable(pipe, encoder, "the text encoder")
        self.pipe, self.encoder, self.names = pipe, encoder, names
        self.started = time.perf_counter()
        self.before = edits.snapshot(pipe, [f"text_encoder.{n}" for n in names])
        params = dict(encoder.named_parameters())
        self.originals = {n: params[n].detach().clone() for n in names}
        self._flags = {(c, n): p.requires_grad for c, m in (("te", encoder), ("unet", pipe.unet))
                       for n, p in m.named_parameters()}
        pipe.unet.requires_grad_(False)
        encoder.requires_grad_(False)
        self.trained = [params[n] for n in names]
        self.optimizer = torch.optim.Adam(self.trained, lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = encoder.device
        self.losses: list[float] = []
        self.set_trainable(True)

    def set_trainable(self, on: bool) -> None:
        for p in self.trained:
            p.requires_grad_(on)

    @contextmanager
    def frozen(self):
        """The attack's phase: the encoder's weights take no gradient (the reference's
        requires_grad_(False))."""
        self.set_trainable(False)
        try:
            yield
        finally:
            self.set_trainable(True)

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def step(self, loss: torch.Tensor) -> float:
        rebalance_threads()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        if value != value or value in (float("inf"), float("-inf")):
            raise EraseLabError("the training loss became non-finite; lower the learning rate")
        self.losses.append(value)
        return value

    def finish(self, method: str, config: dict, targets, preserved, extras: dict) -> edits.Edit:
        try:
            return edits.edit_from_changes(self.pipe, self.before, method, config=config,
                                           targets=list(targets), preserved=list(preserved),
                                           extras={**extras, **loss_summary(self.losses)},
                                           seconds=round(time.perf_counter() - self.started, 3))
        finally:
            self.restore()

    def restore(self) -> None:
        params = dict(self.encoder.named_parameters())
        with torch.no_grad():
            for n, old in self.originals.items():
                params[n].copy_(old)
        for (c, n), flag in self._flags.items():
            p = (params if c == "te" else dict(self.pipe.unet.named_parameters()))[n]
            p.requires_grad_(flag)
            p.grad = None


class RetainPool:
    """The retain prompts, drawn without replacement; refilled when fewer than a batch remain
    (PromptDataset)."""

    def __init__(self, prompts: list[str], generator: torch.Generator):
        self.prompts, self.generator = prompts, generator
        self.unseen = list(range(len(prompts)))

    def refill_if_short(self, batch: int) -> None:
        if len(self.unseen) < batch:
            self.unseen = list(range(len(self.prompts)))

    def draw(self, batch: int) -> list[str]:
        n = min(batch, len(self.unseen))
        picks = [self.unseen[int(i)] for i in torch.randperm(len(self.unseen), generator=self.generator)[:n]]
        self.unseen = [i for i in self.unseen if i not in picks]
        return [self.prompts[i] for i in picks]


def retain_prompts(pipe, request: EraseRequest, source: str) -> list[str]:
    """The retain set (see the module docstring) plus the request's preserved concepts."""
    domain = request.domain_for(pipe)
    if source == "auto":
        source = "domain" if domain.closed_world else "coco_object"
    if source == "coco_object":
        from ..models import package_path

        lines = package_path(RETAIN_FILE).read_text().splitlines()
    elif source == "domain":
        lines = [concept_prompt(pipe, c) for c in preserved_concepts(request.targets, [], "world", domain)]
    elif source == "none":
        lines = []
    else:
        from pathlib import Path

        path = Path(source)
        if not path.is_file():
            raise EraseLabError(f"retain_prompts {source!r} is neither auto, coco_object, domain, none nor a "
                                "file; pass one of those or a text file with one prompt per line")
        lines = path.read_text().splitlines()
    prompts = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    extra = [concept_prompt(pipe, p) for p in request.preserve]
    return prompts + [p for p in extra if p not in prompts]


@register
class AdvUnlearn(Eraser):
    name = "advunlearn"
    description = "adversarial training of the text encoder against adversarial prompts, with retain prompts"
    Config = AdvUnlearnConfig

    @classmethod
    def check_model(cls, request: EraseRequest, model: str) -> None:
        cfg = request.config
        if cfg.retain_prompts not in RETAIN_SOURCES:
            from pathlib import Path

            if not Path(cfg.retain_prompts).is_file():
                raise EraseLabError(f"retain_prompts {cfg.retain_prompts!r} is neither "
                                    f"{', '.join(RETAIN_SOURCES)} nor a file; pass one of those or a text "
                                    "file")

    def erase(self, pipe, request: EraseRequest):
        cfg: AdvUnlearnConfig = request.config
        token_table(pipe.text_encoder)
        names = trained_names(pipe.text_encoder, cfg.train_method, cfg.component, cfg.norm_layer)
        retain = retain_prompts(pipe, request, cfg.retain_prompts)
        prompts = [concept_prompt(pipe, t) for t in request.targets]
        targets = {p: self.target_prompt(pipe, p, cfg) for p in prompts}
        session = TextEncoderTraining(pipe, names, cfg.lr, cfg.seed)
        try:
            encode = PromptEncoder(pipe)  # θ*_T: every prompt is encoded before the first update
            frozen = dict(zip(["", *prompts, *retain], encode(["", *prompts, *retain])))
            schedule = NoiseSchedule.from_pipe(pipe, cfg.ddim_steps)
            pool = RetainPool(retain, session.generator)
            attack_losses: list[float] = []
            adv = prompt = None
            with progress_bar(cfg.iterations, self.name, request.progress) as advance:
                for i in range(cfg.iterations):
                    if i % cfg.adv_prompt_update_step == 0:
                        pool.refill_if_short(cfg.retain_batch)
                        prompt = prompts[int(torch.randint(len(prompts), (1,), generator=session.generator))]
                        if i >= cfg.warmup_iterations:
                            init = adv if cfg.attack_init == "latest" else None
                            adv, losses = self.attack(session, schedule, targets[prompt], frozen[""],
                                                      frozen[prompt], init, cfg)
                            attack_losses += losses
                    batch = pool.draw(cfg.retain_batch) if cfg.retain_loss_weight > 0 else []
                    advance(self.train_step(session, schedule, targets[prompt], frozen, prompt, batch,
                                            adv if i >= cfg.warmup_iterations else None, cfg))
        except BaseException:
            session.restore()
            raise
        extras = {"parameter_group": f"text_encoder:{cfg.train_method}:{cfg.component}",
                  "retain_prompts": len(retain),
                  "attack_loss_curve": loss_summary(attack_losses).get("loss_curve", [])}
        return session.finish(self.name, cfg.as_dict(), request.targets, request.preserve, extras)

    @staticmethod
    def target_prompt(pipe, prompt: str, cfg: AdvUnlearnConfig) -> TargetPrompt:
        tok = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(pipe.text_encoder.device)
        words = len(prompt.split())
        k = words if cfg.attack_type == "add" else cfg.adv_prompt_num
        if ids.shape[1] - 1 - words - k < 0:
            raise EraseLabError(f"the target prompt {prompt!r} leaves no room for {k} adversarial tokens; "
                                "use a shorter target or a smaller adv_prompt_num")
        with torch.no_grad():
            embeddings = token_table(pipe.text_encoder)(ids).detach().clone()
        return TargetPrompt(ids, embeddings, words)

    # ---- the inner attack ---------------------------------------------------------------------------------
    @staticmethod
    def attack(session: TextEncoderTraining, schedule: NoiseSchedule, target: TargetPrompt, uncond, cond,
               init: torch.Tensor | None, cfg: AdvUnlearnConfig) -> tuple[torch.Tensor, list[float]]:
        """soft_prompt_attack: returns the adversarial prompt's word embeddings (1, tokens, d), as the last
        step evaluated them, and the attack losses."""
        pipe = session.pipe
        k = target.words if cfg.attack_type == "add" else cfg.adv_prompt_num
        if init is not None:
            start = init[:, 1:1 + k]
        else:
            ids = torch.randint(len(pipe.tokenizer), (1, k), generator=session.generator).to(session.device)
            start = token_table(pipe.text_encoder).weight[ids]
        adv = start.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([adv], lr=cfg.attack_lr)
        losses, embeds = [], None
        with session.frozen():
            for _ in range(cfg.attack_steps):
                _, stop, t = schedule.compvis_draw(session.generator)
                z = ddim_rollout(pipe.unet, schedule, session.randn(latent_shape(pipe)), cond, uncond, stop,
                                 cfg.rollout_guidance)
                with torch.no_grad():
                    e_p = unet_out(pipe.unet, z, t, cond)
                embeds = target.adversarial(adv, cfg.attack_type)
                e_n = unet_out(pipe.unet, z, t, encode_word_embeddings(pipe.text_encoder, target.ids, embeds))
                loss = F.mse_loss(e_n, e_p)
                (grad,) = torch.autograd.grad(loss, [adv])
                adv.grad = grad if adv.grad is None or cfg.attack_zero_grad else adv.grad + grad
                if cfg.attack_method == "fast_at":
                    adv.grad = adv.grad.sign()
                optimizer.step()
                losses.append(float(loss.detach()))
        return embeds.detach(), losses

    # ---- the outer step -----------------------------------------------------------------------------------
    @staticmethod
    def train_step(session: TextEncoderTraining, schedule: NoiseSchedule, target: TargetPrompt, frozen: dict,
                   prompt: str, retain: list[str], adv: torch.Tensor | None, cfg: AdvUnlearnConfig) -> float:
        """get_train_loss_retain with retain_train "reg": one rollout batch for the target and the retain
        prompts (same stop, same t), frozen predictions, θ_T's predictions, Adam step."""
        pipe = session.pipe
        uncond, cond = frozen[""], frozen[prompt]
        _, stop, t = schedule.compvis_draw(session.generator)
        conds = torch.stack([cond, *[frozen[r] for r in retain]])
        noise = session.randn(latent_shape(pipe, len(conds)))
        z = ddim_rollout(pipe.unet, schedule, noise, conds, uncond, stop, cfg.rollout_guidance)
        with torch.no_grad():
            e_0 = unet_out(pipe.unet, z[:1], t, uncond)
            e_p = unet_out(pipe.unet, z, t, conds)
        if adv is None:
            trained = pipe.text_encoder(target.ids)[0]
        else:
            trained = encode_word_embeddings(pipe.text_encoder, target.ids, adv)
        if retain:
            ids = pipe.tokenizer(retain, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(session.device)
            trained = torch.cat([trained, pipe.text_encoder(ids)[0]])
        e_n = unet_out(pipe.unet, z, t, trained)
        loss = F.mse_loss(e_n[:1], esd_target(e_0, e_p[:1], cfg.negative_guidance))
        if retain:
            loss = loss + cfg.retain_loss_weight * F.mse_loss(e_n[1:], e_p[1:])
        return session.step(loss)
