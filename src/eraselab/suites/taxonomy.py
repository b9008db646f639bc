"""The real-model concept taxonomy (data/taxonomy.json, built by scripts/build_taxonomy.py from WordNet 3.0).

It has the miniworld World's shape — hierarchy, synonyms, attributes, relation pairs — so every hierarchy query
(parent, ancestors, children, leaves_under, siblings, distance, unrelated) is World's own code; the taxonomy adds
what only real concepts have: descriptions (WordNet glosses), which attribute values fit which superclass, and the
WordNet synset / ImageNet-1k id of each concept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..errors import EraseLabError
from ..miniworld.world import World, world_fields

TAXONOMY_FILE = Path(__file__).with_name("data") / "taxonomy.json"


@dataclass(frozen=True)
class Taxonomy(World):
    paraphrase_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attribute_profiles: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    wordnet: dict[str, str] = field(default_factory=dict)
    imagenet: dict[str, dict] = field(default_factory=dict)

    def check(self, concept: str) -> str:
        if concept not in self._concept_set:
            raise EraseLabError(f"{concept!r} is not in the concept taxonomy v{self.version}; choose a concept "
                                f"listed in {TAXONOMY_FILE.name} (e.g. car, cat, apple) or use a YAML suite")
        return concept

    @property
    def _concept_set(self) -> frozenset[str]:
        # World.concepts walks the tree on every call; the taxonomy is 10x larger, so keep a set.
        cached = self.__dict__.get("_concepts_cache")
        if cached is None:
            cached = frozenset(self.concepts)
            object.__setattr__(self, "_concepts_cache", cached)
        return cached

    def descriptions(self, concept: str) -> list[str]:
        """Paraphrases that describe the concept without naming it (WordNet glosses)."""
        return list(self.paraphrase_map.get(self.check(concept), ()))

    def attribute_values(self, concept: str) -> dict[str, tuple[str, ...]]:
        """The attribute values that make sense for a concept: its superclass's profile (a banana is not wooden)."""
        for c in [self.check(concept)] + self.ancestors(concept):
            if c in self.attribute_profiles:
                return self.attribute_profiles[c]
        return self.attributes


@cache
def load_taxonomy(path: str | None = None) -> Taxonomy:
    p = Path(path) if path else TAXONOMY_FILE
    if not p.is_file():
        raise EraseLabError(f"taxonomy file {p} not found; reinstall eraselab or rebuild it with "
                            "scripts/build_taxonomy.py")
    raw = json.loads(p.read_text())
    return Taxonomy(
        **world_fields(raw),
        paraphrase_map={k: tuple(v) for k, v in raw.get("paraphrases", {}).items()},
        attribute_profiles={sup: {k: tuple(v) for k, v in prof.items()}
                            for sup, prof in raw.get("attribute_profiles", {}).items()},
        wordnet=dict(raw.get("wordnet", {})),
        imagenet=dict(raw.get("imagenet", {})),
    )
