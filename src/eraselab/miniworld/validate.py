"""Metric validation on planted effects: does each metric recover an effect of known size, and does its 95 %
interval cover that size at its nominal rate?

For one target and one `PlantedEffect`, the bench's probes (SEE, EraseBench, and AP-protocol erased/preserved
class prompts) are rendered on miniworld's exact model and on the planted edit (miniworld/planted.py), judged
by the oracle and summarised by `metrics.summarize`, as `eraselab bench` does:
- the truth of every metric is its value on a large independent draw (seeds from TRUTH_BASE_SEED on);
- `repeats` runs on disjoint seed ranges give, per metric, the mean estimate (its bias against the truth), the
  share of runs whose interval contains the truth (coverage) and the mean half-width;
- for paired drops, the share of runs whose interval excludes 0 (under the null edit: false positives).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..probes import Probe
from .planted import PlantedEffect, PlantedRenderer

TRUTH_BASE_SEED = 1_000_000
SKIPPED_PREFIXES = ("quality.",)  # image quality is not a planted quantity
EFFECTS = {
    "null": PlantedEffect(),
    "half": PlantedEffect(erase=0.5, neighbour=0.3, unrelated=0.2, attribute=0.5, leak=0.5),
    "strong": PlantedEffect(erase=0.9, neighbour=0.1, unrelated=0.05, attribute=0.2, leak=0.3),
}


def validation_probes(target: str, precision: float, base_seed: int) -> list[Probe]:
    """The bench's SEE + EraseBench probes for `target`, plus AP-protocol erased/preserved class prompts."""
    from ..bench import BenchSpec, build_probes
    from ..suites.base import GenerationSettings, Spec, Suite
    from .world import WORLD

    spec = BenchSpec(
        targets=(target,),
        suites=("see", "erasebench"),
        precision=precision,
        base_seed=base_seed,
        seeds_per_prompt=1,
    )
    probes = build_probes(spec)
    concept = target.split()[-1]
    preserved = [c for c in WORLD.classes if c != concept][:4]
    specs = [Spec(f"a {concept}", (concept,), "erased", "miniworld")]
    specs += [Spec(f"a {c}", (c,), "preserved", "miniworld") for c in preserved]
    gen = GenerationSettings(seeds_per_prompt=1, base_seed=base_seed,
                             min_images_per_aspect=spec.min_images_per_aspect())
    return probes + Suite.expand(specs, gen, "ap-protocol/miniworld")


def measure(
    target: str, effect: PlantedEffect, probes: list[Probe], evaluator, renderer=None
) -> dict[str, dict]:
    """summarize() of the exact model against the planted edit on these probes."""
    from .. import metrics
    from .world import WORLD

    renderer = renderer or PlantedRenderer(target)
    original = list(zip(probes, evaluator.judge(renderer.render_all(probes, None), probes)))
    edited = list(zip(probes, evaluator.judge(renderer.render_all(probes, effect), probes)))
    out = metrics.summarize(original, edited, [target], hierarchy=WORLD, erasebench_k=None, esr_ks=(1,))
    return {k: v for k, v in out.items() if not k.startswith(SKIPPED_PREFIXES) and v.get("value") is not None}


@dataclass
class MetricCheck:
    key: str
    truth: float
    runs: list[tuple[float, float, float, int]] = field(default_factory=list)  # (value, low, high, n) per run

    def row(self) -> dict:
        value, low, high, n = (np.array(col, dtype=float) for col in zip(*self.runs))
        return {"key": self.key, "truth": self.truth, "mean": float(value.mean()),
                "bias": float(value.mean() - self.truth),
                "bias_se": float(value.std(ddof=1) / np.sqrt(len(value))) if len(value) > 1 else None,
                "coverage": float(np.mean((low <= self.truth) & (self.truth <= high))),
                "half_width": float(np.mean((high - low) / 2)),
                "excludes_zero": float(np.mean((low > 0) | (high < 0))), "runs": len(value),
                "n": int(np.median(n)), "intervals": [list(r) for r in self.runs]}


def validate(target: str, effect: PlantedEffect, repeats: int, precision: float = 10.0,
             truth_precision: float = 2.5, evaluator=None) -> list[dict]:
    """One row per metric (see the module docstring; "intervals" holds each run's value, low, high, n);
    metrics absent from some runs are left out."""
    if evaluator is None:
        from ..evaluators import get_evaluator

        evaluator = get_evaluator("oracle")
    renderer = PlantedRenderer(target)
    truth = measure(target, effect, validation_probes(target, truth_precision, TRUTH_BASE_SEED), evaluator,
                    renderer)
    checks = {k: MetricCheck(k, v["value"]) for k, v in truth.items()}
    seen = defaultdict(int)
    size = len(validation_probes(target, precision, 0))
    for r in range(repeats):
        run = measure(target, effect, validation_probes(target, precision, r * size), evaluator, renderer)
        for key, m in run.items():
            check = checks.get(key)
            if check is None or m.get("low") is None:
                continue
            seen[key] += 1
            check.runs.append((m["value"], m["low"], m["high"], m["n"]))
    return [c.row() for k, c in sorted(checks.items()) if seen[k] == repeats]
