"""UCE — Unified Concept Editing (Gandikota et al., 2024): a closed-form edit of every cross-attention key and
value projection W (attn2.to_k, attn2.to_v):

    W_new = argmin_W  s_e Σ_{i∈E} ‖W c_i − W_old c_i^guide‖² + s_p Σ_{j∈R} ‖W c_j − W_old c_j‖² + λ ‖W −
    W_old‖²_F
          = W_old (λI + s_e Σ c_i^guide c_iᵀ + s_p Σ c_j c_jᵀ) (λI + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹.

Because every v* is W_old times a text vector, the edit is W_old · T with one d×d matrix T shared by all
projections: each distinct prompt is encoded once, T is one d×d solve (float64), and each layer costs one
matmul.

Recipes (config `recipe`):

- "paper" (default): rohitgandikota/unified-concept-editing@bd5fb515392e986758fa3197e382148227db8f25,
  train-scripts/train_erase.py, the script of the paper's experiments. Each target is the bare concept; its
  rows run from its last word token to the end of the sequence, aligned position by position with the guide's
  (`tokens=last_to_end`; the guide "" is written " " there, which CLIP's tokenizer encodes exactly as ""); the
  retained texts are the empty prompt plus the preserved concepts (`retain_empty`), each with all 77 token
  rows (`preserve_tokens=all`); s_p = max(0.1, 1/|retained texts|) (`preserve_scale=-1`, "auto"); λ 0.5, s_e
  1.
- "current": the same repository @28c81ed5a3e41277c1a0dc55f738e7ab188e9718, trainscripts/uce_sd_erase.py: the
  last word token only, for targets and preserved concepts alike, no empty prompt retained, s_p 1. The same
  script edits SDXL (its README's SDXL command), so it is the default there: SDXL's text is the two encoders'
  penultimate hidden states concatenated (2048 wide, the width of every attn2.to_k/to_v), the token position
  counted by the first tokenizer (methods/text.py SDXLPromptEncoder).
- "flux": the same commit, trainscripts/uce_flux_edit.py, the default (and only recipe) on Flux; see
  methods/uce_flux.py.

eraselab's own options, off in every recipe: `check` (refuse an edit that collapses unrelated prompts' keys
and values; it never changes the weights) and, on Flux, `flux_target_bias=false` (methods/uce_flux.py).
Closed-world adaptations (both "auto"; a closed world is a model that learnt only its domain's concepts, the
embedded miniworld model): `template` (concepts written as "a {}", the form of miniworld's captions) and
`auto_preserve` (every other class of the domain preserved; "world" does the same on a real model, with the
classes of the WordNet taxonomy).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import edits
from ..domain import Domain
from ..errors import EraseLabError
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
from .params import kv_projections
from .registry import register
from .text import MINIWORLD_TEMPLATE, PromptEncoder, prompt_encoder

TOKEN_CHOICES = ("last_to_end", "last")
PRESERVE_TOKEN_CHOICES = ("all", "last_to_end", "last")
AUTO_PRESERVE = ("auto", "none", "world")
# preserve_scale's value for "auto", s_p = max(0.1, 1/|retained texts|); the config field is a float, so
# "auto" (accepted from the CLI and from Python) is stored as this number.
AUTO_SCALE = -1.0

UCE_REPOSITORY = "rohitgandikota/unified-concept-editing"
PAPER = Reference(UCE_REPOSITORY, "bd5fb515392e986758fa3197e382148227db8f25", "train-scripts/train_erase.py")
CURRENT = Reference(
    UCE_REPOSITORY, "28c81ed5a3e41277c1a0dc55f738e7ab188e9718", "trainscripts/uce_sd_erase.py"
)
FLUX = Reference(UCE_REPOSITORY, "28c81ed5a3e41277c1a0dc55f738e7ab188e9718", "trainscripts/uce_flux_edit.py")
# What the current scripts (SD/SDXL and Flux alike) set apart from the paper's.
CURRENT_SETTINGS = {"tokens": "last", "preserve_tokens": "last", "retain_empty": False, "preserve_scale": 1.0}


def resolve_model_defaults(cfg: UCEConfig, domain: Domain) -> UCEConfig:
    """Fix the 'auto' template / auto_preserve for the model's domain: miniworld's captions always say
    "a circle", and its narrow text encoder needs the other classes as anchors; other models keep the
    original UCE behaviour."""
    import dataclasses

    closed = domain.closed_world
    return dataclasses.replace(
        cfg, template=(MINIWORLD_TEMPLATE if closed else "{}") if cfg.template == "auto" else cfg.template,
        auto_preserve=("world" if closed else "none") if cfg.auto_preserve == "auto" else cfg.auto_preserve)


def preserved_concepts(targets, preserve, mode: str, domain: Domain) -> list[str]:
    """The preserve set: the user's, plus (mode "world") every class of the domain the targets do not cover.

    Why: miniworld's text encoder is 64-wide, so the erased direction overlaps other classes' vectors far more
    than in CLIP-L's 768 dimensions; without the other classes as anchors the closed form drags neighbours
    (ellipse, when erasing circle) along with the target."""
    out = list(preserve)
    if mode == "world":
        h = domain.hierarchy
        covered = set()
        for t in targets:
            for c in h.concepts:
                if c in t.split() or c == t:
                    covered |= set(h.leaves_under(c))
        out += [c for c in h.classes if c not in covered and c not in out]
    return out


@dataclass
class UCEConfig(MethodConfig):
    guide: str = setting("", 'concept the targets are mapped to ("" for objects, "art" for styles)')
    lam: float = setting(0.5, "λ, weight of ‖W − W_old‖² (keeps the edit small)", POSITIVE)
    erase_scale: float = setting(1.0, "s_e, weight of the erase terms", NON_NEGATIVE)
    preserve_scale: float = setting(AUTO_SCALE, "s_p, weight of the retained texts' terms; auto (stored as "
                                    "-1) = max(0.1, 1/|retained texts|) as the paper's script")
    tokens: str = setting("last_to_end", "target rows: last_to_end (last word token to the end, aligned "
                          "with the guide's; paper) or last (word token only; current)", OneOf(TOKEN_CHOICES))
    preserve_tokens: str = setting("all", "rows of each retained text: all 77 (paper), last_to_end, or "
                                   "last (current)", OneOf(PRESERVE_TOKEN_CHOICES))
    retain_empty: bool = setting(True, "also retain the empty prompt '' (paper: true)")
    check: bool = setting(False, "eraselab option: refuse an edit that collapses outputs (see the three "
                          "limits); never changes the weights")
    check_prompts: int = setting(32, "unrelated vocabulary words the collapse check probes", NON_NEGATIVE)
    template: str = setting("auto", "prompt each erased/preserved concept is written into before encoding: "
                            "'{}' = the bare concept (reference code); auto = 'a {}' on the miniworld "
                            "model (its captions' form), '{}' elsewhere")
    auto_preserve: str = setting("auto", "world = also preserve every other class of the domain "
                                 "(miniworld's or the taxonomy's); none; auto = world on the miniworld "
                                 "model, none elsewhere", OneOf(AUTO_PRESERVE))
    min_diversity: float = setting(0.2, "refuse if unrelated words' outputs span fewer than this × the "
                                   "directions they spanned before (participation ratio)")
    max_unrelated_change: float = setting(
        1.0, "refuse if unrelated prompts' outputs move more than this × their norm")
    max_norm_growth: float = setting(10.0, "refuse if a projection's Frobenius norm grows more than this ×")
    t5_tokens: int = setting(0, "Flux: T5 sequence length the texts are encoded at (0 = as "
                             "uce_flux_edit.py: 256 on -schnell, i.e. without guidance embedding, else 512)",
                             NON_NEGATIVE)
    flux_target_bias: bool = setting(True, "Flux: v* = W c + b as uce_flux_edit.py (true; the edited layer "
                                     "then adds b once more); false (eraselab option) = v* = W c, so "
                                     "outputs, bias included, match the old ones")

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe(
            "paper",
            PAPER,
            (
                "the paper's script: bare concept, rows from its last word token to the end aligned with the "
                "guide's; retains '' and the preserved concepts over all 77 rows; s_p = max(0.1, "
                "1/|retained|), λ 0.5"
            ),
        ),
        Recipe(
            "current",
            CURRENT,
            (
                "the repository's current script: last word token only (targets and preserved concepts), "
                "nothing retained but the preserved concepts, s_p 1, λ 0.5; on SDXL the two encoders' "
                "concatenated penultimate states"
            ),
            CURRENT_SETTINGS,
            families=("sd", "sdxl"),
        ),
        Recipe(
            "flux",
            FLUX,
            (
                "the Flux script: edits context_embedder (T5 → joint attention) and the pooled-text "
                "embedder's linear_1 (CLIP); each text's last T5 token and its pooled CLIP vector; v* "
                "includes the bias; s_p 1, λ 0.5"
            ),
            CURRENT_SETTINGS,
            families=("flux",),
        ),
    )
    # miniworld preserves the world's other classes (auto_preserve), ~1,200 text rows against the target's ~75
    # in a 64-wide space, so the preserve terms need a smaller weight than the paper's max(0.1, 1/|retained|).
    miniworld: ClassVar[dict] = {"preserve_scale": 0.03}

    @classmethod
    def build(cls, overrides: dict, pipe=None, method: str = ""):
        overrides = dict(overrides)
        value = overrides.get("preserve_scale")
        if isinstance(value, str) and value.strip().lower() == "auto":
            overrides["preserve_scale"] = AUTO_SCALE
        return super().build(overrides, pipe=pipe, method=method)

    def validate(self) -> None:
        super().validate()
        if not (self.preserve_scale >= 0 or self.preserve_scale == AUTO_SCALE):
            raise EraseLabError(f"config preserve_scale must be zero or positive, or auto (-1), got "
                                f"{self.preserve_scale}")
        if self.template != "auto" and "{}" not in self.template:
            raise EraseLabError(f"template {self.template!r} has no {{}} for the concept; use e.g. 'a {{}}'")


def effective_preserve_scale(scale: float, retained: int) -> float:
    """s_p as used: `scale`, or for auto the paper script's max(0.1, 1/|retained texts|)."""
    if scale != AUTO_SCALE:
        return scale
    return max(0.1, 1.0 / retained) if retained else 1.0


