"""The Eraser interface, the erasure request, and typed method configs with validation, recipes and presets.

Every method is one `Eraser` subclass with a `Config` dataclass whose field defaults are its default *recipe*:
the settings of the official code that produced the published numbers, on Stable Diffusion 1.x.
`Config.recipes` lists every recipe the method offers, each naming its reference (repository, commit, file)
and the config values it changes from the field defaults; the chosen recipe is recorded in the config and in
every Edit's provenance. eraselab's own improvements are config options that every reference recipe leaves
off.

`Config.miniworld` lists the scale parameters (steps, learning rates, weights) the scaled-down "miniworld"
preset changes on top of the recipe (the embedded model has 8×8 latents and a small text encoder, so it needs
fewer steps). Preset "auto" picks "miniworld" for the embedded model or any UNet under 50 M parameters, else
"sd". Precedence, lowest first: field defaults, recipe, preset, the user's own values.

Model families (generation/family.py: "sd", "sdxl", "flux"): each Eraser declares the families it runs on, and
each Recipe the families its reference code was written for; on a model, the default recipe is the method's
first recipe for the model's family (e.g. UCE's SDXL and Flux scripts on those models).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..domain import Domain, domain_for_model
from ..errors import EraseLabError, warn_once

PRESETS = ("auto", "sd", "miniworld")
PRESET_MODELS = {"sd": "Stable Diffusion 1.x-sized models", "miniworld": "the embedded miniworld model"}
# How messages and `eraselab methods` name the model families of generation/family.py.
FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "flux": "Flux"}


@dataclass(frozen=True)
class Reference:
    """Where a recipe's numbers come from: a file of a public repository at a commit."""

    repository: str  # owner/name on GitHub
    commit: str  # 40 hex digits
    file: str

    def cite(self) -> str:
        return f"{self.repository}@{self.commit[:7]}:{self.file}"


@dataclass(frozen=True)
class Recipe:
    """One way of running a method: the reference code it reproduces and the config values that implies.

    `defaults` holds only the values that differ from the Config's field defaults (the first recipe, the
    method's default, usually has none)."""

    name: str
    reference: Reference
    summary: str
    defaults: Mapping = field(default_factory=dict)
    families: tuple[str, ...] = ("sd",)  # the model families the reference code runs on
    # False: no official code exists for this case; `reference` is the code eraselab's own port starts from.
    official: bool = True

    def provenance(self) -> dict:
        record = {"name": self.name, "repository": self.reference.repository, "commit": self.reference.commit,
                  "file": self.reference.file, "summary": self.summary}
        return record if self.official else {**record, "official": False}

    def cite(self) -> str:
        return self.reference.cite() if self.official else f"eraselab's own port of {self.reference.cite()}"


class Bound:
    """A declared bound of one config field: `check` raises a one-line EraseLabError naming the field."""

    def check(self, name: str, value) -> None:
        raise NotImplementedError


class Positive(Bound):
    def check(self, name: str, value) -> None:
        if not value > 0:  # `not >` so that NaN is refused too
            raise EraseLabError(f"config {name} must be positive, got {value}")


class NonNegative(Bound):
    def check(self, name: str, value) -> None:
        if not value >= 0:  # `not ≥` so that NaN is refused too
            raise EraseLabError(f"config {name} must be zero or positive, got {value}")


class OneOf(Bound):
    def __init__(self, choices):
        self.choices = tuple(choices)

    def check(self, name: str, value) -> None:
        if value not in self.choices:
            raise EraseLabError(f"config {name} must be one of {', '.join(self.choices)}, not {value!r}")


POSITIVE = Positive()
NON_NEGATIVE = NonNegative()


@dataclass(frozen=True)
class Setting:
    """What a config field declares besides its type and default: its line of help for `eraselab methods`
    (empty: not listed) and its bound (None: any value of its type)."""

    help: str = ""
    bound: Bound | None = None


SETTING = "eraselab.setting"  # the dataclass field metadata key of a Setting


def setting(default, help: str = "", bound: Bound | None = None):
    """Declare a config field once: `name: type = setting(default, "help", POSITIVE)`. MethodConfig lists the
    help and enforces the bound in `validate`."""
    if not isinstance(help, str):
        raise TypeError(f"setting's help must be a string, not {help!r} (pass a bound as bound=...)")
    return field(default=default, metadata={SETTING: Setting(help, bound)})


