"""The Suite interface: turn target concept(s) into seeded, labelled probes.

    suite = get_suite("see")
    probes = suite.build("circle", domain="miniworld", seeds_per_prompt=4, steps=25, guidance=7.5)

`domain` is a Domain (eraselab/domain.py: the concept hierarchy and how prompts name concepts) or the name
of a built-in one ("miniworld", "real").

Every probe carries its labels: `concepts` (what the image should show), `aspect` (what the probe measures,
one of the suite's ASPECTS), `relation` (how its concept relates to the target, finer than the aspect:
"grandparent", "leak:sibling", …), `attributes` ((object, value) pairs the image should show) and `suite`, the
suite id "<suite>/<domain>@v<suite version>+<concept data>@v<data version>" so a result names the exact data
it came from.

A suite subclass implements `_specs(target, domain)`, returning `Spec`s (a prompt and its labels, no seed);
the base class expands each spec over seeds, merges several targets and removes duplicate prompts.
Seeds are base_seed, base_seed+1, …: the same prompt and seed on the original and the edited model is the pair
the metrics compare. Each prompt gets seeds_per_prompt seeds, or more when its aspect has too few prompts to
reach min_images_per_aspect images.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from ..domain import Domain, as_domain
from ..errors import EraseLabError
from ..metric_info import is_metric, suite_metrics
from ..probes import Probe


@dataclass(frozen=True)
class Spec:
    """One prompt and what it should show; expanded to one Probe per seed."""

    prompt: str
    concepts: tuple[str, ...]
    aspect: str
    relation: str
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GenerationSettings:
    seeds_per_prompt: int = 4
    steps: int = 25
    guidance: float = 7.5
    height: int = 0
    width: int = 0
    sampler: str = "ddim"
    base_seed: int = 0
    negative_prompt: str = ""
    # At least this many images per aspect: an aspect with few prompts (the target is one) gets more seeds per
    # prompt, so that every rate rests on enough images (bench sets it from --precision).
    min_images_per_aspect: int = 0

    def __post_init__(self):
        if not isinstance(self.seeds_per_prompt, int) or self.seeds_per_prompt < 1:
            raise EraseLabError(f"seeds_per_prompt must be a positive integer, got {self.seeds_per_prompt!r}")
        if not isinstance(self.base_seed, int) or self.base_seed < 0:
            raise EraseLabError(f"base_seed must be a non-negative integer, got {self.base_seed!r}")
        if not isinstance(self.min_images_per_aspect, int) or self.min_images_per_aspect < 0:
            raise EraseLabError("min_images_per_aspect must be a non-negative integer, got "
                                f"{self.min_images_per_aspect!r}")

    def seeds_for(self, prompts_in_aspect: int) -> int:
        """Seeds per prompt for an aspect with that many prompts."""
        return max(self.seeds_per_prompt, -(-self.min_images_per_aspect // max(prompts_in_aspect, 1)))


@dataclass
class Suite:
    """Base class; subclasses set name, version, ASPECTS (and METRICS) and implement `_specs`."""

    # The metrics this suite's probes are measured by: keys of metric_info's declarations, families with
    # <placeholders> included ("see.evasion.<route>"). None: those its aspects call for
    # (metric_info.suite_metrics), so a new relation gets its recognition rate and drop without code.
    METRICS: ClassVar[tuple[str, ...] | None] = None
    name: str = "suite"
    version: int = 1
    ASPECTS: tuple[str, ...] = ()
    defaults: dict = field(default_factory=dict)  # GenerationSettings overrides for this suite

    def metrics(self) -> tuple[str, ...]:
        """The metric keys this suite declares (see METRICS)."""
        declared = suite_metrics(self.ASPECTS) if self.METRICS is None else self.METRICS
        unknown = [k for k in declared if not is_metric(k)]
        if unknown:
            raise EraseLabError(f"suite {self.name} declares unknown metric(s) {', '.join(unknown)}; declare "
                                "them in eraselab/metric_info.py or use its keys")
        return tuple(declared)

    def build(self, target: str | Iterable[str], domain: Domain | str = "miniworld",
              **settings) -> list[Probe]:
        """Probes for the target(s). `settings`: any GenerationSettings field (None = the suite's default)."""
        domain = as_domain(domain)
        gen = self.settings(**settings)
        targets = [target] if isinstance(target, str) else list(target)
        if not targets:
            raise EraseLabError(f"the {self.name} suite needs at least one target concept")
        return self.expand(self.merge([self._specs(t, domain) for t in targets]), gen,
                           self.suite_id(domain))

    def merge(self, per_target: list[list[Spec]]) -> list[Spec]:
        """One spec list for several targets.

        A prompt may carry several labels within one target (EraseBench: the moon is both visually similar to
        and binomial with the sun) and all are kept. Across targets, "a square" is a neighbour of circle but
        the target of square: only the target(s) for which the prompt has the aspect earliest in ASPECTS keep
        it, so a target is never measured as someone else's neighbour.
        """
        rank = {a: i for i, a in enumerate(self.ASPECTS)}
        best_per_target = [{} for _ in per_target]
        for best, specs in zip(best_per_target, per_target):
            for s in specs:
                best[s.prompt] = min(best.get(s.prompt, len(rank)), rank.get(s.aspect, len(rank)))
        best_overall: dict[str, int] = {}
        for best in best_per_target:
            for prompt, r in best.items():
                best_overall[prompt] = min(best_overall.get(prompt, len(rank)), r)
        kept = [s for best, specs in zip(best_per_target, per_target) for s in specs
                if best[s.prompt] == best_overall[s.prompt]]
        return list(dict.fromkeys(kept))  # identical specs (same prompt and labels) once

    def settings(self, **overrides) -> GenerationSettings:
        unknown = set(overrides) - set(GenerationSettings.__dataclass_fields__)
        if unknown:
            raise EraseLabError(f"unknown suite setting(s) {', '.join(sorted(unknown))}; use "
                                f"{', '.join(GenerationSettings.__dataclass_fields__)}")
        merged = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        return GenerationSettings(**merged)

    def suite_id(self, domain: Domain) -> str:
        return f"{self.name}/{domain.name}@v{self.version}+{domain.tag()}"

    @staticmethod
    def expand(specs: Iterable[Spec], gen: GenerationSettings, suite_id: str) -> list[Probe]:
        specs = list(specs)
        prompts = Counter(aspect for _, aspect in {(s.prompt, s.aspect) for s in specs})
        return [Probe(prompt=s.prompt, seed=gen.base_seed + i, negative_prompt=gen.negative_prompt,
                      steps=gen.steps, guidance=gen.guidance, height=gen.height, width=gen.width,
                      sampler=gen.sampler, concepts=s.concepts, aspect=s.aspect, relation=s.relation,
                      suite=suite_id, attributes=s.attributes)
                for s in specs for i in range(gen.seeds_for(prompts[s.aspect]))]

    def _specs(self, target: str, domain: Domain) -> list[Spec]:
        raise NotImplementedError
