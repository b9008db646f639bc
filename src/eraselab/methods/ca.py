"""CA — Concept Ablation (Kumari et al., ICCV 2023): fine-tune the cross-attention K/V projections so that
prompts naming the target produce what the same prompts naming the anchor (a broader concept: "grumpy cat" →
"cat") produce.

Reference: nupurkmr9/concept-ablation@c11fb1bdc7cd97ea65877b0d41722f5e3ef2561f, diffusers/train.py (with
diffusers/utils.py and the published commands in diffusers/README.md). Per training step, on a batch of anchor
images x₀ with their anchor captions c (c* = the caption with the anchor word replaced by the target):

    x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε,   t ~ U{0..T−1}
    model-based (the default):  L = ‖ε_θ(x_t, c*, t) − sg[ε_θ(x_t, c, t)]‖²_M   (θ: the model being trained)
    noise-based:                L = ‖ε_θ(x_t, c*, t) − ε‖²_M
    ‖·‖²_M: squared error summed over latent channels, averaged over the valid-image mask M (on the official
    --noaug data path the outermost latent pixel is masked out), averaged over the batch.

With --with_prior_preservation (config prior_loss_weight > 0; the README adds it only when target and anchor
share words, e.g. "grumpy cat" → "cat") a second batch of anchor images with their anchor captions adds
w · mean ‖ε_θ(x'_t, c', t') − ε'‖². Optimiser: AdamW (β 0.9/0.999, ε 1e-8, weight decay 1e-2), gradient norm
clipped to 1.0, constant lr 2e-6 × total batch (--scale_lr; ×2 more with the prior term). The published
object/style runs use 2 GPUs × batch 4 = total batch 8 for 100 steps, so lr 1.6e-5. Anchor data: 1000 images
from the original model (25 steps, guidance 6) cycling through 200 captions of the anchor (files shipped for
cat/dog/fish/robot, else written by an LLM).

Where eraselab differs from train.py, and why:
- anchor images are latents from eraselab's DDIM sampler (the official code samples DPM-Solver++ images, saves
  JPEGs and re-encodes them with a VAE posterior sample); the horizontal flips are applied to the latents;
- no random-rescale augmentation (nor its "a far away"/"zoomed in" prompt prefixes): the object commands use
  it, the style commands run --noaug; eraselab always trains as --noaug;
- anchors without a shipped caption file get eraselab's own 200 caption templates instead of LLM captions,
  styles get eraselab's own painting captions instead of LAION alt texts (data/ca_captions_LICENSE.txt);
- in a domain with its own caption grammar (miniworld) the captions follow it ("a red round shape", "a round
  shape and a blue star");
- batches come from reshuffled epochs without partial batches; prior images are an independent draw.

eraselab's earlier formulation (noise-based, the anchor term on the same noised latents with the bare anchor
word, plain Adam, unscaled lr, no clipping, unmasked mean) stays reachable: objective=noise-based
prior_loss_weight=1 prior_same_noise=true anchor_captions=bare scale_lr=false weight_decay=0 max_grad_norm=0
masked_loss=false hflip=false. `prior_same_noise` is eraselab's own option, off in both recipes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..domain import Domain, noun_phrase, ordered
from ..errors import EraseLabError
from ..hierarchy import parse_concept
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
from .registry import register
from .text import PromptEncoder, concept_prompt
from .training import TrainingSession, progress_bar

REFERENCE = Reference("nupurkmr9/concept-ablation", "c11fb1bdc7cd97ea65877b0d41722f5e3ef2561f",
                      "diffusers/train.py")
# Anchors with a caption list in the official repository (assets/finetune_prompts/<anchor>.txt); shipped.
OFFICIAL_CAPTION_ANCHORS = ("cat", "dog", "fish", "robot")


@dataclass
class CAConfig(MethodConfig):
    anchor: str = setting("auto", "concept the target should turn into (auto: the targets' parent concept "
                          "in the model's domain, miniworld's or the WordNet taxonomy's; 'painting' for "
                          "styles)")
    concept_type: str = setting("object", "object (the anchor word in each caption is replaced by the "
                                "target) or style (the target style is added to painting captions)",
                                OneOf(("object", "style")))
    objective: str = setting("model-based", "model-based (target: the model's own prediction for the "
                             "anchor caption) or noise-based (target: the added noise)",
                             OneOf(("model-based", "noise-based")))
    iterations: int = setting(100, "training steps", POSITIVE)
    lr: float = setting(2e-6, "AdamW learning rate per image (multiplied by batch_size when scale_lr is on)",
                        POSITIVE)
    scale_lr: bool = setting(True, "multiply lr by batch_size (and by 2 with the prior term), as "
                             "train.py's --scale_lr")
    batch_size: int = setting(8, "anchor images per step (the published runs: 2 GPUs × 4)", POSITIVE)
    weight_decay: float = setting(1e-2, "AdamW weight decay (0 = plain Adam)", NON_NEGATIVE)
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0 = no clipping)", NON_NEGATIVE)
    prior_loss_weight: float = setting(0.0, "weight of the noise-prediction loss on anchor images with "
                                       "their anchor captions (--with_prior_preservation; 0 = off)",
                                       NON_NEGATIVE)
    prior_same_noise: bool = setting(False, "eraselab's own: the prior term reuses the ablation batch's "
                                     "noised latents instead of a second batch of anchor images")
    masked_loss: bool = setting(True, "official reduction: squared error summed over latent channels, "
                                "averaged inside the valid-image mask (border pixel out); off: plain mean")
    hflip: bool = setting(True, "flip anchor latents horizontally with probability 0.5")
    anchor_captions: str = setting("auto", "auto (official list / templates / the domain's own caption "
                                   "grammar on miniworld), bare (the anchor word alone) or a text file "
                                   "with one caption per line")
    captions: int = setting(200, "how many anchor captions to use", POSITIVE)
    anchor_images: int = setting(1000, "anchor images generated by the original model", POSITIVE)
    sample_steps: int = setting(25, "DDIM steps generating the anchor images", POSITIVE)
    sample_guidance: float = setting(6.0, "CFG scale generating the anchor images")
    train: str = setting("x-strict", "parameters: x-strict (cross-attention K/V, CA's default), x or all",
                         OneOf(("x-strict", "x", "all")))

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe("model-based", REFERENCE,
               "official default: target = the trained model's own stop-gradient prediction for the anchor "
               "caption; AdamW wd 1e-2, clip 1.0, lr 2e-6 × batch 8, 100 steps, cross-attention K/V"),
        Recipe("noise-based", REFERENCE,
               "official --loss_type_reverse noise-based: target = the added noise; otherwise as model-based",
               {"objective": "noise-based"}),
    )
    # Only the K/V projections train, so miniworld needs a large step: lr is per image, so with scale_lr and
    # batch 8 AdamW runs at 5e-4.
    miniworld: ClassVar[dict] = {"iterations": 200, "lr": 6.25e-5, "anchor_images": 64, "captions": 64,
                                 "sample_steps": 20}

    def validate(self) -> None:
        super().validate()
        if self.prior_same_noise and self.prior_loss_weight == 0:
            raise EraseLabError("config prior_same_noise needs a prior term; set prior_loss_weight > 0 or "
                                "drop prior_same_noise")

    def effective_lr(self) -> float:
        if not self.scale_lr:
            return self.lr
        return self.lr * self.batch_size * (2.0 if self.prior_loss_weight > 0 else 1.0)


def resolve_anchor(targets, anchor: str, concept_type: str, domain: Domain) -> str:
    """The anchor: the one given, "painting" for styles, else (auto) the targets' parent concept in the domain
    (their nearest common ancestor when the parents differ). Refuses, in one line, targets the domain does
    not know and targets whose only common ancestor is a concept never probed (the taxonomy's root "object").
    Cheap: bench calls it while validating, before any model loads."""
    if anchor != "auto":
        return anchor
    if concept_type == "style":
        return "painting"
    h = domain.hierarchy
    concepts = []
    for t in targets:
        try:
            concepts.append(parse_concept(h, t)[0])  # "red circle" → circle
        except EraseLabError:
            raise EraseLabError(f"CA needs an anchor for {t!r}: it is not a {h.name} concept, so none can be "
                                "chosen automatically; pass --config anchor=NAME (e.g. anchor=cat to erase "
                                "'grumpy cat')") from None
    found = h.common_ancestor([h.parent(c) or c for c in concepts])
    if found in domain.excluded:
        raise EraseLabError(f"CA needs an anchor for {', '.join(targets)}: their nearest common parent in "
                            f"the {h.name} is {found!r}, too broad to stand for them; pass --config "
                            "anchor=NAME")
    return found


# ---- captions ------------------------------------------------------------------------------------------
def read_caption_file(path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def fill_template(template: str, word: str) -> str:
    """The template with `word` for "{}"; "a {}" becomes "an {}" before a vowel."""
    if word[:1].lower() in "aeiou":
        template = template.replace("a {}", "an {}")
    return template.replace("{}", word)


def domain_caption_pairs(domain: Domain, anchor: str, targets, n: int, seed: int
                         ) -> list[tuple[str, dict[str, str]]]:
    """Anchor captions in the domain's own caption grammar (miniworld's), each with its target versions: one
    object named by the anchor with some of its attributes (each kind named as often as the domain's captions
    name it), or that object "and" another class in some colour. No position words, so that horizontal flips
    keep every caption true."""
    import numpy as np

    h = domain.hierarchy
    rng = np.random.default_rng(seed)
    taken = set(targets) | {anchor}
    for c in list(taken):
        if c in h:
            taken |= set(h.leaves_under(c))
    others = [c for c in h.classes if c not in taken]
    colors = h.attributes.get("color", ())
    out = []
    for _ in range(n):
        attrs = [(k, str(rng.choice(h.attributes[k]))) for k, p in domain.caption_attributes.items()
                 if rng.random() < p]
        other = None
        if others and rng.random() < 0.4:
            other = noun_phrase(str(rng.choice(others)), (str(rng.choice(colors)),) if colors else ())
        first = rng.random() < 0.5
        named = {t: _caption(t, attrs, other, first) for t in targets}
        out.append((_caption(anchor, attrs, other, first), named))
    return out


def _caption(name: str, attrs, other: str | None, first: bool) -> str:
    own = noun_phrase(name, ordered(attrs))
    if other is None:
        return own
    return f"{own} and {other}" if first else f"{other} and {own}"


def caption_pairs(pipe, anchor: str, targets, cfg: CAConfig, domain: Domain
                  ) -> list[tuple[str, dict[str, str]]]:
    """(anchor caption, {target: ablation caption}) for every anchor caption; for styles the ablation caption
    is chosen per use (see `style_prompt`), so the dict is empty."""
    source = cfg.anchor_captions
    if source == "bare":
        return [(concept_prompt(pipe, anchor), {t: concept_prompt(pipe, t) for t in targets})]
    if source == "auto" and domain.caption_attributes and cfg.concept_type == "object":
        return domain_caption_pairs(domain, anchor, targets, cfg.captions, cfg.seed)
    if source == "auto":
        from ..models import package_path

        if cfg.concept_type == "style":
            captions = read_caption_file(package_path("data/ca_painting_captions.txt"))
        elif anchor in OFFICIAL_CAPTION_ANCHORS:
            captions = read_caption_file(package_path(f"data/ca_anchor_{anchor}.txt"))
        else:
            captions = [fill_template(t, anchor)
                        for t in read_caption_file(package_path("data/ca_caption_templates.txt"))]
    else:
        if not Path(source).is_file():
            raise EraseLabError(f"config anchor_captions: {source!r} is not a file; use auto, bare or a text "
                                "file with one caption per line")
        captions = read_caption_file(source)
    captions = captions[:cfg.captions]
    if cfg.concept_type == "style":
        return [(c, {}) for c in captions]
    if not any(anchor in c for c in captions):
        raise EraseLabError(f"config anchor_captions: no caption contains the anchor {anchor!r}, so none can "
                            "name the target; give captions that contain the anchor word")
    return [(c, {t: c.replace(anchor, t) for t in targets}) for c in captions]


def style_prompt(caption: str, target: str, form: int) -> str:
    """train.py's three style phrasings, drawn uniformly (two of them are the same)."""
    return f"{caption}, in the style of {target}" if form == 0 else f"in {target}'s style, {caption}"