class DeclaredHelp:
    """`Config.help`: each declared field's help in field order, derived from the declarations."""

    def __get__(self, instance, owner) -> dict[str, str]:
        return {name: s.help for name, s in owner.settings().items() if s.help}


@dataclass
class MethodConfig:
    """Fields shared by every method. Subclasses add theirs, each declared once with `setting` (default, help,
    bound); `recipes` are the reference recipes (the first is the default), `miniworld` the scaled-down
    preset."""

    seed: int = setting(0, "random seed of everything the method samples")
    preset: str = setting("auto", "defaults: auto (by model size), sd (SD 1.x reference) or miniworld")
    recipe: str = setting("", "which reference code the method reproduces (`eraselab methods` lists each "
                              "method's recipes; empty = the default, the first)")

    recipes: ClassVar[tuple[Recipe, ...]] = ()
    miniworld: ClassVar[dict] = {}
    # One line per field for `eraselab methods` and error messages.
    help = DeclaredHelp()

    @classmethod
    def settings(cls) -> dict[str, Setting]:
        """Each field's declaration. A subclass that only changes a field's default (`tau: float = 0.1`)
        keeps the declaration of the class that declared the field."""
        out = {}
        for f in dataclasses.fields(cls):
            same_field = (getattr(c, "__dataclass_fields__", {}).get(f.name) for c in cls.__mro__)
            declared = (g.metadata[SETTING] for g in same_field if g is not None and SETTING in g.metadata)
            out[f.name] = next(declared, Setting())
        return out

    @classmethod
    def recipe_named(cls, name: str = "", family: str | None = None) -> Recipe | None:
        """The recipe called `name` ("" = the default: the first, or with `family` the first written for that
        model family); None for a method without recipes. A named recipe must suit `family` (when given)."""
        if not cls.recipes:
            if name:
                raise EraseLabError(
                    f"recipe {name!r} is unknown: this method has no recipes; drop the recipe key"
                )
            return None
        fitting = [r for r in cls.recipes if family is None or family in r.families]
        if not name:
            return fitting[0] if fitting else cls.recipes[0]
        for r in cls.recipes:
            if r.name == name:
                if r not in fitting and fitting:
                    choices = " or ".join(f.name for f in fitting)
                    raise EraseLabError(f"recipe {name!r} reproduces code for {'/'.join(r.families)} models, "
                                        f"not {family}; choose {choices} (or drop the recipe key)")
                return r
        raise EraseLabError(
            f"unknown recipe {name!r}; choose one of {', '.join(r.name for r in cls.recipes)}"
        )

    @property
    def recipe_info(self) -> Recipe | None:
        return type(self).recipe_named(self.recipe)

    @classmethod
    def default_recipes(cls) -> dict[str, str]:
        """Each model family's default recipe (the first written for it)."""
        out = {}
        for r in cls.recipes:
            for f in r.families:
                out.setdefault(f, r.name)
        return out

    @classmethod
    def field_types(cls) -> dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def build(cls, overrides: dict, pipe=None, method: str = "") -> MethodConfig:
        """Validate user overrides (strings from the CLI are parsed) and apply the preset chosen for
        `pipe`."""
        types = cls.field_types()
        values = {}
        for key, raw in overrides.items():
            if key not in types:
                raise EraseLabError(
                    f"unknown config key {key!r} for method {method or cls.__name__}; valid keys: "
                    f"{', '.join(sorted(types))}"
                )
            values[key] = coerce(raw, types[key], key)
        preset = values.get("preset", "auto")
        if preset not in PRESETS:
            raise EraseLabError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
        if preset == "auto":
            preset = auto_preset(pipe) if pipe is not None else "sd"
        elif pipe is not None and preset != auto_preset(pipe):
            warn_once(
                f"preset {preset} was tuned for {PRESET_MODELS[preset]}, not for this model (preset=auto "
                f"picks {auto_preset(pipe)} here); its steps and learning rates may do too little or too "
                "much"
            )
        recipe = cls.recipe_named(values.get("recipe", ""), model_family(pipe) if pipe is not None else None)
        merged = {**(recipe.defaults if recipe else {}), **(cls.miniworld if preset == "miniworld" else {}),
                  **values, "preset": preset, "recipe": recipe.name if recipe else ""}
        config = cls(**merged)
        config.validate()
        return config

    def validate(self) -> None:
        """Enforce every field's declared bound, in field order. Subclasses extend it (calling this first)
        only with rules a bound cannot state: across fields, or with a reason of their own."""
        for name, declared in type(self).settings().items():
            if declared.bound is not None:
                declared.bound.check(name, getattr(self, name))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _bool(text: str, key: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise EraseLabError(f"config {key} must be true or false, not {text!r}")


def coerce(value, typ, key: str):
    """`value` as `typ` (int, float, bool, str); CLI strings are parsed, other mismatches are errors."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _bool(value, key)
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # nan/inf parse as floats but break every method's arithmetic
                raise EraseLabError(f"config {key} must be a finite number, not {value!r}")
            return number
    elif typ is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - configs only use the four scalar types
        raise TypeError(f"config field {key} has unsupported type {typ}")
    raise EraseLabError(f"config {key} must be {typ.__name__}, not {value!r}")


def model_family(pipe) -> str:
    """The pipeline's model family: "sd", "sdxl" or "flux" (generation/family.py)."""
    from ..generation.family import family_of

    return family_of(pipe)


def auto_preset(pipe) -> str:
    from ..models import MINIWORLD, SMALL_MODEL_PARAMETERS, model_source

    unet = getattr(pipe, "unet", None)
    if model_source(pipe) == MINIWORLD:
        return "miniworld"
    if unet is not None and sum(p.numel() for p in unet.parameters()) < SMALL_MODEL_PARAMETERS:
        return "miniworld"
    return "sd"


@dataclass
class EraseRequest:
    """What to erase: target concepts, concepts to keep, the validated method config, and the concept domain
    the concepts belong to (None: the model's own, see `domain_for`)."""

    targets: list[str]
    preserve: list[str] = field(default_factory=list)
    config: MethodConfig = field(default_factory=MethodConfig)
    progress: bool = True
    domain: Domain | None = None

    def domain_for(self, model) -> Domain:
        """The request's domain, or else that of `model` (a pipeline or a model name): methods read concept
        hierarchies, vocabularies and caption grammars from it, never from a particular world."""
        return self.domain if self.domain is not None else domain_for_model(model)

    @staticmethod
    def clean_concepts(targets, preserve) -> tuple[list[str], list[str]]:
        if isinstance(targets, str):
            targets = [targets]
        if isinstance(preserve, str):
            preserve = [preserve]
        targets = [str(t).strip() for t in (targets or [])]
        preserve = [str(p).strip() for p in (preserve or [])]
        if not targets:
            raise EraseLabError("no target concept given; pass at least one --target")
        if any(not t for t in targets):
            raise EraseLabError("a target concept is empty; pass a non-empty --target")
        if any(not p for p in preserve):
            raise EraseLabError("a preserved concept is empty; drop the empty --preserve")
        both = [t for t in targets if t.lower() in {p.lower() for p in preserve}]
        if both:
            raise EraseLabError(
                f"{both[0]!r} is both a target and a preserved concept; pass it to only one of "
                "--target and --preserve"
            )
        return list(dict.fromkeys(targets)), list(dict.fromkeys(preserve))


class Eraser:
    """One erasure method. Subclasses set `name`, `description`, `Config`, and implement `run`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # The model families the method runs on (generation/family.py FAMILIES): those where an official version
    # exists, or where the method needs nothing family-specific.
    families: ClassVar[tuple[str, ...]] = ("sd",)
    # Inference-time methods change guidance, not weights, so they need no cross-attention.
    needs_cross_attention: ClassVar[bool] = True

    @classmethod
    def check_family(cls, family: str) -> None:
        """Refuse, in one line, a model family the method does not run on."""
        if family not in cls.families:
            runs_on = " and ".join(FAMILY_NAMES.get(f, f) for f in cls.families)
            raise EraseLabError(f"{cls.name or cls.__name__} runs on {runs_on} models, not on this "
                                f"{FAMILY_NAMES.get(family, family)} pipeline; use such a model or another "
                                "method (`eraselab methods` shows which method runs on which family)")

    def erase(self, pipe, request: EraseRequest):
        """Return an Edit; the pipeline's weights are left as they were."""
        raise NotImplementedError

    @classmethod
    def check_model(cls, request: EraseRequest, model: str) -> None:
        """Refuse, before anything loads, a request that cannot work on the model named `model` (a name, not
        a pipeline: bench calls this while validating). Methods override it; the default accepts."""
