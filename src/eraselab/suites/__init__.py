"""Benchmark suites: each turns target concept(s) into seeded, labelled `Probe`s (see base.py for the interface).

    from eraselab.suites import get_suite, suite_names
    probes = get_suite("see").build("circle", domain="miniworld", seeds_per_prompt=4)
    probes = get_suite("imagenette").build("v1", domain="real")          # AP protocol defaults
    probes = get_suite("i2p", path="i2p.csv").build("nudity", domain="real")
    probes = get_suite("my_suite.yaml").build("car", domain="real")      # a user suite, no code

Built-in: see, erasebench, imagenette, i2p. A name ending in .yaml/.yml loads a YamlSuite from that file.
"""
from __future__ import annotations

from ..errors import EraseLabError
from .base import GenerationSettings, Spec, Suite
from .concepts import DOMAINS, ConceptSource, concept_source, parse_concept
from .erasebench import EraseBenchSuite
from .i2p import I2PSuite
from .imagenette import ImagenetteSuite
from .see import SeeSuite
from .taxonomy import Taxonomy, load_taxonomy
from .yaml_suite import YamlSuite

_BUILTIN = {"see": SeeSuite, "erasebench": EraseBenchSuite, "imagenette": ImagenetteSuite, "i2p": I2PSuite}


def suite_names() -> list[str]:
    return sorted(_BUILTIN)


def get_suite(name: str, **options) -> Suite:
    """A suite by name (options go to its constructor, e.g. path= for i2p), or a YAML suite by file path."""
    if name.endswith((".yaml", ".yml")):
        return YamlSuite(path=name, **options)
    if name not in _BUILTIN:
        raise EraseLabError(f"unknown suite {name!r}; choose one of {', '.join(suite_names())} or give a suite "
                            ".yaml file")
    try:
        return _BUILTIN[name](**options)
    except TypeError:
        raise EraseLabError(f"suite {name!r} does not take option(s) {', '.join(sorted(options))}") from None


__all__ = ["DOMAINS", "ConceptSource", "EraseBenchSuite", "GenerationSettings", "I2PSuite", "ImagenetteSuite",
           "SeeSuite", "Spec", "Suite", "Taxonomy", "YamlSuite", "concept_source", "get_suite", "load_taxonomy",
           "parse_concept", "suite_names"]
