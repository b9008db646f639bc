"""Suites: labels consistent with the world / taxonomy, exact imagenette splits, i2p CSV errors, YAML
suites."""

import json
from collections import Counter
from pathlib import Path

import pytest

from eraselab.errors import EraseLabError
from eraselab.miniworld.world import WORLD
from eraselab.suites import get_suite, imagenette, load_taxonomy, parse_concept, suite_names
from eraselab.suites.see import SeeSuite

DATA = Path(__file__).resolve().parents[1] / "src" / "eraselab" / "suites" / "data"
SEE_ASPECTS = {"target", "synonym", "parent", "child", "sibling", "composition", "leak", "unrelated"}


def test_registry_names_and_unknown_suite():
    assert suite_names() == ["erasebench", "i2p", "imagenette", "see"]
    with pytest.raises(EraseLabError, match="unknown suite 'nope'"):
        get_suite("nope")


@pytest.mark.parametrize("target", ["circle", "polygon", "red circle", "star"])
def test_see_miniworld_labels_follow_the_world(target):
    probes = get_suite("see").build(target, domain="miniworld", seeds_per_prompt=2, steps=10, guidance=3.0)
    concept, attrs = parse_concept(WORLD, target)
    assert {p.aspect for p in probes} <= SEE_ASPECTS
    assert all(p.steps == 10 and p.guidance == 3.0 for p in probes)
    assert all(p.suite == "see/miniworld@v2+miniworld-world@v1" for p in probes)
    # every prompt appears with seeds 0 and 1 exactly
    seeds = Counter(p.prompt for p in probes)
    assert set(seeds.values()) == {2}
    for p in probes:
        c = p.concepts[0]
        assert c in WORLD.concepts
        if p.aspect in ("target", "synonym", "composition"):
            assert c == concept
        elif p.relation == "parent":
            assert c == WORLD.parent(concept)
        elif p.relation == "grandparent":
            assert c == WORLD.ancestors(concept)[1]
        elif p.relation == "child":
            assert WORLD.parent(c) == concept
        elif p.relation == "grandchild":
            assert WORLD.ancestors(c)[1] == concept
        elif p.relation == "sibling":
            assert c in WORLD.siblings(concept)
        elif p.aspect == "unrelated":
            assert c in WORLD.unrelated(concept) and WORLD.distance(c, concept) >= 3
        elif p.aspect == "leak":
            (t, a), (o, b) = p.attributes
            assert t == concept and o == p.concepts[1] and a != b
            assert a in WORLD.colors and b in WORLD.colors
            assert f"a {a} {t}" in p.prompt and f"a {b} {o}" in p.prompt
        if p.aspect == "composition":
            assert {v for _, v in p.attributes} & set(WORLD.colors + WORLD.sizes + WORLD.fills)
            assert all(v in p.prompt for _, v in p.attributes)
    # the target's own attributes are carried to its neighbours ("red ellipse" after "red circle")
    for p in probes:
        if p.aspect in ("child", "sibling") and p.relation != "attribute sibling":
            assert [v for _, v in p.attributes] == [v for _, v in attrs]


def test_see_miniworld_circle_covers_each_aspect_it_can():
    aspects = {p.aspect for p in get_suite("see").build("circle", seeds_per_prompt=1)}
    assert aspects == SEE_ASPECTS - {"child"}  # a leaf class has no subclasses
    aspects = {p.aspect for p in get_suite("see").build("polygon", seeds_per_prompt=1)}
    assert "child" in aspects


def test_see_attributed_target_probes_attribute_siblings_and_bare_concept():
    probes = get_suite("see").build("red circle", seeds_per_prompt=1)
    rel = {(p.relation, p.prompt) for p in probes}
    assert ("attribute sibling", "a blue circle") in rel
    assert ("bare concept", "a circle") in rel
    assert ("sibling", "a red ellipse") in rel
    assert all(p.attributes[0] == ("circle", "red") for p in probes if p.aspect == "leak")


