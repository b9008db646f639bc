"""The concept domain a model draws in: its concept hierarchy, how prompts name concepts, the vocabulary of
candidate concepts, and which evaluator reads its images. Chosen once, from the model, and handed down to
methods, suites and metrics, so none of them needs to know which world it works in.

    from eraselab.domain import domain_for_model, get_domain, load_domain
    domain = domain_for_model("miniworld")          # or a pipeline; any other model: the WordNet taxonomy
    domain.hierarchy.parent("circle")               # 'round shape'
    domain.prompt(noun_phrase("car", ("red",)))     # on the taxonomy domain: 'a photo of a red car'
    mine = load_domain("vehicles.yaml")             # a user's own domain (format: `load_domain`)

Built in: "miniworld" (miniworld/world.py: the embedded synthetic world) and "real" (suites/taxonomy.py: the
WordNet taxonomy for real text-to-image models). A domain's name and data tag go into every suite id.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .errors import EraseLabError
from .hierarchy import Hierarchy, hierarchy_fields, parse_concept

# name -> "module:function" returning the Domain; imported only when asked for.
BUILTIN_DOMAINS = {"miniworld": "eraselab.miniworld.world:miniworld_domain",
                   "real": "eraselab.suites.taxonomy:taxonomy_domain"}


@dataclass(frozen=True, eq=False)  # identity equality and hash: one value per domain, usable as a cache key
class Domain:
    name: str  # "miniworld", "real" or a user domain's name; suite ids carry it
    hierarchy: Hierarchy  # parent/ancestors/children/leaves_under/siblings/distance/synonyms/unrelated/check
    data: str  # the concept data's name; with the hierarchy's version it is the data tag ("taxonomy@v1")
    template: str = "{np}"  # wraps a noun phrase into a prompt
    paraphrase_templates: tuple[str, ...] = ()  # name the concept in other words
    pair_joins: tuple[str, ...] = ("{a} and {b}",)  # how two objects share one prompt
    prompt_templates: tuple[str, ...] = ("{np}",)  # EraseBench renders each probe concept with every one
    excluded: tuple[str, ...] = ()  # concepts never probed (the taxonomy's artificial root "object")
    vocabulary: str = "en3k"  # AP/AGE's default candidate vocabulary (a name methods/vocabulary.py knows)
    evaluator: str = "clip"  # bench's evaluator when --evaluator is auto
    aliases: Mapping[str, list[str]] | None = None  # extra names a classifier may report for a concept
    # The model learnt these concepts and nothing else (miniworld): a concept outside the domain means nothing
    # to it, and protocols written for natural-image models (imagenette, i2p, EraseBench's data) do not apply.
    closed_world: bool = False
    # How often the model's training captions name each attribute kind (closed worlds with a caption grammar);
    # CA writes its anchor captions in that grammar.
    caption_attributes: Mapping[str, float] = field(default_factory=dict)
    # A world that draws its own images (miniworld): renderer(domain, concept, n, seed) → (uint8 images
    # n×H×W×3, float object masks n×H×W in [0, 1]), one object of the concept each, exactly. None: no renderer
    # (real models; methods that need example images then generate them).
    renderer: Callable | None = None

    @property
    def version(self) -> int:
        return self.hierarchy.version

    def tag(self) -> str:
        return f"{self.data}@v{self.version}"

    def prompt(self, noun_phrase: str) -> str:
        return self.template.format(np=noun_phrase)

    def parse(self, text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        """'large red car' -> ('car', (('size', 'large'), ('color', 'red'))); one-line error for an unknown
        concept."""
        return parse_concept(self.hierarchy, text)

    def concept_words(self) -> list[str]:
        """Every concept name and synonym of the domain (the vocabulary "concepts")."""
        return self.hierarchy.all_names()


# ---- phrasing ---------------------------------------------------------------------------------------------
# Adjective order of English (and of miniworld captions: size, colour, fill): "a dirty large old red wooden
# car".
KIND_ORDER = ("condition", "size", "age", "color", "pattern", "fill", "material")


def ordered(attrs) -> tuple[str, ...]:
    """The values of (kind, value) pairs in adjective order."""
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return tuple(v for _, v in sorted(attrs, key=lambda kv: rank.get(kv[0], len(rank))))


def noun_phrase(concept: str, values: tuple[str, ...] | list[str] = ()) -> str:
    """'a red circle', 'an orange apple', 'an English springer'; values in the order given (see `ordered`)."""
    words = " ".join([*values, concept])
    return f"{'an' if words[:1].lower() in 'aeiou' else 'a'} {words}"


# ---- choosing a domain ------------------------------------------------------------------------------------
@cache
def get_domain(name: str) -> Domain:
    """A built-in domain by name ("miniworld" or "real")."""
    if name not in BUILTIN_DOMAINS:
        raise EraseLabError(f"unknown domain {name!r}; choose one of {', '.join(BUILTIN_DOMAINS)} or load a "
                            "domain YAML with eraselab.domain.load_domain")
    module, _, function = BUILTIN_DOMAINS[name].partition(":")
    return getattr(importlib.import_module(module), function)()


def as_domain(domain: Domain | str) -> Domain:
    """A Domain given itself or a built-in domain's name."""
    return domain if isinstance(domain, Domain) else get_domain(domain)


