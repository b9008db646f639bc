"""The real-model concept taxonomy (data/taxonomy.json, built by scripts/build_taxonomy.py from WordNet 3.0).

It is a Hierarchy (eraselab/hierarchy.py: hierarchy, synonyms, attributes, relation pairs), so every
hierarchy query (parent, ancestors, children, leaves_under, siblings, distance, unrelated) is that class's
code; the taxonomy adds what only real concepts have: descriptions (WordNet glosses), which attribute values
fit which superclass, and the WordNet synset / ImageNet-1k id of each concept. `taxonomy_domain()` is the
Domain of real models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..domain import Domain
from ..errors import EraseLabError
from ..hierarchy import Hierarchy, hierarchy_fields

TAXONOMY_FILE = Path(__file__).with_name("data") / "taxonomy.json"


@dataclass(frozen=True)
class Taxonomy(Hierarchy):
    name: str = "taxonomy"
    paraphrase_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attribute_profiles: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    wordnet: dict[str, str] = field(default_factory=dict)
    imagenet: dict[str, dict] = field(default_factory=dict)

    def check(self, concept: str) -> str:
        if concept not in self._concept_set:
            raise EraseLabError(
                f"{concept!r} is not in the concept taxonomy v{self.version}; choose a concept "
                f"listed in {TAXONOMY_FILE.name} (e.g. car, cat, apple) or use a YAML suite"
            )
        return concept

    def descriptions(self, concept: str) -> list[str]:
        """Paraphrases that describe the concept without naming it (WordNet glosses)."""
        return list(self.paraphrase_map.get(self.check(concept), ()))

    def attribute_values(self, concept: str) -> dict[str, tuple[str, ...]]:
        """The attribute values that make sense for a concept: its superclass's profile (a banana is not
        wooden)."""
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
        **hierarchy_fields(raw),
        paraphrase_map={k: tuple(v) for k, v in raw.get("paraphrases", {}).items()},
        attribute_profiles={sup: {k: tuple(v) for k, v in prof.items()}
                            for sup, prof in raw.get("attribute_profiles", {}).items()},
        wordnet=dict(raw.get("wordnet", {})),
        imagenet=dict(raw.get("imagenet", {})),
    )


@cache
def taxonomy_domain() -> Domain:
    """The domain of real text-to-image models: photo captions ("a photo of a red car and a blue bus"), the
    English word list as AP/AGE's vocabulary, CLIP as the evaluator, ImageNet names as classifier aliases."""
    from .imagenette import aliases

    tax = load_taxonomy()
    return Domain(name="real", hierarchy=tax, data="taxonomy", template="a photo of {np}",
                  paraphrase_templates=("a picture showing {np}", "an image of {np}"),
                  pair_joins=("{a} and {b}", "{a} next to {b}"),
                  prompt_templates=("a photo of {np}", "a realistic image of {np}",
                                    "a close-up photo of {np}"),
                  excluded=(tax.root,), vocabulary="en3k", evaluator="clip", aliases=aliases())