def test_see_several_targets_never_probe_a_target_as_a_neighbour():
    probes = get_suite("see").build(["circle", "square"], seeds_per_prompt=1)
    by_prompt = {}
    for p in probes:
        by_prompt.setdefault(p.prompt, set()).add(p.aspect)
    assert by_prompt["a circle"] == {"target"} and by_prompt["a square"] == {"target"}


def test_see_unknown_target_and_domain_errors():
    with pytest.raises(EraseLabError, match="not a miniworld concept"):
        get_suite("see").build("car", domain="miniworld")
    with pytest.raises(EraseLabError, match="not in the concept taxonomy"):
        get_suite("see").build("spaceship", domain="real")
    with pytest.raises(EraseLabError, match="unknown domain"):
        get_suite("see").build("circle", domain="mars")
    with pytest.raises(EraseLabError, match="seeds_per_prompt"):
        get_suite("see").build("circle", seeds_per_prompt=0)


def test_taxonomy_shape_and_real_see_labels():
    tax = load_taxonomy()
    concepts = [c for c in tax.concepts if c != tax.root]
    assert len(concepts) >= 100
    assert max(tax.depth(c) for c in concepts) >= 3  # root -> superclass -> class -> subclass
    assert len(tax.attributes) >= 6 and {"color", "material", "size"} <= set(tax.attributes)
    assert sum(1 for c in concepts if tax.synonyms(c)) >= 50
    # ImageNet ids are WordNet offsets: recorded ids match the known Imagenette ones
    assert tax.imagenet["tench"] == {"wnid": "n01440764", "index": 0}
    assert tax.imagenet["garbage truck"]["wnid"] == "n03417042"
    assert tax.parent("tiger") == "big cat" and tax.parent("goldfish") == "fish"
    for sup in tax.children(tax.root):
        assert set(tax.attribute_values(sup)) <= set(tax.attributes)
        for kind, values in tax.attribute_values(sup).items():
            assert set(values) <= set(tax.attributes[kind])
    probes = get_suite("see").build("car", domain="real", seeds_per_prompt=1)
    assert all(p.prompt.startswith("a photo of") for p in probes if p.relation != "paraphrase")
    for p in probes:
        assert p.concepts[0] in tax.concepts and p.concepts[0] != tax.root
        if p.relation == "child":
            assert tax.parent(p.concepts[0]) == "car"
        if p.aspect == "composition":
            (_, v), = p.attributes
            assert any(v in vals for vals in tax.attribute_values("car").values())
    assert "a photo of a motor vehicle with four wheels" in {p.prompt for p in probes}  # WordNet gloss


def test_erasebench_real_has_spec_examples_and_100_targets():
    data = json.loads((DATA / "erasebench.json").read_text())
    assert len(data["targets"]) >= 100
    assert {"tiger", "cheetah"} <= set(data["targets"]["cat"]["visually_similar"])
    assert {"guppy", "koi"} <= set(data["targets"]["goldfish"]["subset_superset"])
    assert "moon" in data["targets"]["sun"]["binomial"]
    probes = get_suite("erasebench").build("cat", domain="real", seeds_per_prompt=2)
    groups = {p.aspect for p in probes}
    assert groups == {"target", "paraphrase", "visually_similar", "subset_superset", "binomial",
                      "semantically_related"}
    assert all(p.concepts == ("cat",) for p in probes if p.aspect in ("target", "paraphrase"))
    assert {p.concepts[0] for p in probes if p.aspect == "visually_similar"} >= {"tiger", "cheetah"}
    assert probes[0].suite == "erasebench/real@v1+erasebench-data@v1"
    with pytest.raises(EraseLabError, match="no EraseBench data"):
        get_suite("erasebench").build("spaceship", domain="real")


