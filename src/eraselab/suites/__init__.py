"""Benchmark suites: each turns target concept(s) into seeded, labelled `Probe`s (see base.py for the
interface).

    from eraselab.suites import get_suite, suite_names
    probes = get_suite("see").build("circle", domain="miniworld", seeds_per_prompt=4)
    probes = get_suite("imagenette").build("v1", domain="real")          # AP protocol defaults
    probes = get_suite("i2p", path="i2p.csv").build("nudity", domain="real")
    probes = get_suite("my_suite.yaml").build("car", domain="real")      # a user suite, no code

`domain` is a Domain (eraselab/domain.py) or a built-in domain's name. Built-in suites: see, erasebench,
imagenette, i2p. A name ending in .yaml/.yml loads a YamlSuite from that file.
Third-party packages add suites under the entry-point group "eraselab.suites" (eraselab/registry.py).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from ..domain import Domain, get_domain
from ..errors import EraseLabError
from ..hierarchy import parse_concept
from ..metric_info import suite_metrics
from ..probes import Probe
from ..registry import Registry
from .base import GenerationSettings, Spec, Suite
from .erasebench import EraseBenchSuite
from .i2p import I2PSuite
from .imagenette import ImagenetteSuite
from .see import SeeSuite
from .taxonomy import Taxonomy, load_taxonomy
from .yaml_suite import YamlSuite

SUITES: Registry[type[Suite]] = Registry("suite", base=Suite, entry_points="eraselab.suites",
                                        hint="or give a suite .yaml file")
for _name, _suite in {"see": SeeSuite, "erasebench": EraseBenchSuite, "imagenette": ImagenetteSuite,
                      "i2p": I2PSuite}.items():
    SUITES.add(_name, _suite)


def suite_names() -> list[str]:
    return sorted(SUITES.names())


def get_suite(name: str, **options) -> Suite:
    """A suite by name (options go to its constructor, e.g. path= for i2p), or a YAML suite by file path."""
    if name.endswith((".yaml", ".yml")):
        return YamlSuite(path=name, **options)
    suite_cls = SUITES.get(name)
    try:
        return suite_cls(**options)
    except TypeError:
        raise EraseLabError(f"suite {name!r} does not take option(s) {', '.join(sorted(options))}") from None


def declared_metrics(probes: Iterable[Probe]) -> frozenset[str]:
    """The metric keys the suites that made these probes declare (Suite.METRICS).

    A probe names its suite by id ("see/real@v2+…", "imagenette@v1"); a suite not found by the name before
    its "/" or "@" (a YAML file's, a hand-made probe's) or declaring nothing gets what its probes' aspects
    call for (metric_info.suite_metrics), as Suite.metrics() derives it.
    """
    aspects_by_suite: dict[str, set[str]] = defaultdict(set)
    for p in probes:
        aspects_by_suite[p.suite].add(p.aspect)
    out: set[str] = set()
    for suite_id, aspects in aspects_by_suite.items():
        name = suite_id.split("@", 1)[0].split("/", 1)[0]
        declared = SUITES.get(name).METRICS if name in SUITES else None
        out.update(suite_metrics(aspects) if declared is None else declared)
    return frozenset(out)


__all__ = ["SUITES", "Domain", "EraseBenchSuite", "GenerationSettings", "I2PSuite", "ImagenetteSuite",
           "SeeSuite", "Spec", "Suite", "Taxonomy", "YamlSuite", "declared_metrics", "get_domain",
           "get_suite", "load_taxonomy", "parse_concept", "suite_names"]
