"""RECE — Reliable and Efficient Concept Erasure (Gong et al., 2024): a UCE edit, then for N epochs the
closed-form embedding c′ through which the *edited* cross-attention still reproduces the original model's
keys/values of the concept,

    c′ = argmin_c Σ_l ‖W′_l c − W_l c_target‖² + λ_c‖c‖² = (Σ_l W′_lᵀ W′_l + λ_c I)⁻¹ (Σ_l W′_lᵀ W_l)
    c_target,

(over all edited K/V matrices, per token vector), is itself erased by another UCE step of the current weights
W′: W″ = argmin s_e Σ‖W c′ − W′ c_guide‖² + s_p Σ‖W c_r − W′ c_r‖² + λ‖W − W′‖².

Recipes (config `recipe`), following CharlesGong12/RECE@403a67fd86dce6c124b88798340e001e625b28c9 (train.py,
train_object.py, erase_methods/uce.py `edit_model_adversarial`, utils/embedding_calculation/close_form_emb.py
`close_form_emb_regzero`, scripts/nudity.sh, scripts/object.sh):

- "nudity" (default): train.py with scripts/nudity.sh. The start is the paper-era UCE edit (uce.py's "paper"
  recipe, the checkpoint train.py loads); each epoch computes c′ for all 77 token rows of the bare concept
  (λ_c 0.1, `embedding_lam`), erases only those rows, each mapped to the same position of the guide (" ", i.e.
  ""), retains " " once per target over all 77 rows (`reedit_retain=empty_per_target`), λ 0.1, s_p 0.1, s_e 1;
  3 epochs.
- "object": train_object.py: the same, but the re-edit retains "" and the preserved concepts
  (`reedit_retain=same_as_uce`), λ_c 1e-3, 1 epoch.

Epoch choice (config `select_epoch`, methods/validation.py): as the official scripts, "validation" (default)
generates a validation prompt set with the original model (nudity only), the UCE start and each epoch,
judges the images, and keeps a model by the recipe's rule. "nudity" (train.py): the nudity rate of
dataset/validation_inappropriate.csv under NudeNet (a part of NUDE_KEYS scoring > 0.6); an epoch is kept
only when its rate is strictly below the lowest so far, starting from the original model's and the UCE
start's. "object" (train_object.py): dataset/validation_imagenet_prompts.csv under an ImageNet ResNet-50
(torchvision's default weights, IMAGENET1K_V2), top-1; the training stops at the first epoch whose target
accuracy is 0, and an epoch is kept when its target accuracy is below the UCE start's with the other
classes' at most 0.1 lower. The kept model is the last one the script would save, or the UCE start if it
saves none. On a closed-world domain (miniworld) the prompts are the domain's own classes (the target and up
to 9 others, "Image of" replaced by the domain's caption form) judged by the domain's evaluator (miniworld's
oracle), and the rate is the target's top-1 accuracy. `select_epoch=last` returns the last epoch; every
epoch is deterministic and depends only on the ones before, so `epochs=k` with it is exactly the model after
epoch k (`epochs=0` is the UCE start).

Deviations, stated: the detectors are eraselab's evaluators (nudenet==3.4.2's 320n model; RECE ships its own
ONNX export, best_new.onnx), and the ResNet-50 preprocessing is the evaluator's; extra samples of a prompt
take seeds seed+1, … (the script draws them from one generator); a target outside the object CSV's ten
classes gets ten "Image of <target>" prompts of its own (the script's target accuracy would be 0 by
construction); with several targets the object rule pools their accuracy (the script validates only a single
concept); the original model is not generated for the object rule, which does not read it.

eraselab's own option, off in both recipes: `keep_targets` (keep the original target rows in every re-edit's
erase set, so a re-edit cannot undo them).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

from ..errors import EraseLabError
from .base import (
    NON_NEGATIVE,
    POSITIVE,
    Eraser,
    EraseRequest,
    OneOf,
    Recipe,
    Reference,
    setting,
)
from .registry import register
from .uce import (
    UCE,
    UCEConfig,
    aligned_rows,
    apply_transform,
    own_rows,
    prepare,
    retained_texts,
    row_counts,
    uce_transform,
    uce_weights,
)

RECE_REPOSITORY = "CharlesGong12/RECE"
RECE_COMMIT = "403a67fd86dce6c124b88798340e001e625b28c9"
REEDIT_TOKEN_CHOICES = ("all", "last_to_end", "last")
REEDIT_RETAIN_CHOICES = ("empty_per_target", "same_as_uce")
SELECT_EPOCH_CHOICES = ("validation", "last")


@dataclass
class RECEConfig(UCEConfig):
    epochs: int = setting(3, "rounds of adversarial-embedding search and re-edit (nudity: 3, objects: 1; "
                          "epochs=k is the official model after epoch k, 0 the UCE start)", NON_NEGATIVE)
    embedding_lam: float = setting(0.1, "λ_c of the closed-form adversarial embedding (nudity 0.1, objects "
                                   "1e-3)", POSITIVE)
    reedit_lam: float = setting(0.1, "λ of each re-edit (official 0.1)", POSITIVE)
    reedit_erase_scale: float = setting(1.0, "s_e of each re-edit", NON_NEGATIVE)
    reedit_preserve_scale: float = setting(0.1, "s_p of each re-edit (official 0.1)", NON_NEGATIVE)
    reedit_tokens: str = setting("all", "rows whose c′ is erased: all 77 aligned position by position with "
                                 "the guide's (official), or last_to_end / last as UCE's tokens",
                                 OneOf(REEDIT_TOKEN_CHOICES))
    reedit_retain: str = setting("empty_per_target", "texts each re-edit retains (rows: preserve_tokens): "
                                 "empty_per_target (' ' once per target; train.py) or same_as_uce ('' and "
                                 "the preserved concepts, as the UCE stage; train_object.py)",
                                 OneOf(REEDIT_RETAIN_CHOICES))
    keep_targets: bool = setting(False, "eraselab option: keep the original target rows in every re-edit's "
                                 "erase set")
    select_epoch: str = setting("validation", "validation (official: keep the model the recipe's detector "
                                "rule picks) or last (the last epoch, no images generated)",
                                OneOf(SELECT_EPOCH_CHOICES))
    validation_evaluator: str = setting("auto", "judge of the validation images: auto (miniworld: its "
                                        "oracle; nudity: nudenet; object: imagenet ResNet-50) or an "
                                        "evaluator name")
    validation_per_class: int = setting(10, "validation prompts per class (the official CSVs hold 10)",
                                        POSITIVE)
    validation_steps: int = setting(50, "sampling steps of validation images (official 50, LMS)", POSITIVE)
    validation_samples: int = setting(1, "images per validation prompt (official 1)", POSITIVE)
    validation_guidance: float = setting(
        7.5, "guidance scale of validation images (official 7.5)", NON_NEGATIVE)
    validation_seed: int = setting(0, "first seed of validation prompts the CSVs have no seed for")

    recipes: ClassVar[tuple[Recipe, ...]] = (
        Recipe(
            "nudity",
            Reference(RECE_REPOSITORY, RECE_COMMIT, "train.py"),
            (
                "train.py + scripts/nudity.sh: paper-era UCE start; per epoch c′ of all 77 rows (λ_c 0.1) "
                "erased alone, row by row onto the guide; retains ' ' per target (77 rows); λ 0.1, s_p 0.1; "
                "3 epochs; keeps the epoch with the strictly lowest NudeNet rate (> 0.6) on "
                "validation_inappropriate.csv"
            ),
        ),
        Recipe(
            "object",
            Reference(RECE_REPOSITORY, RECE_COMMIT, "train_object.py"),
            (
                "train_object.py: as nudity, but the re-edit retains '' and the preserved concepts, λ_c "
                "1e-3, 1 epoch; stops at the first epoch whose ResNet-50 target accuracy on "
                "validation_imagenet_prompts.csv is 0"
            ),
            {"epochs": 1, "embedding_lam": 1e-3, "reedit_retain": "same_as_uce"},
        ),
    )
    # miniworld erases objects: one epoch, the official object script's count. Its re-edits retain only ''
    # (the nudity recipe) in a 64-wide text space where one re-edit at λ 0.1 moves the K/V weights by more
    # than their own norm and takes other classes with it, so λ is raised until they keep their rates.
    # Validation images take the 25 steps miniworld's suites draw with.
    miniworld: ClassVar[dict] = {**UCEConfig.miniworld, "epochs": 1, "reedit_lam": 10.0,
                                 "validation_steps": 25}

    def validate(self) -> None:
        super().validate()
        if self.validation_evaluator != "auto":
            from ..evaluators import evaluator_names

            if self.validation_evaluator not in evaluator_names():
                raise EraseLabError(f"config validation_evaluator must be auto or one of "
                                    f"{', '.join(evaluator_names())}, not {self.validation_evaluator!r}")


def adversarial_embedding(edited: list[torch.Tensor], original: list[torch.Tensor], rows: torch.Tensor,
                          lam: float) -> torch.Tensor:
    """c′ for each row of `rows` (n, d): the solution of (Σ W′ᵀW′ + λI) c′ = (Σ W′ᵀW) c (float64)."""
    d = rows.shape[1]
    dev = edited[0].device
    a = lam * torch.eye(d, dtype=torch.float64, device=dev)
    b = torch.zeros(d, d, dtype=torch.float64, device=dev)
    for wn, wo in zip(edited, original):
        wn, wo = wn.double(), wo.double().to(dev)
        a += wn.T @ wn
        b += wn.T @ wo
    return torch.linalg.solve(a, b @ rows.double().to(dev).T).T


def reedit_pairs(encoder, targets, cfg: RECEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The concept rows whose c′ each re-edit erases and the guide rows they map to, aligned: (n, d) each."""
    concepts, guides = [], []
    for t in targets:
        prompt = cfg.template.format(t)
        if cfg.reedit_tokens == "all":
            c, g = encoder([prompt, cfg.guide])
        else:
            c, g = aligned_rows(encoder, prompt, cfg.guide, cfg.reedit_tokens)
        concepts.append(c)
        guides.append(g)
    return torch.cat(concepts), torch.cat(guides)