def test_erasebench_miniworld_groups_come_from_the_world():
    probes = get_suite("erasebench").build("circle", seeds_per_prompt=1)
    got = {(p.aspect, p.concepts[0]) for p in probes}
    for c in WORLD.similar("circle"):
        assert ("visually_similar", c) in got
    assert ("subset_superset", WORLD.parent("circle")) in got
    for c in WORLD.related("circle"):
        assert ("semantically_related", c) in got
    assert {("binomial", c) for c in WORLD.binomial_partners("crescent")} <= {
        (p.aspect, p.concepts[0]) for p in get_suite("erasebench").build("crescent", seeds_per_prompt=1)}
    assert ("paraphrase", "circle") in got


def test_imagenette_splits_are_exactly_the_protocols():
    assert imagenette.SPLITS["v1"] == (
        "cassette player",
        "church",
        "garbage truck",
        "parachute",
        "French horn",
    )
    assert set(imagenette.SPLITS["v2"]) == {"tench", "English springer", "chain saw", "gas pump", "golf ball"}
    assert set(imagenette.SPLITS["v3"]) == {"cassette player", "chain saw", "church", "gas pump", "tench"}
    assert set(imagenette.SPLITS["v4"]) == {"English springer", "French horn", "garbage truck", "golf ball",
                                            "parachute"}
    probes = get_suite("imagenette").build("v3")
    assert len(probes) == 10 * 500
    p = probes[0]
    assert (p.steps, p.guidance, p.height, p.width, p.prompt) == (100, 7.5, 512, 512, "Image of tench")
    erased = {q.concepts[0] for q in probes if q.aspect == "erased"}
    assert erased == set(imagenette.SPLITS["v3"])
    assert {q.seed for q in probes if q.concepts[0] == "church"} == set(range(500))
    assert {q.relation for q in probes} == {"v3"}
    small = get_suite("imagenette").build(["church"], seeds_per_prompt=3)
    assert len(small) == 30 and {q.concepts[0] for q in small if q.aspect == "erased"} == {"church"}
    with pytest.raises(EraseLabError, match="neither a split"):
        get_suite("imagenette").build("v9")
    with pytest.raises(EraseLabError, match="real Stable Diffusion"):
        get_suite("imagenette").build("v1", domain="miniworld")


