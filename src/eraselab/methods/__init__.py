"""Concept erasure methods behind one interface: `erase(pipe, method, targets, preserve, **config) -> Edit`.

Each method is one module defining one or more `Eraser` classes, registered (registry.py) by the name the
CLI uses.
"""
from __future__ import annotations

from ..errors import EraseLabError
from .base import Eraser, EraseRequest, MethodConfig, Recipe, Reference
from .params import check_cross_attention
from .registry import METHODS, get_method, method_names, register


def build_request(method: str, targets, preserve=(), pipe=None, progress: bool = True, domain=None,
                  model: str | None = None, **config):
    """Validate everything about an erasure that does not need the model's weights (pipe may be None; `model`,
    the model's name, lets a method that does not run on the model's family refuse before it loads)."""
    eraser_cls = get_method(method)
    if model is not None:
        family = family_of_model_name(model)
        if family is not None:
            eraser_cls.check_family(family)
    targets, preserve = EraseRequest.clean_concepts(targets, preserve)
    cfg = eraser_cls.Config.build(config, pipe=pipe, method=method)
    return eraser_cls, EraseRequest(targets=targets, preserve=preserve, config=cfg, progress=progress,
                                    domain=domain)


UNET_FAMILIES = ("sd", "sdxl")


def family_of_model_name(model: str) -> str | None:
    """The family of the diffusers folder `model` names, from its model_index.json's components (the rule of
    generation/family.py family_of), without loading it; None when that cannot be told (a hub id, a file)."""
    import json

    from ..models import resolve_model

    try:
        kind, path = resolve_model(model)
        index = (
            json.loads((path / "model_index.json").read_text(encoding="utf-8")) if kind == "folder" else None
        )
    except (EraseLabError, OSError, ValueError):
        return None  # the model's own checks report it, in their words
    if not isinstance(index, dict):
        return None

    def has(part):
        return isinstance(index.get(part), list) and index[part][0] is not None

    if has("transformer") and not has("unet"):
        return "flux" if index.get("_class_name", "").startswith("Flux") else None
    return "sdxl" if has("text_encoder_2") else "sd"


def check_pipeline(eraser_cls, pipe) -> str:
    """The pipeline's family, once the method runs on it and the generation engine can use its edit."""
    from ..generation.family import check_generation_family, family_of

    family = family_of(pipe)
    eraser_cls.check_family(family)
    if family != "sd":
        check_generation_family(pipe)  # an SDXL refiner, a Flux pipeline without its T5 encoder, ...
    elif getattr(getattr(pipe, "unet", None), "config", {}).get("time_cond_proj_dim") is not None:
        raise EraseLabError("guidance-embedded (LCM-style) UNets are not supported by the generation engine; "
                            "use an SD 1.x/2.x model")
    return family


def erase(pipe, method: str, targets, preserve=(), progress: bool = True, domain=None, **config):
    """Erase `targets` from `pipe` with `method`; returns an `eraselab.edits.Edit` and leaves `pipe`
    unchanged.

    `config` keys are the method's (see `eraselab methods`); preset="auto" picks SD 1.x reference defaults or
    the scaled-down miniworld ones by the model. `domain`: the concepts' Domain (eraselab.domain; None: the
    model's).
    """
    from ..models import fingerprint

    # A method that has no version for the model's family, or a pipeline the generation engine cannot run
    # (an edit for it could never be used), is refused before any work, in one line.
    family = check_pipeline(get_method(method), pipe)
    eraser_cls, request = build_request(
        method, targets, preserve, pipe=pipe, progress=progress, domain=domain, **config
    )
    if eraser_cls.needs_cross_attention and family in UNET_FAMILIES:
        check_cross_attention(pipe)
    # The base fingerprint (a hash over gigabytes of weights on SD) is computed now, outside the method's
    # timer, so an Edit's `seconds` is the erasure alone.
    fingerprint(pipe)
    edit = eraser_cls().erase(pipe, request)
    recipe = request.config.recipe_info
    if recipe is not None:
        edit.extras["recipe"] = recipe.provenance()
    return edit


__all__ = [
    "METHODS",
    "EraseRequest",
    "Eraser",
    "MethodConfig",
    "Recipe",
    "Reference",
    "build_request",
    "erase",
    "get_method",
    "method_names",
    "register",
]