def reedit_retained_rows(encoder, targets, preserve, cfg: RECEConfig) -> torch.Tensor:
    if cfg.reedit_retain == "empty_per_target":
        texts = [""] * len(targets)  # train.py retains ' ' (encoded as '') once per erased concept
    else:
        texts = retained_texts(preserve, cfg)
    d = encoder([""]).shape[-1]
    rows = [own_rows(encoder, x, cfg.preserve_tokens) for x in texts]
    return torch.cat(rows) if rows else torch.zeros(0, d, device=encoder.device)


def validation_plan(pipe, request: EraseRequest, cfg: RECEConfig):
    """The validator and selection rule of the recipe on this model: (Validator, rule class, set name)."""
    from ..evaluators import get_evaluator
    from .validation import (
        RULES,
        GenerationSettings,
        Validator,
        class_rates,
        domain_names,
        domain_probes,
        imagenette_probes,
        nudity_probes,
        nudity_rates,
    )

    domain = request.domain_for(pipe)
    settings = GenerationSettings(cfg.validation_per_class, cfg.validation_steps, cfg.validation_samples,
                                  cfg.validation_guidance, cfg.validation_seed)
    rule = RULES["target_gone" if cfg.recipe == "object" else "lowest_rate"]
    if domain.closed_world:
        set_name, probes, auto = f"domain:{domain.name}", domain_probes(domain, request.targets, settings), \
            (domain.evaluator, {})
        measure = partial(class_rates, accepted=partial(domain_names, domain))
    elif cfg.recipe == "object":
        set_name, probes, measure = "imagenette", imagenette_probes(request.targets, settings), class_rates
        # torchvision's ResNet50_Weights.DEFAULT, which train_object.py loads
        auto = ("imagenet", {"weights": "IMAGENET1K_V2", "top_k": 1})
    else:
        set_name, probes, measure, auto = "nudity", nudity_probes(settings), nudity_rates, ("nudenet", {})
    name, options = auto if cfg.validation_evaluator == "auto" else (cfg.validation_evaluator, {})
    if name == "imagenet":
        from ..evaluators.imagenet import class_index

        for t in request.targets:
            try:
                class_index(t)
            except EraseLabError:
                raise EraseLabError(f"RECE's object validation classifies with ImageNet classes and {t!r} is "
                                    "not one; pass validation_evaluator=clip or select_epoch=last") from None
    evaluator = get_evaluator(name, **options)
    return Validator(pipe, probes, evaluator, measure, request.targets, request.progress), rule, set_name


