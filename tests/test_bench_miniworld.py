"""End-to-end bench on the embedded miniworld model with its oracle: UCE erasing "circle", see +
erasebench."""

import pytest

from eraselab.bench import BenchSpec, run_bench
from eraselab.models import miniworld_weights_dir

pytestmark = pytest.mark.skipif(not (miniworld_weights_dir() / "model_index.json").exists(),
                                reason="the miniworld weights are not shipped in this checkout")


def test_uce_circle_bench_on_miniworld(tmp_path):
    spec = BenchSpec(model="miniworld", methods=("uce",), targets=("circle",), suites=("see", "erasebench"),
                     seeds_per_prompt=2, attention=False)
    results = run_bench(spec, tmp_path, say=lambda m: None, progress=False)
    m = results["methods"]["uce"]["metrics"]
    assert results["evaluator"]["name"] == "oracle" and results["evaluator"]["config"]["threshold"] == 0.5
    # The oracle reads real images: the original model draws circles for circle prompts, the edit removes
    # most.
    before, after = m["target.recognition.original"]["value"], m["target.recognition"]["value"]
    assert before >= 25.0, before
    assert after <= before / 2, (before, after)
    # Every SEE aspect and EraseBench group produced a measured figure with an interval.
    for key in ("see.evasion.synonym", "see.evasion.parent", "see.evasion.composition", "see.attribute_leak",
                "see.unrelated.preserved", "erasebench.efficacy", "erasebench.sensitivity", "erasebench.hm",
                "quality.frechet"):
        assert m[key]["n"] and m[key]["value"] is not None, key
    assert (
        m["erasebench.efficacy"]["low"]
        <= m["erasebench.efficacy"]["value"]
        <= m["erasebench.efficacy"]["high"]
    )
