"""The concept Domain: chosen from the model, handed down to suites and methods, loadable from a user's YAML;
the general hierarchy type lives on the ground floor, and nothing below bench imports miniworld's concept
data."""
import ast
from pathlib import Path

import pytest

import eraselab
from eraselab import models
from eraselab.bench import BenchSpec, validate
from eraselab.domain import Domain, domain_for_model, get_domain, load_domain
from eraselab.errors import EraseLabError
from eraselab.hierarchy import Hierarchy
from eraselab.methods import build_request
from eraselab.methods.ca import resolve_anchor
from eraselab.methods.vocabulary import en3k, load_vocabulary
from eraselab.miniworld.world import WORLD, World
from eraselab.pipeline_state import state_of
from eraselab.suites import get_suite, load_taxonomy

SRC = Path(eraselab.__file__).parent


class _Stand:
    """Stands in for a loaded pipeline: domain_for_model reads only the model's source."""


def _pipe_named(source: str):
    pipe = _Stand()
    state_of(pipe).source = source
    return pipe


def test_the_model_chooses_the_domain():
    mini, real = domain_for_model("miniworld"), domain_for_model("CompVis/stable-diffusion-v1-4")
    assert mini is get_domain("miniworld") and real is get_domain("real")
    assert mini.hierarchy is WORLD and mini.closed_world and mini.evaluator == "oracle"
    assert real.hierarchy is load_taxonomy() and not real.closed_world and real.evaluator == "clip"
    assert real.aliases and "chainsaw" in real.aliases["chain saw"]
    assert domain_for_model(_pipe_named("miniworld")) is mini
    assert domain_for_model(_pipe_named("/models/sd14")) is real
    assert BenchSpec(model="miniworld").domain is mini and BenchSpec(model="/models/sd14").domain is real
    assert BenchSpec(model="/models/sd14").evaluator_name() == "clip"
    with pytest.raises(EraseLabError, match="unknown domain 'mars'"):
        get_domain("mars")


def test_the_general_hierarchy_is_on_the_ground_floor():
    assert isinstance(WORLD, World) and isinstance(WORLD, Hierarchy)
    assert isinstance(load_taxonomy(), Hierarchy)
    assert not issubclass(type(load_taxonomy()), World)
    assert WORLD.parent("circle") == "round shape" and load_taxonomy().parent("car") == "vehicle"
    assert WORLD.common_ancestor(["circle", "ellipse"]) == "round shape"
    assert WORLD.common_ancestor(["circle", "square"]) == WORLD.root
    assert "circle" in WORLD and "car" not in WORLD
    with pytest.raises(EraseLabError, match="not a miniworld concept"):
        WORLD.check("car")
    imported = [m for node in ast.walk(ast.parse((SRC / "hierarchy.py").read_text()))
                if isinstance(node, ast.ImportFrom) for m in [node.module or ""]]
    assert not [m for m in imported if "miniworld" in m or "suites" in m]


def _imports(path: Path) -> list[str]:
    """Every module a source file imports, relative imports written with their dots ('..miniworld.world')."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_nothing_below_bench_imports_miniworld():
    files = [*(SRC / "methods").glob("*.py"), *(SRC / "suites").glob("*.py"),
             *(SRC / "evaluators").glob("*.py"), SRC / "metrics.py"]
    # The oracle evaluator is miniworld's own image reader, not concept data.
    allowed = {SRC / "evaluators" / "oracle.py"}
    offenders = {str(f.relative_to(SRC)): m for f in files if f not in allowed for m in _imports(f)
                 if "miniworld" in m}
    assert offenders == {}
    assert len(files) > 20  # the globs found the packages


def test_suites_take_the_domain_value_or_its_name():
    real = get_domain("real")
    by_value = get_suite("see").build("car", domain=real, seeds_per_prompt=1)
    assert by_value == get_suite("see").build("car", domain="real", seeds_per_prompt=1)
    assert by_value[0].suite == f"see/real@v2+taxonomy@v{load_taxonomy().version}"
    assert get_suite("erasebench").build("circle", domain=get_domain("miniworld"), seeds_per_prompt=1)
    with pytest.raises(EraseLabError, match="real Stable Diffusion"):
        get_suite("imagenette").build("v1", domain=get_domain("miniworld"))


DOMAIN_YAML = """\
name: vehicles
version: 3
hierarchy:
  vehicle: [car, bus, boat]
  car: [taxi, jeep]