# ---- training ------------------------------------------------------------------------------------------
class CASession(TrainingSession):
    """TrainingSession with train.py's optimiser: AdamW with weight decay and gradient-norm clipping."""

    def __init__(self, pipe, cfg: CAConfig):
        super().__init__(pipe, cfg.train, cfg.effective_lr(), cfg.seed, weight_decay=cfg.weight_decay,
                         max_grad_norm=cfg.max_grad_norm)


@dataclass
class Batch:
    """One step's inputs: clean anchor latents, noise, timesteps, the ablation prompts (target named) and the
    anchor prompts; `prior` holds the same four for the prior term's own batch (None without one)."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    prompts: list[str]
    anchor_prompts: list[str]
    prior: Batch | None = None


class Sampler:
    """Draws anchor images in reshuffled epochs (train.py's shuffled DataLoader) with their captions."""

    def __init__(self, session: TrainingSession, images: torch.Tensor, pairs, cfg: CAConfig,
                 steps_total: int):
        self.session, self.images, self.pairs, self.cfg = session, images, pairs, cfg
        self.steps_total = steps_total
        self.order: list[int] = []

    def indices(self, n: int) -> list[int]:
        g = self.session.generator
        while len(self.order) < n:
            self.order += torch.randperm(len(self.images), generator=g).tolist()
        out, self.order = self.order[:n], self.order[n:]
        return out

    def latents(self, idx: list[int]) -> torch.Tensor:
        x0 = self.images[idx]
        if self.cfg.hflip:
            flip = torch.rand(len(idx), generator=self.session.generator) < 0.5
            x0 = torch.where(flip.to(x0.device).view(-1, 1, 1, 1), x0.flip(-1), x0)
        return x0

    def noised(self, idx: list[int]):
        x0 = self.latents(idx)
        noise = self.session.randn(x0.shape)
        t = torch.randint(self.steps_total, (len(idx),), generator=self.session.generator).to(x0.device)
        return x0, noise, t

    def draw(self, targets) -> Batch:
        g, cfg = self.session.generator, self.cfg
        idx = self.indices(cfg.batch_size)
        x0, noise, t = self.noised(idx)
        anchor_prompts = [self.pairs[i % len(self.pairs)][0] for i in idx]
        prompts = []
        for i in idx:
            caption, named = self.pairs[i % len(self.pairs)]
            target = targets[int(torch.randint(len(targets), (1,), generator=g))]
            if cfg.concept_type == "style":
                prompts.append(style_prompt(caption, target, int(torch.randint(3, (1,), generator=g))))
            else:
                prompts.append(named[target])
        prior = None
        if cfg.prior_loss_weight > 0 and not cfg.prior_same_noise:
            pidx = self.indices(cfg.batch_size)
            px0, pnoise, pt = self.noised(pidx)
            pprompts = [self.pairs[i % len(self.pairs)][0] for i in pidx]
            prior = Batch(px0, pnoise, pt, pprompts, pprompts)
        return Batch(x0, noise, t, prompts, anchor_prompts, prior)


def valid_mask(shape) -> torch.Tensor:
    """train.py's mask for an un-rescaled image, (1, 1, H, W): one inside, zero on the outer latent pixel."""
    h, w = shape[-2:]
    mask = torch.zeros(1, 1, h, w)
    mask[..., 1:h - 1, 1:w - 1] = 1.0
    return mask


def noise_target(schedule: NoiseSchedule, x0, noise, t) -> torch.Tensor:
    """The denoising target of the model's raw output: ε, or the velocity for v-prediction models."""
    if schedule.prediction_type == "epsilon":
        return noise
    a = schedule.alpha(t).to(x0).view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def ca_loss(session: TrainingSession, schedule: NoiseSchedule, encode: PromptEncoder, batch: Batch,
            cfg: CAConfig) -> torch.Tensor:
    prior = None
    if cfg.prior_loss_weight > 0:
        prior = batch.prior
        if cfg.prior_same_noise:
            prior = Batch(batch.x0, batch.noise, batch.t, batch.anchor_prompts, batch.anchor_prompts)
    # One trained pass over the ablation examples followed by the prior examples, as train.py's collate_fn
    # batches them (so the floating-point sums match too).
    x0, noise, t, prompts = batch.x0, batch.noise, batch.t, list(batch.prompts)
    if prior is not None:
        x0, noise = torch.cat([x0, prior.x0]), torch.cat([noise, prior.noise])
        t, prompts = torch.cat([t, prior.t]), prompts + list(prior.prompts)
    xt = schedule.add_noise(x0, noise, t)
    pred = unet_out(session.unet, xt, t, encode(prompts))
    n = len(batch.x0)
    if cfg.objective == "model-based":
        with torch.no_grad():
            target = unet_out(session.unet, xt[:n], t[:n], encode(batch.anchor_prompts))
    else:
        target = noise_target(schedule, x0, noise, t)
    pred, ppred = pred[:n], pred[n:]
    # train.py's model-based branch takes the prior target straight from the noise.
    ptarget = noise[n:] if cfg.objective == "model-based" else target[n:]
    target = target[:n]
    if cfg.masked_loss:
        mask = valid_mask(pred.shape).to(pred)
        loss = (((pred.float() - target.float()) ** 2 * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))).mean()
    else:
        loss = F.mse_loss(pred.float(), target.float())
    if prior is not None:
        loss = loss + cfg.prior_loss_weight * F.mse_loss(ppred.float(), ptarget.float())
    return loss


