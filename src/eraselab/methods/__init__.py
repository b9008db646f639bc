"""Concept erasure methods behind one interface: `erase(pipe, method, targets, preserve, **config) -> Edit`.

Each method is one module defining one or more `Eraser` classes, registered (registry.py) by the name the
CLI uses.
"""
from __future__ import annotations

from .base import Eraser, EraseRequest, MethodConfig, Recipe, Reference
from .params import check_cross_attention
from .registry import METHODS, get_method, method_names, register


def build_request(method: str, targets, preserve=(), pipe=None, progress: bool = True, domain=None, **config):
    """Validate everything about an erasure that does not need the model's weights (pipe may be None)."""
    eraser_cls = get_method(method)
    targets, preserve = EraseRequest.clean_concepts(targets, preserve)
    cfg = eraser_cls.Config.build(config, pipe=pipe, method=method)
    return eraser_cls, EraseRequest(targets=targets, preserve=preserve, config=cfg, progress=progress,
                                    domain=domain)


def erase(pipe, method: str, targets, preserve=(), progress: bool = True, domain=None, **config):
    """Erase `targets` from `pipe` with `method`; returns an `eraselab.edits.Edit` and leaves `pipe` unchanged.

    `config` keys are the method's (see `eraselab methods`); preset="auto" picks SD 1.x reference defaults or the
    scaled-down miniworld ones by the model. `domain`: the concepts' Domain (eraselab.domain; None: the model's).
    """
    from ..generation.family import check_family
    from ..models import fingerprint

    eraser_cls, request = build_request(method, targets, preserve, pipe=pipe, progress=progress, domain=domain,
                                        **config)
    # An edit for a model family eraselab cannot generate with (SDXL, Flux today) could never be used: refuse
    # it before any work, in one line, instead of crashing inside diffusers or writing an unusable edit.
    check_family(pipe)
    if eraser_cls.needs_cross_attention:
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