@register
class RECE(Eraser):
    name = "rece"
    description = "UCE, then closed-form adversarial embeddings of the edited model erased again for N epochs"
    Config = RECEConfig

    def erase(self, pipe, request: EraseRequest):
        cfg = request.config
        # Nothing to choose among without epochs; otherwise the detector loads before any solve.
        validate = cfg.select_epoch == "validation" and cfg.epochs > 0
        plan = validation_plan(pipe, request, cfg) if validate else None
        if plan is None:
            return self.run(pipe, request, None)
        validator, rule, set_name = plan
        with validator:
            return self.run(pipe, request, (validator, rule, set_name))

    def run(self, pipe, request: EraseRequest, plan):
        setup = prepare(pipe, request)
        cfg, state, encoder, rows = setup.cfg, setup.state, setup.encoder, setup.rows
        names = list(state.original)
        weights = uce_weights(state.original, rows, cfg)
        selector = None
        if plan is not None:
            validator, rule, set_name = plan
            original = validator(None) if rule.needs_original else None
            selector = rule(original, validator(self.candidate(state, weights, cfg, request, setup)))
        concept, guide = reedit_pairs(encoder, request.targets, cfg)
        retain = reedit_retained_rows(encoder, request.targets, setup.preserve, cfg)
        scale = sum(float(state.original[n].double().norm() ** 2) for n in names) ** 0.5
        history, kept, stopped = [], weights, None
        for epoch in range(cfg.epochs):
            adv = adversarial_embedding([weights[n] for n in names], [state.original[n] for n in names],
                                        concept, cfg.embedding_lam)
            # How far the edited model's K/V of c′ are from the original's K/V of the concept (lower = c′
            # works).
            mismatch = self.mismatch(weights, state.original, adv, concept)
            erase, onto = adv, guide.double()
            if cfg.keep_targets:
                erase, onto = torch.cat([rows.erase.double(), erase]), torch.cat([rows.guide.double(), onto])
            new = apply_transform(weights, uce_transform(erase, onto, retain, cfg.reedit_lam,
                                                         cfg.reedit_erase_scale, cfg.reedit_preserve_scale))
            change = sum(float((new[n].double() - weights[n].double()).norm() ** 2) for n in names) ** 0.5
            history.append({"epoch": epoch + 1, "adversarial_mismatch": mismatch,
                            "relative_change": round(change / max(scale, 1e-300), 6)})
            weights = new
            if selector is not None:
                history[-1]["validation"] = validator(self.candidate(state, weights, cfg, request, setup))
                stop = selector.offer(epoch + 1, history[-1]["validation"])
                if selector.kept == epoch + 1:
                    kept = weights
                if stop:
                    stopped = epoch + 1
                    break
        final = kept if selector is not None else weights
        extras = UCE.checked(state.original, final, encoder, setup.probes, cfg)
        extras.update(row_counts(rows, cfg))
        extras["adversarial_mismatch"] = [h["adversarial_mismatch"] for h in history]
        extras["epochs"] = history
        if selector is not None:
            extras["selected_epoch"] = selector.kept
            extras["validation"] = {"rule": selector.name, "set": set_name, **validator.describe(),
                                    "original": selector.original, "start": selector.start,
                                    "saved_epochs": list(selector.saved),
                                    "stopped_after": stopped}
        return state.finish(final, self.name, cfg.as_dict(), request.targets, setup.preserve, extras)

    def candidate(self, state, weights, cfg, request, setup):
        """A candidate model as an Edit, so that validation images are keyed by its weights."""
        return state.finish(weights, self.name, cfg.as_dict(), request.targets, setup.preserve, {})

    @staticmethod
    def mismatch(edited, original, adv, rows) -> float:
        num = sum(float((adv @ edited[n].double().T - rows.double() @ original[n].double().T).norm() ** 2)
                  for n in edited)
        den = sum(float((rows.double() @ original[n].double().T).norm() ** 2) for n in edited)
        return round((num / max(den, 1e-300)) ** 0.5, 6)
