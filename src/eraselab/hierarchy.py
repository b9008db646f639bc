"""A concept hierarchy: a tree of concepts with their synonyms, attribute values and relation pairs, and the
queries suites, methods and metrics ask of it (parent, ancestors, children, leaves_under, siblings, distance,
synonyms, unrelated, check).

miniworld's World and the WordNet Taxonomy are instances (subclasses) of it; a Domain (domain.py) holds one.
Files describing a hierarchy share one layout (world.yaml, taxonomy.json, a user's domain YAML):

    version: 1
    hierarchy: {parent: [child, …], …}        # one root; leaves are the concrete classes
    synonyms: {concept: [other name, …]}       # optional
    attributes: {kind: [value, …]}             # optional
    visually_similar / binomial / semantically_related: [[a, b], …]   # optional relation pairs
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EraseLabError


@dataclass(frozen=True)
class Hierarchy:
    version: int
    hierarchy: dict[str, tuple[str, ...]]
    synonym_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    visually_similar: tuple[tuple[str, str], ...] = ()
    binomial: tuple[tuple[str, str], ...] = ()
    semantically_related: tuple[tuple[str, str], ...] = ()
    name: str = "domain"  # in "'x' is not a <name> concept"

    # ---- the tree ------------------------------------------------------------------------------------------
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
        """The concrete classes (leaves), in a fixed order (it indexes miniworld's oracle outputs)."""
        return tuple(c for c in self.concepts if c not in self.hierarchy)

    def __contains__(self, concept) -> bool:
        return concept in self._concept_set

    @property
    def _concept_set(self) -> frozenset[str]:
        # `concepts` walks the tree on every call; membership is asked for every probe and every target.
        cached = self.__dict__.get("_concepts_cache")
        if cached is None:
            cached = frozenset(self.concepts)
            object.__setattr__(self, "_concepts_cache", cached)
        return cached

    def check(self, concept: str) -> str:
        if concept not in self._concept_set:
            shown = concept if len(concept) <= 60 else f"{concept[:40]}… ({len(concept)} characters)"
            raise EraseLabError(f"{shown!r} is not a {self.name} concept; choose one of "
                                f"{', '.join(self.concepts)}")
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
        """The classes a concept covers (itself if it is a class)."""
        if concept not in self.hierarchy:
            return [self.check(concept)]
        return [leaf for c in self.hierarchy[concept] for leaf in self.leaves_under(c)]

    def siblings(self, concept: str) -> list[str]:
        p = self.parent(concept)
        return [c for c in self.hierarchy.get(p, ()) if c != concept] if p else []

    def depth(self, concept: str) -> int:
        return len(self.ancestors(concept))

    def distance(self, a: str, b: str) -> int:
        """Edges between two concepts in the tree (siblings: 2; parent/child: 1)."""
        pa, pb = [a] + self.ancestors(a), [b] + self.ancestors(b)
        common = next(x for x in pa if x in pb)
        return pa.index(common) + pb.index(common)

    def common_ancestor(self, concepts) -> str:
        """The lowest concept that is or contains every one of `concepts`."""
        chains = [[c] + self.ancestors(c) for c in concepts]
        return next(x for x in chains[0] if all(x in chain for chain in chains[1:]))

    # ---- names and attributes ------------------------------------------------------------------------------
    def synonyms(self, concept: str) -> list[str]:
        return list(self.synonym_map.get(self.check(concept), ()))

    def other_names(self, concept: str) -> list[str]:
        """Synonyms that share no word with the concept's own name: "five pointed star" still says "star", so
        only the others test whether an erasure reaches the concept under another name."""
        own = set(concept.lower().split())
        return [s for s in self.synonyms(concept) if not own & set(s.lower().split())]

    def names(self, concept: str) -> list[str]:
        """The concept's own name followed by its synonyms."""
        return [concept] + self.synonyms(concept)

    def all_names(self) -> list[str]:
        """Every concept's name and synonyms, top-down, each once."""
        return list(dict.fromkeys(n for c in self.concepts for n in self.names(c)))

    def attribute_values(self, concept: str) -> dict[str, tuple[str, ...]]:
        """The attribute values that fit a concept (here every value; the taxonomy narrows them)."""
        self.check(concept)
        return self.attributes

    def descriptions(self, concept: str) -> list[str]:
        """Phrases that describe the concept without naming it (none here; the taxonomy has glosses)."""
        self.check(concept)
        return []

    # ---- relations -----------------------------------------------------------------------------------------
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


def hierarchy_fields(raw: dict) -> dict:
    """Hierarchy's constructor arguments from a parsed hierarchy file (layout: this module's docstring)."""
    return {
        "version": int(raw["version"]),
        "hierarchy": {k: tuple(v) for k, v in raw["hierarchy"].items()},
        "synonym_map": {k: tuple(v) for k, v in (raw.get("synonyms") or {}).items()},
        "attributes": {k: tuple(v) for k, v in (raw.get("attributes") or {}).items()},
        "visually_similar": tuple(tuple(x) for x in raw.get("visually_similar") or ()),
        "binomial": tuple(tuple(x) for x in raw.get("binomial") or ()),
        "semantically_related": tuple(tuple(x) for x in raw.get("semantically_related") or ()),
    }


def parse_concept(h: Hierarchy, text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """'large red circle' -> ('circle', (('size', 'large'), ('color', 'red'))); a bare concept has none.

    The concept must be one of h's concepts, the words before it attribute values of h.
    """
    words = " ".join(str(text).split())
    parts = words.split(" ")
    kind_of = {v: k for k, vs in h.attributes.items() for v in vs}
    for i in range(len(parts)):
        concept = " ".join(parts[i:])
        if concept in h and all(w in kind_of for w in parts[:i]):
            return concept, tuple((kind_of[w], w) for w in parts[:i])
    h.check(words)  # raises the hierarchy's "not a concept" error naming valid choices
    raise EraseLabError(f"{words!r} is a concept with unknown attribute words; use values from "
                        f"{', '.join(h.attributes)}")  # pragma: no cover - check() raised already
