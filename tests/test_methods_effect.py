"""Effect of each method on the miniworld model, judged by the miniworld oracle (slow; needs the shipped
weights).

Erasing "circle" must drop the oracle's circle rate on "a circle" prompts to ≤ 20 % of the original model's
(≤ 50 % for the negative prompt), while the star rate on "a star" prompts stays ≥ 80 % of the original's.
"""
import pytest
import torch

import eraselab
from eraselab.models import miniworld_weights_dir

pytestmark = pytest.mark.slow

N = 48  # seeds per prompt
# Known failure: the negative prompt, given the target as its own prompt ("a circle" negating "a circle"), is
# exactly sampling without guidance (tests/test_generate.py::
# test_negative_prompt_equal_to_the_prompt_is_unguided_conditional_sampling), and the miniworld model draws
# circles at guidance 1 at 86 % of its guided rate (0.73 vs 0.85, 48 seeds; benchmarks/RESULTS.md), so ≤ 50 %
# is out of this method's reach here. Not strict: a model whose unguided samples draw the target less shows as
# XPASS.
KNOWN_SHORT = {
    "negprompt": "negating the prompt itself is unguided sampling, which keeps ~85 % of circles on miniworld"
}
METHODS = [
    pytest.param(m, marks=pytest.mark.xfail(reason=KNOWN_SHORT[m], strict=False)) if m in KNOWN_SHORT else m
    for m in ["esd-x", "esd-u", "esd-x-strict", "uce", "rece", "ap", "age", "ca", "negprompt", "sld"]
]


def _assets_missing() -> str | None:
    folder = miniworld_weights_dir()
    if not (folder / "model_index.json").exists():
        return f"the miniworld model is not in {folder} yet (train it with `eraselab miniworld train`)"
    try:
        from eraselab.miniworld.oracle import WEIGHTS_NAME
    except ImportError:
        return "eraselab.miniworld.oracle is not available"
    if not (folder / WEIGHTS_NAME).exists():
        return f"the miniworld oracle weights ({WEIGHTS_NAME}) are not in {folder} yet"
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    reason = _assets_missing()
    if reason:
        pytest.skip(reason)
    from eraselab.miniworld.oracle import Oracle
    from eraselab.store import RunStore

    pipe = eraselab.load_pipeline("miniworld", device="cuda" if torch.cuda.is_available() else "cpu")
    store = RunStore(tmp_path_factory.mktemp("effect-store"))
    oracle = Oracle.load(device=pipe.device)
    base = {c: rate(pipe, store, oracle, c, None) for c in ("circle", "star")}
    assert base["circle"] > 0.3 and base["star"] > 0.3, f"the original model barely draws the classes: {base}"
    return pipe, store, oracle, base


def rate(pipe, store, oracle, concept, edit, guidance=None) -> float:
    """Share of N seeded "a <concept>" images in which the oracle finds that class."""
    from eraselab.miniworld.rates import shown_rate

    return shown_rate(pipe, store, oracle, concept, edit, N, guidance)


@pytest.mark.parametrize("method", METHODS)
def test_erasing_circle_on_miniworld(world, method):
    pipe, store, oracle, base = world
    edit = eraselab.erase(pipe, method, ["circle"], progress=False)
    circle, star = rate(pipe, store, oracle, "circle", edit), rate(pipe, store, oracle, "star", edit)
    limit = 0.5 if method == "negprompt" else 0.2
    print(f"{method}: circle {base['circle']:.2f}→{circle:.2f}, star {base['star']:.2f}→{star:.2f}, "
          f"{edit.seconds:.1f} s")
    assert circle <= limit * base["circle"], (method, base, circle)
    assert star >= 0.8 * base["star"], (method, base, star)


def test_negative_prompt_on_miniworld_draws_what_unguided_sampling_draws(world):
    """The known shortfall above is the method, not a bug: negating "a circle" in "a circle" prompts gives the
    circle rate of sampling at guidance 1."""
    pipe, store, oracle, base = world
    edit = eraselab.erase(pipe, "negprompt", ["circle"], progress=False)
    negated, unguided = (
        rate(pipe, store, oracle, "circle", edit),
        rate(pipe, store, oracle, "circle", None, 1.0),
    )
    print(f"negprompt {negated:.2f}, guidance 1 {unguided:.2f}, guided {base['circle']:.2f}")
    assert negated == unguided < base["circle"]


# Known side effect of the shipped model: its text encoder puts "a hexagon" next to "a circle" (cosine 0.925
# of the full encoder outputs, the nearest class), so erasing circle also erases hexagons, by every method
# tried (benchmarks/RESULTS.md, "What erasing circle takes with it"). Not strict: a model that separates the
# two XPASSes.
@pytest.mark.xfail(reason="the shipped model's text encoder entangles circle and hexagon", strict=False)
@pytest.mark.parametrize("method", ["esd-x", "uce"])
def test_erasing_circle_keeps_hexagons(world, method):
    pipe, store, oracle, _ = world
    before = rate(pipe, store, oracle, "hexagon", None)
    edit = eraselab.erase(pipe, method, ["circle"], progress=False)
    after = rate(pipe, store, oracle, "hexagon", edit)
    print(f"{method}: hexagon {before:.2f}→{after:.2f}")
    assert after >= 0.8 * before, (method, before, after)