def domain_for_model(model) -> Domain:
    """The domain of a model, given its name ("miniworld", a folder, a hub id) or a loaded pipeline: the
    embedded miniworld model draws miniworld; every other model is read with the WordNet taxonomy."""
    from .models import MINIWORLD, model_source

    name = model if isinstance(model, str) else model_source(model)
    return get_domain("miniworld" if name == MINIWORLD else "real")


# ---- a user's domain --------------------------------------------------------------------------------------
def read_yaml_mapping(path, what: str, keys: str) -> dict:
    """A YAML file's top-level mapping; one-line errors for a missing, non-UTF-8, invalid or non-mapping
    file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise EraseLabError(f"{what} file {p} not found; give the path of a {what} YAML")
    try:
        raw = yaml.safe_load(p.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise EraseLabError(f"{what} file {p} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise EraseLabError(f"{what} file {p}{where} is not valid YAML; fix the syntax") from None
    if not isinstance(raw, dict):
        raise EraseLabError(f"{what} file {p} must be a mapping with {keys}")
    return raw


def load_domain(path) -> Domain:
    """A domain from a YAML file: the hierarchy layout of eraselab/hierarchy.py plus, all optional,

        name: vehicles                      # default: the file's stem
        template: "a photo of {np}"         # default "a photo of {np}"
        paraphrase_templates: ["an image of {np}"]
        pair_joins: ["{a} and {b}"]         # {a}, {b}: two noun phrases
        prompt_templates: ["a photo of {np}", "a drawing of {np}"]   # default: [template]
        vocabulary: en3k                    # AP/AGE candidates: en3k, clip, imagenet, concepts or a word file
        evaluator: clip                     # bench's evaluator for --evaluator auto
        closed_world: false                 # true: the model knows only these concepts
    """
    p = Path(path)
    raw = read_yaml_mapping(p, "domain", "version and hierarchy")
    for key in ("version", "hierarchy"):
        if key not in raw:
            raise EraseLabError(f"domain file {p} has no {key!r}; add it (format: "
                                "eraselab.domain.load_domain)")
    tree = raw["hierarchy"]
    if not isinstance(tree, dict) or not tree or not all(isinstance(v, list) for v in tree.values()):
        raise EraseLabError(f"domain file {p}: 'hierarchy' must map each parent concept to a list of "
                            "children")
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool):
        raise EraseLabError(f"domain file {p}: 'version' must be an integer, got {raw['version']!r}")
    fields = hierarchy_fields({**raw, "hierarchy": {str(k): [str(c) for c in v] for k, v in tree.items()}})
    _check_tree(fields["hierarchy"], p)
    name = str(raw.get("name") or p.stem)
    template = str(raw.get("template", "a photo of {np}"))
    defaults = {"paraphrase_templates": (), "pair_joins": ("{a} and {b}",), "prompt_templates": (template,)}
    strings = {key: tuple(map(str, raw.get(key) or default)) for key, default in defaults.items()}
    for t in (template, *strings["paraphrase_templates"], *strings["prompt_templates"]):
        if "{np}" not in t:
            raise EraseLabError(f"domain file {p}: template {t!r} has no {{np}}; write e.g. "
                                "'a photo of {np}'")
    if any("{a}" not in j or "{b}" not in j for j in strings["pair_joins"]):
        raise EraseLabError(f"domain file {p}: every pair join needs {{a}} and {{b}}, e.g. '{{a}} and {{b}}'")
    vocabulary = str(raw.get("vocabulary", "en3k"))
    if vocabulary == "auto":
        raise EraseLabError(f"domain file {p}: vocabulary 'auto' means the domain's own; name one (en3k, "
                            "clip, imagenet, concepts or a word file)")
    return Domain(name=name, hierarchy=Hierarchy(**fields, name=name), data=name, template=template,
                  vocabulary=vocabulary, evaluator=str(raw.get("evaluator", "clip")),
                  closed_world=bool(raw.get("closed_world", False)), **strings)


def _check_tree(tree: dict[str, tuple[str, ...]], path: Path) -> None:
    """One root, every concept under exactly one parent: the queries assume a tree."""
    children = [c for cs in tree.values() for c in cs]
    twice = sorted({c for c in children if children.count(c) > 1})
    if twice:
        raise EraseLabError(f"domain file {path}: {twice[0]!r} is listed under two parents; give each "
                            "concept one parent")
    roots = [p for p in tree if p not in set(children)]
    if len(roots) != 1:
        found = ", ".join(roots) if roots else "none"
        raise EraseLabError(f"domain file {path}: the hierarchy needs exactly one root concept (found "
                            f"{found}); put the top concepts under one common parent")
    reached, frontier = set(), [roots[0]]
    while frontier:
        reached.update(frontier)
        frontier = [c for p in frontier for c in tree.get(p, ())]
    cycle = sorted(set(tree) - reached)
    if cycle:
        raise EraseLabError(f"domain file {path}: {cycle[0]!r} is not under the root {roots[0]!r} (a "
                            "cycle); give every concept a chain of parents up to the root")