def aligned_rows(encoder: PromptEncoder, prompt: str, partner: str, mode: str):
    """Token vectors of `prompt` and of `partner` (the guide), position-aligned: (n, d) each."""
    h_p, h_g = encoder([prompt, partner])
    ip, ig = encoder.last_subject_index(prompt), encoder.last_subject_index(partner)
    if mode == "last":
        return h_p[ip:ip + 1], h_g[ig:ig + 1]
    n = h_p.shape[0] - max(ip, ig)
    return h_p[ip:ip + n], h_g[ig:ig + n]


def own_rows(encoder: PromptEncoder, prompt: str, mode: str) -> torch.Tensor:
    """Rows of one retained text: all 77 token rows, its last word token to the end, or its last word
    token."""
    h = encoder([prompt])[0]
    if mode == "all":
        return h
    i = encoder.last_subject_index(prompt)
    return h[i:i + 1] if mode == "last" else h[i:]


def uce_transform(erase_rows: torch.Tensor, guide_rows: torch.Tensor, preserve_rows: torch.Tensor,
                  lam: float, erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """T with W_new = W_old T (float64, d×d). Rows are text vectors: erase (n_e, d) aligned with guide (n_e,
    d), preserve (n_p, d)."""
    ce, cg, cp = (r.double() for r in (erase_rows, guide_rows, preserve_rows))
    d = ce.shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=ce.device)
    keep = preserve_scale * cp.T @ cp
    m1 = lam * eye + erase_scale * cg.T @ ce + keep
    m2 = lam * eye + erase_scale * ce.T @ ce + keep
    # T = m1 m2⁻¹ and m2 is symmetric positive definite, so T = (m2⁻¹ m1ᵀ)ᵀ.
    return torch.linalg.solve(m2, m1.T).T


