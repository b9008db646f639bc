"""Effect of MACE on the miniworld model, judged by the miniworld oracle (slow; needs the shipped weights).

Erasing the target must drop the oracle's rate for it on "a <target>" prompts to ≤ 20 % of the original
model's, while an unrelated class keeps ≥ 80 % of its rate. The miniworld preset was chosen on the tuning half
of benchmarks/preset_trials.py (circle among them); triangle and heart are of the held-out half.
"""
import pytest
from test_methods_effect import rate, world  # noqa: F401  (the module-scoped fixture and the oracle rate)

import eraselab

pytestmark = pytest.mark.slow

CASES = [("circle", "star"), ("triangle", "star"), ("heart", "circle")]


@pytest.mark.parametrize("target,kept", CASES)
def test_mace_erases_on_miniworld(world, target, kept):  # noqa: F811
    pipe, store, oracle, base = world
    before = {c: base[c] if c in base else rate(pipe, store, oracle, c, None) for c in (target, kept)}
    edit = eraselab.erase(pipe, "mace", [target], progress=False)
    after = {c: rate(pipe, store, oracle, c, edit) for c in (target, kept)}
    assert edit.extras["regions"] == "renderer" and edit.extras["lora"] == "merged"
    print(
        f"mace {target}: {before[target]:.2f}→{after[target]:.2f}, {kept} "
        f"{before[kept]:.2f}→{after[kept]:.2f}, {edit.seconds:.1f} s"
    )
    assert after[target] <= 0.2 * before[target], (target, before, after)
    assert after[kept] >= 0.8 * before[kept], (target, before, after)
