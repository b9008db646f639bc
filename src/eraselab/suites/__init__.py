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

from ..domain import Domain, get_domain
from ..errors import EraseLabError
from ..hierarchy import parse_concept
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


__all__ = ["SUITES", "Domain", "EraseBenchSuite", "GenerationSettings", "I2PSuite", "ImagenetteSuite",
           "SeeSuite", "Spec", "Suite", "Taxonomy", "YamlSuite", "get_domain", "get_suite", "load_taxonomy",
           "parse_concept", "suite_names"]
