"""The miniworld's concept data (world.yaml) as a Hierarchy, with the extras its renderer, captions and oracle
need (positions, colours, sizes, fills), and the miniworld Domain built from it."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from ..domain import Domain
from ..hierarchy import Hierarchy, hierarchy_fields


@dataclass(frozen=True)
class World(Hierarchy):
    positions: tuple[str, ...] = ()  # the position words captions join two objects with ("left of")
    name: str = "miniworld"

    @property
    def colors(self) -> tuple[str, ...]:
        return self.attributes["color"]

    @property
    def sizes(self) -> tuple[str, ...]:
        return self.attributes["size"]

    @property
    def fills(self) -> tuple[str, ...]:
        return self.attributes["fill"]


def world_fields(raw: dict) -> dict:
    """World's constructor arguments from a parsed world file."""
    return {**hierarchy_fields(raw), "positions": tuple(raw["positions"])}


@cache
def load_world(path: str | None = None) -> World:
    p = Path(path) if path else Path(__file__).with_name("world.yaml")
    return World(**world_fields(yaml.safe_load(p.read_text())))


WORLD = load_world()


@cache
def miniworld_domain() -> Domain:
    """The embedded model's domain: its prompts are its own caption grammar ("a red circle left of a blue
    square"), its vocabulary its own words, its images read by the exact oracle."""
    from .captions import SINGLE_ATTR_P
    from .render import concept_examples

    # The miniworld text encoder learnt only caption words (captions.py), so rewordings with other words ("a
    # picture of") would probe untrained embeddings: its paraphrases are its synonyms.
    return Domain(name="miniworld", hierarchy=WORLD, data="miniworld-world", template="{np}",
                  paraphrase_templates=(),
                  pair_joins=tuple(f"{{a}} {p} {{b}}" for p in WORLD.positions) + ("{a} and {b}",),
                  prompt_templates=("{np}",), vocabulary="concepts", evaluator="oracle", closed_world=True,
                  caption_attributes=dict(SINGLE_ATTR_P), renderer=concept_examples)