def apply_transform(weights: dict[str, torch.Tensor], transform: torch.Tensor) -> dict[str, torch.Tensor]:
    return {n: (w.double() @ transform.to(w.device)).to(w.dtype) for n, w in weights.items()}


def probe_words(pipe, exclude, count: int, domain: Domain) -> list[str]:
    """Unrelated words for the collapse check: the domain's vocabulary (miniworld's concepts, else the English
    word list)."""
    from .vocabulary import default_vocabulary

    low = {e.lower() for e in exclude}
    return [w for w in default_vocabulary(pipe, domain) if w.lower() not in low][:count]


def participation_ratio(outputs: torch.Tensor) -> torch.Tensor:
    """Effective number of directions the rows of `outputs` vary in: (Σσ²)² / Σσ⁴ of the centred rows (1 when
    they differ along one direction only). Centring matters: CLIP outputs share a large common component."""
    s2 = torch.linalg.svdvals(outputs - outputs.mean(0)) ** 2
    return s2.sum() ** 2 / (s2 ** 2).sum().clamp_min(1e-300)


def check_collapse(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], probe_rows: list[torch.Tensor],
                   cfg: UCEConfig) -> dict:
    """Refuse an edit that makes unrelated prompts' keys/values collapse together, move wholesale or blow up.

    Returns the worst values seen (recorded in the Edit)."""
    last = torch.stack([r[0] for r in probe_rows]).double()  # each probe's word token
    every = torch.cat(probe_rows).double()
    worst = {"min_diversity": float("inf"), "max_unrelated_change": 0.0, "max_norm_growth": 0.0}
    for name, w_old in old.items():
        wo, wn = w_old.double(), new[name].double().to(w_old.device)
        lt = last.to(wo.device)
        spread = participation_ratio(lt @ wn.T) / participation_ratio(lt @ wo.T)
        ev = every.to(wo.device)
        change = (ev @ (wn - wo).T).norm() / (ev @ wo.T).norm().clamp_min(1e-12)
        growth = wn.norm() / wo.norm().clamp_min(1e-12)
        worst["min_diversity"] = min(worst["min_diversity"], float(spread))
        worst["max_unrelated_change"] = max(worst["max_unrelated_change"], float(change))
        worst["max_norm_growth"] = max(worst["max_norm_growth"], float(growth))
        bad = [not torch.isfinite(wn).all(), spread < cfg.min_diversity, change > cfg.max_unrelated_change,
               growth > cfg.max_norm_growth]
        if any(bad):
            raise EraseLabError(
                f"UCE edit refused: it collapses outputs at {name} (unrelated words' output directions "
                f"×{float(spread):.3g}, "
                f"change ×{float(change):.3g}, norm growth ×{float(growth):.3g}); lower erase_scale, raise "
                "lam or add preserved concepts (or pass check=false)"
            )
    return {k: round(v, 6) for k, v in worst.items()}


