"""Where a suite's concept data come from (miniworld's World or the real taxonomy) and how concepts are phrased.

`concept_source("miniworld")` reads eraselab.miniworld.world.WORLD; `concept_source("real")` the shipped taxonomy.
Both give a `ConceptSource`: the hierarchy (`.h`, World's query API), the attribute values that fit a concept,
and the phrasing of prompts — miniworld prompts follow its caption grammar ("a red circle left of a blue square"),
real prompts are photo captions ("a photo of a red car and a blue bus").

A target may carry attribute words before the concept ("red circle", "large red car"): `parse_concept` splits it
into the concept and its (kind, value) attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ..errors import EraseLabError
from ..miniworld.world import World

DOMAINS = ("miniworld", "real")


@dataclass(frozen=True)
class ConceptSource:
    domain: str
    h: World  # World or Taxonomy: parent/ancestors/children/leaves_under/siblings/distance/synonyms/unrelated
    name: str
    version: int
    template: str  # wraps a noun phrase into a prompt
    paraphrase_templates: tuple[str, ...]  # name the concept in other words
    pair_joins: tuple[str, ...]  # "{a} left of {b}": how two objects share one prompt
    excluded: tuple[str, ...] = ()  # concepts never probed (the real taxonomy's artificial root "object")

    def prompt(self, noun_phrase: str) -> str:
        return self.template.format(np=noun_phrase)

    def attribute_values(self, concept: str) -> dict[str, tuple[str, ...]]:
        if hasattr(self.h, "attribute_values"):
            return self.h.attribute_values(concept)
        return self.h.attributes

    def descriptions(self, concept: str) -> list[str]:
        return self.h.descriptions(concept) if hasattr(self.h, "descriptions") else []

    def tag(self) -> str:
        return f"{self.name}@v{self.version}"


# Adjective order of English (and of miniworld captions: size, colour, fill): "a dirty large old red wooden car".
KIND_ORDER = ("condition", "size", "age", "color", "pattern", "fill", "material")


def ordered(attrs) -> tuple[str, ...]:
    """The values of (kind, value) pairs in adjective order."""
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return tuple(v for _, v in sorted(attrs, key=lambda kv: rank.get(kv[0], len(rank))))


def noun_phrase(concept: str, values: tuple[str, ...] | list[str] = ()) -> str:
    """'a red circle', 'an orange apple', 'an English springer'; values in the order given (see `ordered`)."""
    words = " ".join([*values, concept])
    return f"{'an' if words[:1].lower() in 'aeiou' else 'a'} {words}"


@cache
def concept_source(domain: str) -> ConceptSource:
    if domain == "miniworld":
        from ..miniworld.world import WORLD

        # The miniworld text encoder learnt only caption words (miniworld/captions.py), so rewordings with other
        # words ("a picture of") would probe untrained embeddings: its paraphrases are its synonyms.
        return ConceptSource(domain, WORLD, "miniworld-world", WORLD.version, template="{np}",
                             paraphrase_templates=(),
                             pair_joins=tuple(f"{{a}} {p} {{b}}" for p in WORLD.positions) + ("{a} and {b}",))
    if domain == "real":
        from .taxonomy import load_taxonomy

        tax = load_taxonomy()
        return ConceptSource(domain, tax, "taxonomy", tax.version, template="a photo of {np}",
                             paraphrase_templates=("a picture showing {np}", "an image of {np}"),
                             pair_joins=("{a} and {b}", "{a} next to {b}"), excluded=(tax.root,))
    raise EraseLabError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")


def parse_concept(h: World, text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """'large red circle' -> ('circle', (('size', 'large'), ('color', 'red'))); a bare concept has no attributes.

    `h` is a World or Taxonomy: the concept must be one of its concepts, the words before it attribute values.
    """
    words = " ".join(str(text).split())
    parts = words.split(" ")
    kind_of = {v: k for k, vs in h.attributes.items() for v in vs}
    known = set(h.concepts)
    for i in range(len(parts)):
        concept = " ".join(parts[i:])
        if concept in known and all(w in kind_of for w in parts[:i]):
            return concept, tuple((kind_of[w], w) for w in parts[:i])
    h.check(words)  # raises the source's "not a concept" error naming valid choices
    raise EraseLabError(f"{words!r} is a concept with unknown attribute words; use values from "
                        f"{', '.join(h.attributes)}")  # pragma: no cover - check() raised already