def _write(tmp_path, text, name="i2p.csv"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def test_i2p_reads_rows_with_their_seed_and_guidance(tmp_path):
    path = _write(tmp_path, "prompt,categories,evaluation_seed,evaluation_guidance\n"
                            "a nude painting,sexual,1234,7\n\"a, quoted\",\"violence, sexual\",5,\n"
                            "a landscape,shocking,9,8.5\n")
    probes = get_suite("i2p", path=path).build("nudity", domain="real")
    assert [(p.prompt, p.seed, p.guidance) for p in probes] == [
        ("a nude painting", 1234, 7.0), ("a, quoted", 5, 7.5), ("a landscape", 9, 8.5)]
    assert all(p.concepts == ("nudity",) and p.aspect == "target" for p in probes)
    sexual = get_suite("i2p", path=path, category="sexual").build("nudity", domain="real")
    assert [p.seed for p in sexual] == [1234, 5]
    alt = _write(tmp_path, "prompt,sd_seed,sd_guidance\nx,3,6\n", "alt.csv")
    assert [(p.seed, p.guidance) for p in get_suite("i2p", path=alt).build("nudity", domain="real")] == [
        (3, 6.0)
    ]


@pytest.mark.parametrize("content,match", [
    (None, "not found"),
    ("", "is empty"),
    ("prompt,categories\nx,sexual\n", "no evaluation_seed or sd_seed or seed column"),
    ("text,evaluation_seed\nx,1\n", "no prompt column"),
    ("prompt,evaluation_seed\n", "no prompt rows"),
    ("prompt,evaluation_seed\nx,abc\n", "line 2: evaluation_seed 'abc' is not a number"),
])
def test_i2p_errors_are_one_line(tmp_path, content, match):
    path = str(tmp_path / "missing.csv") if content is None else _write(tmp_path, content)
    with pytest.raises(EraseLabError, match=match) as err:
        get_suite("i2p", path=path).build("nudity", domain="real")
    assert "\n" not in str(err.value)
    with pytest.raises(EraseLabError, match="not shipped"):
        get_suite("i2p").build("nudity", domain="real")


def test_yaml_suite_example_and_errors(tmp_path):
    suite = get_suite(str(DATA / "example_suite.yaml"))
    probes = suite.build("car", domain="real", seeds_per_prompt=1)
    assert probes[0].suite == "yaml:vehicles-example@v1"
    rel = {(p.aspect, p.concepts, p.prompt) for p in probes}
    assert ("synonym", ("car",), "a photo of an automobile") in rel  # names the target
    assert ("sibling", ("bus",), "a painting of a bus") in rel
    assert ("visually_similar", ("van",), "a photo of a van") in rel
    comp = [p for p in probes if p.prompt == "a photo of a red car"]
    assert comp and comp[0].attributes == (("car", "red"),)
    leak = [p for p in probes if p.aspect == "leak"]
    assert len(leak) == 1 and leak[0].attributes == (("car", "red"), ("bus", "blue"))
    assert not [p for p in suite.build("bus", seeds_per_prompt=1) if p.aspect == "leak"]
    with pytest.raises(EraseLabError, match="not a target of suite"):
        suite.build("plane")
    with pytest.raises(EraseLabError, match="has no 'version'"):
        get_suite(_write(tmp_path, "name: x\ntargets: {a: {sibling: [b]}}\n", "a.yaml"))
    with pytest.raises(EraseLabError, match="not valid YAML"):
        get_suite(_write(tmp_path, "name: [x\n", "b.yaml"))
    with pytest.raises(EraseLabError, match="must map relation names to lists"):
        get_suite(_write(tmp_path, "name: x\nversion: 1\ntargets: {a: {sibling: b}}\n", "c.yaml"))
    with pytest.raises(EraseLabError, match="not found"):
        get_suite(str(tmp_path / "none.yaml"))


def test_suite_ids_carry_data_versions():
    assert SeeSuite().build("circle", seeds_per_prompt=1)[0].suite.endswith(f"@v{WORLD.version}")
    assert get_suite("see").build("cat", domain="real", seeds_per_prompt=1)[0].suite.endswith(
        f"taxonomy@v{load_taxonomy().version}")


@pytest.mark.parametrize("suite", ["see", "erasebench"])
def test_miniworld_prompts_use_only_caption_words_in_caption_order(suite):
    from eraselab.miniworld.captions import all_caption_words

    words = all_caption_words()
    targets = ("circle", "polygon", "crescent") + (("large red circle",) if suite == "see" else ())
    for target in targets:
        for p in get_suite(suite).build(target, seeds_per_prompt=1):
            assert set(p.prompt.split()) <= words, p.prompt
    prompts = {p.prompt for p in get_suite("see").build("red circle", seeds_per_prompt=1)}
    assert "a large red circle" in prompts and "a red solid circle" in prompts  # size, colour, fill


def test_synonym_probes_never_contain_the_targets_own_name():
    """SEE's synonym evasion asks whether another name still draws the target; "a five pointed star" says
    star."""
    for target in WORLD.classes:
        words = set(target.split())
        prompts = [p.prompt for p in SeeSuite().build(target, seeds_per_prompt=1) if p.relation == "synonym"]
        assert all(not words & set(p.split()) for p in prompts), (target, prompts)
    circle = [p.prompt for p in SeeSuite().build("circle", seeds_per_prompt=1) if p.relation == "synonym"]
    assert circle == ["a disc", "a round dot"]
    assert not [p for p in SeeSuite().build("star", seeds_per_prompt=1) if p.relation == "synonym"]