class ClosedFormEdit:
    """The K/V weights of a pipeline, edited in closed form, and turned into an Edit with the pipe
    restored."""

    def __init__(self, pipe, modules: dict[str, torch.nn.Linear] | None = None):
        """`modules`: the edited Linear layers by Edit parameter name (default: the UNet's cross-attention K/V
        projections)."""
        if edits.applied_edit(pipe) is not None:
            raise EraseLabError(
                "the pipeline already has an edit applied; revert it (edit.revert(pipe)) before "
                "erasing, so the new edit is relative to the base model"
            )
        self.pipe = pipe
        self.started = time.perf_counter()
        self.modules = (
            modules if modules is not None else {f"unet.{n}": m for n, m in kv_projections(pipe.unet)}
        )
        self.before = edits.snapshot(pipe, list(self.modules))
        self.original = {n: m.weight.detach().clone() for n, m in self.modules.items()}

    def finish(
        self, new: dict[str, torch.Tensor], method: str, config: dict, targets, preserved, extras: dict
    ):
        try:
            with torch.no_grad():
                for n, m in self.modules.items():
                    m.weight.copy_(new[n])
            return edits.edit_from_changes(
                self.pipe,
                self.before,
                method,
                config=config,
                targets=list(targets),
                preserved=list(preserved),
                extras=extras,
                seconds=round(time.perf_counter() - self.started, 4),
            )
        finally:
            with torch.no_grad():
                for n, m in self.modules.items():
                    m.weight.copy_(self.original[n])