@register
class CA(Eraser):
    name = "ca"
    description = "concept ablation: fine-tune cross-attention so target prompts give what anchor prompts do"
    Config = CAConfig

    @classmethod
    def check_model(cls, request: EraseRequest, model: str) -> None:
        cfg: CAConfig = request.config
        resolve_anchor(request.targets, cfg.anchor, cfg.concept_type, request.domain_for(model))

    def erase(self, pipe, request: EraseRequest):
        cfg: CAConfig = request.config
        domain = request.domain_for(pipe)
        anchor = resolve_anchor(request.targets, cfg.anchor, cfg.concept_type, domain)
        pairs = caption_pairs(pipe, anchor, request.targets, cfg, domain)
        session = CASession(pipe, cfg)
        try:
            encode = PromptEncoder(pipe)
            images = self.anchor_latents(session, pipe, encode, [p[0] for p in pairs], cfg)
            schedule = NoiseSchedule.from_pipe(pipe, cfg.sample_steps)
            sampler = Sampler(session, images, pairs, cfg, len(schedule.alphas_cumprod))
            with progress_bar(cfg.iterations, self.name, request.progress) as advance:
                for _ in range(cfg.iterations):
                    batch = self.draw_batch(sampler, request.targets)
                    advance(session.step(ca_loss(session, schedule, encode, batch, cfg)))
        except BaseException:
            session.restore()
            raise
        return session.finish(self.name, cfg.as_dict(), request.targets, request.preserve,
                              extras={"anchor": anchor, "parameter_group": cfg.train, "captions": len(pairs),
                                      "effective_lr": cfg.effective_lr()})

    @staticmethod
    def draw_batch(sampler: Sampler, targets) -> Batch:
        return sampler.draw(list(targets))

    @staticmethod
    def anchor_latents(session: TrainingSession, pipe, encode: PromptEncoder, captions: list[str],
                       cfg: CAConfig) -> torch.Tensor:
        """Clean latents from the original model (training has not started yet); image i shows caption
        i mod len(captions), as train.py's PromptDataset cycles through its captions."""
        schedule = NoiseSchedule.from_pipe(pipe, cfg.sample_steps)
        uncond = encode([""])
        out, chunk = [], 8
        for i in range(0, cfg.anchor_images, chunk):
            n = min(chunk, cfg.anchor_images - i)
            cond = encode([captions[(i + j) % len(captions)] for j in range(n)])
            noise = session.randn(latent_shape(pipe, n))
            out.append(ddim_rollout(session.unet, schedule, noise, cond, uncond, len(schedule.timesteps),
                                    cfg.sample_guidance))
        return torch.cat(out)