synonyms: {car: [automobile]}
attributes: {color: [red, blue]}
template: "a drawing of {np}"
vocabulary: concepts
"""


def test_a_user_domain_from_yaml_drives_the_suites_and_the_methods(tmp_path):
    path = tmp_path / "vehicles.yaml"
    path.write_text(DOMAIN_YAML)
    mine = load_domain(path)
    assert isinstance(mine, Domain) and mine.name == "vehicles" and mine.tag() == "vehicles@v3"
    assert mine.hierarchy.parent("taxi") == "car" and mine.hierarchy.synonyms("car") == ["automobile"]
    probes = get_suite("see").build("car", domain=mine, seeds_per_prompt=1)
    prompts = {p.prompt for p in probes}
    assert {"a drawing of a car", "a drawing of an automobile", "a drawing of a taxi", "a drawing of a bus",
            "a drawing of a red car"} <= prompts
    assert probes[0].suite == "see/vehicles@v2+vehicles@v3"
    assert resolve_anchor(["taxi"], "auto", "object", mine) == "car"
    words = ["vehicle", "car", "automobile", "bus", "boat", "taxi", "jeep"]
    assert load_vocabulary("auto", None, mine) == words


@pytest.mark.parametrize("text,message", [
    ("version: 1\n", "has no 'hierarchy'"),
    ("version: 1\nhierarchy: {a: [b], c: [d]}\n", "exactly one root concept"),
    ("version: 1\nhierarchy: {a: [b, c], b: [c]}\n", "listed under two parents"),
    ("version: 1\nhierarchy: {a: [b], c: [d], d: [c]}\n", "not under the root"),
    ("version: 1\nhierarchy: {a: [b]}\ntemplate: a photo\n", "has no {np}"),
    ("version: 1\nhierarchy: {a: [b]}\npair_joins: ['{a} with']\n", "needs {a} and {b}"),
    ("version: 1\nhierarchy: {a: [b]}\nvocabulary: auto\n", "vocabulary 'auto'"),
    ("- a\n", "must be a mapping"),
])
def test_bad_domain_files_get_one_line_errors(tmp_path, text, message):
    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(EraseLabError, match=message) as err:
        load_domain(path)
    assert "\n" not in str(err.value)


def test_vocabulary_comes_from_the_domain():
    assert load_vocabulary("auto", _pipe_named("miniworld")) == WORLD.all_names()
    assert load_vocabulary("auto", _pipe_named("/models/sd14")) == list(en3k())
    assert load_vocabulary("miniworld", _pipe_named("/models/sd14")) == WORLD.all_names()
    assert "vehicle" in load_vocabulary("concepts", _pipe_named("/models/sd14"))


# ---- what users feel: CA's anchor and UCE's class preservation on real models -----------------------------
def test_ca_chooses_its_anchor_from_the_taxonomy_on_real_models():
    real, mini = get_domain("real"), get_domain("miniworld")
    assert resolve_anchor(["car"], "auto", "object", real) == "vehicle"
    assert resolve_anchor(["car", "bus"], "auto", "object", real) == "vehicle"
    assert resolve_anchor(["circle"], "auto", "object", mini) == "round shape"
    assert resolve_anchor(["circle", "square"], "auto", "object", mini) == "shape"
    assert resolve_anchor(["red circle"], "auto", "object", mini) == "round shape"
    assert resolve_anchor(["grumpy cat"], "cat", "object", real) == "cat"
    assert resolve_anchor(["van gogh"], "auto", "style", real) == "painting"
    with pytest.raises(EraseLabError, match="CA needs an anchor for 'grumpy cat'"):
        resolve_anchor(["grumpy cat"], "auto", "object", real)
    with pytest.raises(EraseLabError, match="too broad"):  # the taxonomy's artificial root is no anchor
        resolve_anchor(["car", "cat"], "auto", "object", real)


@pytest.fixture(scope="module")
def real_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    models.tiny_random_pipeline(0).save_pretrained(str(folder))
    return str(folder)


def test_bench_accepts_ca_without_anchor_when_the_taxonomy_has_one(real_model_dir):
    validate(BenchSpec(model=real_model_dir, methods=("ca",), targets=("car",)))
    with pytest.raises(EraseLabError, match="CA needs an anchor") as err:
        validate(BenchSpec(model=real_model_dir, methods=("ca",), targets=("spaceship",)))
    assert "\n" not in str(err.value)
    cls, request = build_request("ca", ["spaceship"])
    with pytest.raises(EraseLabError, match="CA needs an anchor"):
        cls.check_model(request, real_model_dir)


def test_ca_erases_on_a_real_model_with_the_taxonomy_anchor(tiny_pipe_factory):
    edit = eraselab.erase(tiny_pipe_factory(0), "ca", ["car"], iterations=1, anchor_images=2, captions=4,
                          sample_steps=2, batch_size=2, progress=False)
    assert edit.extras["anchor"] == "vehicle" and edit.tensors


def test_uce_world_preservation_uses_the_taxonomy_on_real_models(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    default = eraselab.erase(pipe, "uce", ["car"], preserve=["bus"], progress=False)
    assert default.preserved == ["bus"]  # the reference behaviour stays the default on real models
    world = eraselab.erase(pipe, "uce", ["car"], auto_preserve="world", progress=False)
    tax = load_taxonomy()
    assert "taxi" not in world.preserved and "school bus" in world.preserved  # every class but the car kinds
    assert sorted(world.preserved) == sorted(c for c in tax.classes if c not in tax.leaves_under("car"))
    assert not world.tensors.keys() - default.tensors.keys()
    assert any((world.tensors[n] - default.tensors[n]).abs().max() > 0 for n in world.tensors)


def test_bench_takes_a_user_domain_file(tmp_path):
    from eraselab.bench import BenchSpec, build_probes, validate

    path = tmp_path / "vehicles.yaml"
    path.write_text(DOMAIN_YAML)
    spec = BenchSpec(
        model="miniworld",
        methods=("uce",),
        targets=("car",),
        suites=("see",),
        seeds_per_prompt=1,
        domain_file=str(path),
    )
    assert spec.domain.name == "vehicles" and spec.user_domain().name == "vehicles"
    assert "a drawing of a taxi" in {p.prompt for p in build_probes(spec)}
    assert BenchSpec().user_domain() is None  # without a file, methods read the model's own domain
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\n")
    with pytest.raises(EraseLabError, match="has no 'hierarchy'"):
        validate(BenchSpec(targets=("car",), domain_file=str(bad)))
