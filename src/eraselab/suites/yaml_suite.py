"""A user suite from a YAML file of concepts and relations: no code needed.

`get_suite("my_suite.yaml")` (or `eraselab bench --suites my_suite.yaml`). Format (see
data/example_suite.yaml):

    name: vehicles            # required; the suite id is "yaml:<name>@v<version>"
    version: 1                # required; bump it when you change the file, results record it
    templates: ["a photo of {np}", "a drawing of {np}"]   # optional; {np} is "a red car"; default "{np}"
    targets:                  # required: per target concept, relation -> list of concepts
      car:
        synonym: [automobile, auto]       # names of the target: probes labelled with the target itself
        paraphrase: [motor vehicle with four wheels]
        composition: [red car, old car]   # the target with attribute words before it
        parent: [vehicle]
        child: [taxi, jeep]
        sibling: [bus, truck]
        unrelated: [banana]
        visually_similar: [van]           # any other relation name is allowed; it becomes the aspect
    prompts:                  # optional: literal probes, e.g. attribute leakage
      - prompt: a red car and a blue bus
        target: car                       # which target's build includes it
        concepts: [car, bus]
        aspect: leak
        relation: leak:sibling
        attributes: [[car, red], [bus, blue]]

Each concept of a relation becomes one prompt per template; its probe has aspect = relation = the relation
name and concepts = (the concept,), except synonym / paraphrase / composition, whose probes expect the target
itself (a composition's leading words become its (target, value) attributes). The target gets aspect "target".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..domain import Domain, noun_phrase, read_yaml_mapping
from ..errors import EraseLabError
from ..metric_info import suite_metrics
from .base import Spec, Suite

TARGET_NAMING = ("synonym", "paraphrase", "composition")
SEE_ORDER = (
    "target",
    "synonym",
    "paraphrase",
    "composition",
    "child",
    "parent",
    "leak",
    "sibling",
    "unrelated",
)


@dataclass
class YamlSuite(Suite):
    path: str = ""

    def __post_init__(self):
        p = Path(self.path)
        if not p.is_file():
            raise EraseLabError(f"suite file {p} not found; give the path of a suite YAML (format: "
                                "eraselab/suites/yaml_suite.py, example: suites/data/example_suite.yaml)")
        raw = read_yaml_mapping(p, "suite", "name, version and targets")
        for key in ("name", "version", "targets"):
            if key not in raw:
                raise EraseLabError(
                    f"suite file {p} has no {key!r}; add it (see the example_suite.yaml format)"
                )
        if not isinstance(raw["targets"], dict) or not raw["targets"]:
            raise EraseLabError(f"suite file {p}: 'targets' must map each target concept to its relations")
        for t, rels in raw["targets"].items():
            if not isinstance(rels, dict) or not all(isinstance(v, list) for v in rels.values()):
                raise EraseLabError(
                    f"suite file {p}: target {t!r} must map relation names to lists of concepts"
                )
        templates = raw.get("templates", ["{np}"])
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise EraseLabError(
                f"suite file {p}: 'templates' must be a list of strings, e.g. ['a photo of {{np}}']"
            )
        if not isinstance(raw.get("prompts") or [], list):
            raise EraseLabError(f"suite file {p}: 'prompts' must be a list of mappings with a 'prompt' field")
        if not isinstance(raw["version"], int) or isinstance(raw["version"], bool):
            raise EraseLabError(
                f"suite file {p}: 'version' must be an integer, got {raw['version']!r}; write e.g. version: 1"
            )
        if not templates or any("{np}" not in t for t in templates):
            raise EraseLabError(f"suite file {p}: every template needs {{np}}, e.g. 'a photo of {{np}}'")
        self.raw = raw
        self.name = f"yaml:{raw['name']}"
        self.version = int(raw["version"])
        self.templates = tuple(templates)
        relations = [r for rels in raw["targets"].values() for r in rels]
        self.ASPECTS = tuple(SEE_ORDER) + tuple(dict.fromkeys(r for r in relations if r not in SEE_ORDER))

    def suite_id(self, domain: Domain) -> str:
        return f"{self.name}@v{self.version}"

    def metrics(self) -> tuple[str, ...]:
        """The metrics its relations and literal prompts' aspects call for (metric_info.suite_metrics): one no
        declared metric reads gets its recognition rate and drop."""
        relations = [r for rels in self.raw["targets"].values() for r in rels]
        prompts = [item.get("aspect", "custom") for item in self.raw.get("prompts") or []
                   if isinstance(item, dict)]
        return suite_metrics(["target", *relations, *prompts])

    def _specs(self, target: str, domain: Domain) -> list[Spec]:
        targets = self.raw["targets"]
        if target not in targets:
            raise EraseLabError(f"{target!r} is not a target of suite {self.name}; choose one of "
                                f"{', '.join(map(str, targets))}")

        def named(text: str, concept: str, relation: str, attrs=()) -> list[Spec]:
            return [Spec(t.format(np=noun_phrase(text)), (concept,), relation, relation, attrs)
                    for t in self.templates]

        specs = named(target, target, "target")
        for relation, concepts in targets[target].items():
            for c in map(str, concepts):
                if relation == "composition":
                    words = c[:-len(target)].split() if c.endswith(target) else []
                    specs += named(c, target, relation, tuple((target, w) for w in words))
                else:
                    specs += named(c, target if relation in TARGET_NAMING else c, relation)
        for i, item in enumerate(self.raw.get("prompts") or []):
            if not isinstance(item, dict) or "prompt" not in item:
                raise EraseLabError(f"suite {self.name}: prompts[{i}] needs at least a 'prompt' field")
            if item.get("target", target) == target:
                specs.append(
                    Spec(
                        str(item["prompt"]),
                        tuple(item.get("concepts", [target])),
                        item.get("aspect", "custom"),
                        item.get("relation", item.get("aspect", "custom")),
                        tuple(tuple(a) for a in item.get("attributes", [])),
                    )
                )
        return specs
