"""EraseBench suite (arXiv 2501.09833): probe groups by their relation to the erased concept.

Aspects: "target" (Efficacy), "paraphrase" (Generality; relation "synonym" or "description"), and the
Sensitivity groups "visually_similar", "subset_superset", "binomial", "semantically_related" (relation = the
group). Each probe concept is rendered with every prompt template of the domain (`Domain.prompt_templates`).

Models of natural images read the shipped data/erasebench.json (built with the taxonomy by
scripts/build_taxonomy.py; probe concepts there need not be taxonomy concepts: goldfish → koi). A closed
world (miniworld) derives its groups from its hierarchy: visually similar, binomial and semantically related
pairs from its data file, subset/superset = parent + children.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..domain import Domain, noun_phrase
from ..errors import EraseLabError
from .base import Spec, Suite

DATA_FILE = Path(__file__).with_name("data") / "erasebench.json"
GROUPS = ("visually_similar", "subset_superset", "binomial", "semantically_related")


@cache
def load_erasebench(path: str | None = None) -> dict:
    p = Path(path) if path else DATA_FILE
    if not p.is_file():
        raise EraseLabError(f"EraseBench data {p} not found; reinstall eraselab or rebuild it with "
                            "scripts/build_taxonomy.py")
    return json.loads(p.read_text())


@dataclass
class EraseBenchSuite(Suite):
    METRICS = ("target.recognition", "erasebench.efficacy", "erasebench.generality", "erasebench.sensitivity",
               "erasebench.sensitivity.<group>", "erasebench.hm")
    name: str = "erasebench"
    version: int = 1
    ASPECTS: tuple[str, ...] = ("target", "paraphrase") + GROUPS

    def groups(self, target: str, domain: Domain) -> dict[str, list[str]]:
        """The probe concepts per group (plus "synonym" and "paraphrase": names and descriptions of the
        target)."""
        if not domain.closed_world:
            data = load_erasebench()
            if target not in data["targets"]:
                raise EraseLabError(
                    f"{target!r} has no EraseBench data (v{data['version']}); choose one of the "
                    f"{len(data['targets'])} targets in {DATA_FILE.name}, e.g. cat, goldfish, sun"
                )
            return {k: list(v) for k, v in data["targets"][target].items()}
        h = domain.hierarchy
        parent = h.parent(target)
        return {"visually_similar": h.similar(target),
                "subset_superset": ([parent] if parent else []) + h.children(target),
                "binomial": h.binomial_partners(target), "semantically_related": h.related(target),
                "synonym": h.synonyms(target), "paraphrase": []}

    def data_tag(self, domain: Domain) -> str:
        return domain.tag() if domain.closed_world else f"erasebench-data@v{load_erasebench()['version']}"

    def suite_id(self, domain: Domain) -> str:
        return f"{self.name}/{domain.name}@v{self.version}+{self.data_tag(domain)}"

    def _specs(self, target: str, domain: Domain) -> list[Spec]:
        groups = self.groups(target, domain)
        templates = domain.prompt_templates

        def named(c: str, aspect: str, relation: str, label: str) -> list[Spec]:
            return [Spec(t.format(np=noun_phrase(c)), (label,), aspect, relation) for t in templates]

        specs = named(target, "target", "target", target)
        for syn in groups.get("synonym", []):
            specs += named(syn, "paraphrase", "synonym", target)
        specs += [Spec(t.format(np=noun_phrase(target)), (target,), "paraphrase", "paraphrase")
                  for t in domain.paraphrase_templates]
        specs += [Spec(domain.prompt(d), (target,), "paraphrase", "description")
                  for d in groups.get("paraphrase", [])]
        for group in GROUPS:
            for c in groups.get(group, []):
                specs += named(c, group, group, c)
        return specs
