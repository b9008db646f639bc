"""The miniworld's concept data (world.yaml) with the queries suites, captions and the oracle need."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from ..errors import EraseLabError


@dataclass(frozen=True)
class World:
    version: int
    hierarchy: dict[str, tuple[str, ...]]
    synonym_map: dict[str, tuple[str, ...]]
    attributes: dict[str, tuple[str, ...]]
    positions: tuple[str, ...]
    visually_similar: tuple[tuple[str, str], ...]
    binomial: tuple[tuple[str, str], ...]
    semantically_related: tuple[tuple[str, str], ...]

    # ---- hierarchy ------------------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        children = {c for cs in self.hierarchy.values() for c in cs}
        return next(p for p in self.hierarchy if p not in children)

    @property
    def concepts(self) -> tuple[str, ...]:
        """Every concept, top-down (root first, leaves last)."""
        out, frontier = [], [self.root]
        while frontier:
            out.extend(frontier)
            frontier = [c for p in frontier for c in self.hierarchy.get(p, ())]
        return tuple(out)

    @property
    def classes(self) -> tuple[str, ...]:
        """The renderable object classes (leaves), in a fixed order that indexes the oracle's outputs."""
        return tuple(c for c in self.concepts if c not in self.hierarchy)

    @property
    def colors(self) -> tuple[str, ...]:
        return self.attributes["color"]

    @property
    def sizes(self) -> tuple[str, ...]:
        return self.attributes["size"]

    @property
    def fills(self) -> tuple[str, ...]:
        return self.attributes["fill"]

    def check(self, concept: str) -> str:
        if concept not in self.concepts:
            shown = concept if len(concept) <= 60 else f"{concept[:40]}… ({len(concept)} characters)"
            raise EraseLabError(f"{shown!r} is not a miniworld concept; choose one of {', '.join(self.concepts)}")
        return concept

    def parent(self, concept: str) -> str | None:
        self.check(concept)
        return next((p for p, cs in self.hierarchy.items() if concept in cs), None)

    def ancestors(self, concept: str) -> list[str]:
        """Parent first, root last."""
        out, p = [], self.parent(concept)
        while p is not None:
            out.append(p)
            p = self.parent(p)
        return out

    def children(self, concept: str) -> list[str]:
        return list(self.hierarchy.get(self.check(concept), ()))

    def leaves_under(self, concept: str) -> list[str]:
        """The object classes a concept covers (itself if it is a class)."""
        if concept not in self.hierarchy:
            return [self.check(concept)]
        return [leaf for c in self.hierarchy[concept] for leaf in self.leaves_under(c)]

    def siblings(self, concept: str) -> list[str]:
        p = self.parent(concept)
        return [c for c in self.hierarchy.get(p, ()) if c != concept] if p else []

    def depth(self, concept: str) -> int:
        return len(self.ancestors(concept))

    def distance(self, a: str, b: str) -> int:
        """Edges between two concepts in the hierarchy tree (siblings: 2; parent/child: 1)."""
        pa, pb = [a] + self.ancestors(a), [b] + self.ancestors(b)
        common = next(x for x in pa if x in pb)
        return pa.index(common) + pb.index(common)

    def synonyms(self, concept: str) -> list[str]:
        return list(self.synonym_map.get(self.check(concept), ()))

    def names(self, concept: str) -> list[str]:
        """The concept's own name followed by its synonyms."""
        return [concept] + self.synonyms(concept)

    # ---- relations ------------------------------------------------------------------------------------------
    def _partners(self, pairs, concept: str) -> list[str]:
        self.check(concept)
        return [b if a == concept else a for a, b in pairs if concept in (a, b)]

    def similar(self, concept: str) -> list[str]:
        return self._partners(self.visually_similar, concept)

    def binomial_partners(self, concept: str) -> list[str]:
        return self._partners(self.binomial, concept)

    def related(self, concept: str) -> list[str]:
        return self._partners(self.semantically_related, concept)

    def unrelated(self, concept: str) -> list[str]:
        """Classes in other branches that are neither similar, binomial nor related to the concept."""
        near = set(self.similar(concept)) | set(self.binomial_partners(concept)) | set(self.related(concept))
        covered = set(self.leaves_under(concept)) | set(self.ancestors(concept))
        branch = self.ancestors(concept)[-2] if len(self.ancestors(concept)) >= 2 else concept
        return [c for c in self.classes
                if c not in near and c not in covered and c not in self.leaves_under(branch)]


def world_fields(raw: dict) -> dict:
    """World's constructor arguments from a parsed world/taxonomy file (both share this layout)."""
    return dict(
        version=int(raw["version"]),
        hierarchy={k: tuple(v) for k, v in raw["hierarchy"].items()},
        synonym_map={k: tuple(v) for k, v in raw.get("synonyms", {}).items()},
        attributes={k: tuple(v) for k, v in raw["attributes"].items()},
        positions=tuple(raw["positions"]),
        visually_similar=tuple(tuple(x) for x in raw.get("visually_similar", ())),
        binomial=tuple(tuple(x) for x in raw.get("binomial", ())),
        semantically_related=tuple(tuple(x) for x in raw.get("semantically_related", ())),
    )


@lru_cache(maxsize=None)
def load_world(path: str | None = None) -> World:
    p = Path(path) if path else Path(__file__).with_name("world.yaml")
    return World(**world_fields(yaml.safe_load(p.read_text())))


WORLD = load_world()
