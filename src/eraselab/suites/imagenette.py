"""Imagenette suite: the AP paper's object-erasure protocol (arXiv 2410.15618; SPEC.md §3) for ESR-k / PSR-k.

Ten Imagenette classes, four splits of five erased / five preserved classes, prompt "Image of {class}",
`seeds_per_prompt` seeded images per class (500 in the protocol), CFG 7.5, 100 sampling steps, 512×512.
The target is a split name ("v1" … "v4") or an explicit list of Imagenette classes to erase (the rest
preserved). Probes have aspect "erased" or "preserved" (relation: the split name), and `concepts` = (the
prompt's class,), the y(x) the classifier's top-k must (PSR) or must not (ESR) contain.

`aliases()` maps each class to the names ImageNet-1k classifiers may report for it (index, wnid, synonyms),
so metrics can match "chainsaw" or "English Springer Spaniel" to the protocol's class.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..domain import Domain, as_domain
from ..errors import EraseLabError
from ..probes import Probe
from .base import Spec, Suite

# class -> (ImageNet-1k index, WordNet id, other names ImageNet uses)
CLASSES: dict[str, tuple[int, str, tuple[str, ...]]] = {
    "tench": (0, "n01440764", ("Tinca tinca",)),
    "English springer": (217, "n02102040", ("English springer spaniel",)),
    "cassette player": (482, "n02979186", ()),
    "chain saw": (491, "n03000684", ("chainsaw",)),
    "church": (497, "n03028079", ("church building",)),
    "French horn": (566, "n03394916", ("horn",)),
    "garbage truck": (569, "n03417042", ("dustcart",)),
    "gas pump": (571, "n03425413", ("gasoline pump", "petrol pump", "island dispenser")),
    "golf ball": (574, "n03445777", ()),
    "parachute": (701, "n03888257", ("chute",)),
}
_V1 = ("cassette player", "church", "garbage truck", "parachute", "French horn")
_V3 = ("cassette player", "chain saw", "church", "gas pump", "tench")
SPLITS: dict[str, tuple[str, ...]] = {
    "v1": _V1, "v2": tuple(c for c in CLASSES if c not in _V1),
    "v3": _V3, "v4": tuple(c for c in CLASSES if c not in _V3),
}
PROMPT = "Image of {cls}"


def aliases() -> dict[str, list[str]]:
    return {c: [c, str(i), wnid, *others] for c, (i, wnid, others) in CLASSES.items()}


def erased_classes(target: str | Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """(split name, erased classes) for "v1".."v4" or an explicit class list (split name "custom")."""
    if isinstance(target, str) and target in SPLITS:
        return target, SPLITS[target]
    chosen = [target] if isinstance(target, str) else list(target)
    unknown = [c for c in chosen if c not in CLASSES]
    if unknown or not chosen:
        raise EraseLabError(
            f"imagenette target {unknown or chosen!r} is neither a split ({', '.join(SPLITS)}) nor "
            f"Imagenette classes ({', '.join(CLASSES)}); pass one of those as --target"
        )
    return "custom", tuple(chosen)


@dataclass
class ImagenetteSuite(Suite):
    METRICS = ("imagenette.esr@<k>", "imagenette.psr@<k>", "imagenette.esr@<k>.<split>",
               "imagenette.psr@<k>.<split>")
    name: str = "imagenette"
    version: int = 1
    ASPECTS: tuple[str, ...] = ("erased", "preserved")
    defaults: dict = field(default_factory=lambda: {"seeds_per_prompt": 500, "steps": 100, "guidance": 7.5,
                                                    "height": 512, "width": 512})

    def build(self, target: str | Iterable[str], domain: Domain | str = "real", **settings) -> list[Probe]:
        domain = as_domain(domain)
        if domain.closed_world:
            raise EraseLabError(f"the imagenette suite needs a real Stable Diffusion model, not the closed "
                                f"world {domain.name}; use the see or erasebench suites there")
        split, erased = erased_classes(target)
        specs = [Spec(PROMPT.format(cls=c), (c,), "erased" if c in erased else "preserved", split)
                 for c in CLASSES]
        return self.expand(specs, self.settings(**settings), f"{self.name}@v{self.version}")