@dataclass
class UCERows:
    erase: torch.Tensor
    guide: torch.Tensor
    preserve: torch.Tensor
    retained: int  # number of retained texts (the empty prompt counts), for the auto s_p


def retained_texts(preserve, cfg: UCEConfig) -> list[str]:
    """The texts whose keys/values the edit keeps: '' first when retain_empty (the paper's script retains it
    always), then each preserved concept written into cfg.template."""
    return ([""] if cfg.retain_empty else []) + [cfg.template.format(p) for p in preserve]


def build_rows(encoder: PromptEncoder, targets, preserve, cfg: UCEConfig) -> UCERows:
    """Targets and preserved concepts are written into cfg.template (the guide is not: "" stays empty)."""
    pairs = [aligned_rows(encoder, cfg.template.format(t), cfg.guide, cfg.tokens) for t in targets]
    d = pairs[0][0].shape[1]
    texts = retained_texts(preserve, cfg)
    keep = [own_rows(encoder, x, cfg.preserve_tokens) for x in texts]
    return UCERows(torch.cat([a for a, _ in pairs]), torch.cat([g for _, g in pairs]),
                   torch.cat(keep) if keep else torch.zeros(0, d, device=pairs[0][0].device), len(texts))


@dataclass
class UCESetup:
    """Everything UCE and RECE compute before their solves."""

    cfg: UCEConfig
    state: ClosedFormEdit
    encoder: PromptEncoder
    preserve: list[str]
    probes: list[str]
    rows: UCERows


def prepare(pipe, request: EraseRequest) -> UCESetup:
    domain = request.domain_for(pipe)
    cfg = resolve_model_defaults(request.config, domain)
    state = ClosedFormEdit(pipe)
    encoder = prompt_encoder(pipe)
    preserve = preserved_concepts(request.targets, request.preserve, cfg.auto_preserve, domain)
    probes = []
    if cfg.check:
        probes = probe_words(pipe, [*request.targets, *preserve, cfg.guide], cfg.check_prompts, domain)
    # Every distinct prompt in one batched text-encoder pass.
    encoder([*(cfg.template.format(c) for c in request.targets), cfg.guide, *retained_texts(preserve, cfg),
             *probes])
    return UCESetup(
        cfg, state, encoder, preserve, probes, build_rows(encoder, request.targets, preserve, cfg)
    )


def uce_weights(original: dict[str, torch.Tensor], rows: UCERows, cfg: UCEConfig) -> dict[str, torch.Tensor]:
    """The UCE edit of `original` (the first stage of RECE too)."""
    s_p = effective_preserve_scale(cfg.preserve_scale, rows.retained)
    return apply_transform(original, uce_transform(rows.erase, rows.guide, rows.preserve, cfg.lam,
                                                   cfg.erase_scale, s_p))


def row_counts(rows: UCERows, cfg: UCEConfig) -> dict:
    return {"token_rows": {"erase": int(rows.erase.shape[0]), "preserve": int(rows.preserve.shape[0])},
            "preserve_scale": effective_preserve_scale(cfg.preserve_scale, rows.retained)}


@register
class UCE(Eraser):
    name = "uce"
    description = "closed-form edit of cross-attention K/V mapping targets to a guide while preserving others"
    Config = UCEConfig
    families = ("sd", "sdxl", "flux")

    def erase(self, pipe, request: EraseRequest):
        if model_family(pipe) == "flux":
            from .uce_flux import erase_flux

            return erase_flux(pipe, request, self.name)
        setup = prepare(pipe, request)
        cfg, state, rows = setup.cfg, setup.state, setup.rows
        new = uce_weights(state.original, rows, cfg)
        extras = self.checked(state.original, new, setup.encoder, setup.probes, cfg)
        extras.update(row_counts(rows, cfg))
        return state.finish(new, self.name, cfg.as_dict(), request.targets, setup.preserve, extras)

    @staticmethod
    def checked(old, new, encoder, probes, cfg: UCEConfig) -> dict:
        if not cfg.check or not probes:
            return {}
        return {"collapse_check": check_collapse(old, new, [own_rows(encoder, p, cfg.tokens) for p in probes],
                                                 cfg)}
