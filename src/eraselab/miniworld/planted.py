"""Planted effects: an edit of known size, for checking that metrics recover what really happened.

A real eraser's side effects are unknown, so a metric that reads them cannot be checked against them. Here the
"model" is miniworld's exact renderer: a probe is drawn as the scene its labels describe (its concepts, a leaf
under a parent concept picked by the seed, its attribute values), and a `PlantedEffect` changes that scene
with chosen probabilities, deterministically per (prompt, seed):
- erase      every object of the target class (with the target's attribute values, if any) is removed
- neighbour  a related non-target's object (sibling, parent, child; EraseBench's related groups; a preserved
             class) becomes another class outside the target
- unrelated  a control concept's object becomes another unrelated class
- attribute  a composition's attribute takes another value ("a red circle" drawn blue)
- leak       in two-object prompts, the other object takes the target's value of the attribute kind
The original and the edited image of one probe share the scene's content draws but not its pixel jitter, so
even a null edit changes pixels (the oracle's own errors then show as noise, as a real edit's would). The size
an effect really has on each metric is that metric's value over many seeds (`benchmarks/validate_metrics.py`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import EraseLabError
from ..probes import Probe
from .render import IMAGE_SIZE, render_scene, scene_from_spec
from .world import WORLD

# Probes of related non-targets: SEE's hierarchy neighbours, EraseBench's related groups, the AP protocol's
# preserved classes.
NEIGHBOUR_ASPECTS = ("sibling", "parent", "child", "visually_similar", "subset_superset", "binomial",
                     "semantically_related", "preserved")


@dataclass(frozen=True)
class PlantedEffect:
    """Probabilities (0–1) of each planted change; all 0 is the null edit."""

    erase: float = 0.0
    neighbour: float = 0.0
    unrelated: float = 0.0
    attribute: float = 0.0
    leak: float = 0.0

    def __post_init__(self):
        for name, p in asdict(self).items():
            if not 0.0 <= p <= 1.0:
                raise EraseLabError(f"planted {name} probability {p} is not in [0, 1]")


def _stream(probe: Probe, purpose: str) -> np.random.Generator:
    """A generator fixed by the prompt, the seed and what it decides (content, a plant, pixel jitter)."""
    digest = hashlib.sha256(f"{probe.prompt}\x00{probe.seed}\x00{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _leaf(concept: str, rng: np.random.Generator) -> str:
    leaves = WORLD.leaves_under(concept) if concept not in WORLD.classes else [concept]
    return str(rng.choice(leaves))


class PlantedRenderer:
    """Renders probes for the original ("exact") model and for a planted edit of it, erasing `target`."""

    def __init__(self, target: str):
        from ..hierarchy import parse_concept

        concept, attrs = parse_concept(WORLD, target)
        self.target_classes = frozenset(WORLD.leaves_under(concept) if concept not in WORLD.classes
                                        else [concept])
        self.target_values = dict(attrs)  # kind -> value the erased object must show
        self.outside = [c for c in WORLD.classes if c not in self.target_classes]
        self._kind = {v: k for k, vs in WORLD.attributes.items() for v in vs}

    # ---- the scene a probe asks for ---------------------------------------------------------------------
    def scene_spec(self, probe: Probe) -> list[dict]:
        rng = _stream(probe, "content")
        specs = []
        for concept in probe.concepts[:2]:
            spec = {
                "cls": _leaf(concept, rng) if concept in WORLD.concepts else str(rng.choice(WORLD.classes))
            }
            for obj, value in probe.attributes:
                if obj == concept and self._kind.get(value):
                    spec[self._kind[value]] = value
            specs.append(spec)
        return specs

    def _is_target(self, spec: dict) -> bool:
        return spec["cls"] in self.target_classes and all(
            spec.get(k, v) == v for k, v in self.target_values.items()
        )

    # ---- planting -----------------------------------------------------------------------------------------
    def planted_spec(self, probe: Probe, effect: PlantedEffect) -> list[dict]:
        specs = [dict(s) for s in self.scene_spec(probe)]
        rng = _stream(probe, "plant")
        u = {name: rng.random() for name in ("erase", "neighbour", "unrelated", "attribute", "leak")}
        swap_to = [str(c) for c in rng.permutation(self.outside)]
        if specs and probe.aspect == "composition" and u["attribute"] < effect.attribute:
            kind = next((self._kind[v] for o, v in probe.attributes if self._kind.get(v)), None)
            if kind is not None and kind in specs[0]:
                others = [v for v in WORLD.attributes[kind] if v != specs[0][kind]]
                specs[0][kind] = others[int(rng.integers(len(others)))]
        if len(specs) == 2 and probe.aspect == "leak" and u["leak"] < effect.leak:
            kind, value = next(((self._kind[v], v) for o, v in probe.attributes if o == probe.concepts[0]),
                               (None, None))
            if kind is not None:
                specs[1][kind] = value
        if specs and probe.aspect in NEIGHBOUR_ASPECTS and u["neighbour"] < effect.neighbour \
                and not self._is_target(specs[0]):
            specs[0]["cls"] = next(c for c in swap_to if c != specs[0]["cls"])
        if specs and probe.aspect == "unrelated" and u["unrelated"] < effect.unrelated:
            specs[0]["cls"] = next(c for c in swap_to if c != specs[0]["cls"])
        if u["erase"] < effect.erase:
            specs = [s for s in specs if not self._is_target(s)]
        return specs

    # ---- images --------------------------------------------------------------------------------------------
    def render(self, probe: Probe, effect: PlantedEffect | None) -> np.ndarray:
        """The image of `probe` on the exact model (effect None) or on the planted edit."""
        specs = self.scene_spec(probe) if effect is None else self.planted_spec(probe, effect)
        if not specs:
            return np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        jitter = _stream(probe, "pixels:original" if effect is None else "pixels:edited")
        return render_scene(scene_from_spec(jitter, specs))

    def render_all(self, probes: Sequence[Probe], effect: PlantedEffect | None) -> list:
        """PIL images, as evaluators receive generated images."""
        from PIL import Image

        return [Image.fromarray(self.render(p, effect)) for p in probes]
