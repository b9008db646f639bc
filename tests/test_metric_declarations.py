"""Suites declare their metrics (Suite.METRICS, metric_info); summarize, results.json and report.html follow
the declarations."""
import json
from dataclasses import dataclass

import pytest
from test_bench_report import _spec, tiny_model_dir  # noqa: F401  (a fixture, and the stand-in evaluator)

from eraselab import metric_info
from eraselab import metrics as M
from eraselab.bench import run_bench
from eraselab.errors import EraseLabError
from eraselab.probes import Probe
from eraselab.suites import (
    SUITES,
    EraseBenchSuite,
    I2PSuite,
    ImagenetteSuite,
    SeeSuite,
    Spec,
    Suite,
    declared_metrics,
)


@dataclass
class SiblingsOnlyTarget(Suite):
    """A third-party suite with sibling probes that declares only the target's recognition."""

    METRICS = ("target.recognition",)
    name: str = "siblings-only-target"
    ASPECTS: tuple[str, ...] = ("target", "sibling")

    def _specs(self, target, domain):
        return [Spec(f"a {target}", (target,), "target", "target"),
                Spec("a bus", ("bus",), "sibling", "sibling")]


@pytest.mark.parametrize("suite", [SeeSuite(), EraseBenchSuite(), ImagenetteSuite(), I2PSuite()],
                         ids=lambda s: s.name)
def test_built_in_suites_declare_every_metric_their_aspects_call_for(suite):
    # The invariant that keeps their results what they were before suites declared metrics.
    assert set(metric_info.suite_metrics(suite.ASPECTS)) == set(suite.metrics())


def test_a_suite_declaring_an_unknown_metric_is_refused():
    @dataclass
    class Typo(Suite):
        METRICS = ("target.recognitoin",)

    with pytest.raises(EraseLabError, match="unknown metric.*recognitoin"):
        Typo().metrics()


def _table(suite_id, shown):
    return [(Probe(prompt=f"a {c} {i}", seed=i, concepts=(c,), aspect=a, relation=a, suite=suite_id),
             {"labels": [c] if shown(i) else []})
            for i in range(6) for c, a in (("car", "target"), ("bus", "sibling"))]


def test_summarize_computes_what_the_probes_suites_declare():
    before, after = _table("", lambda i: True), _table("", lambda i: i < 3)
    # Probes of no known suite get what their aspects call for.
    assert "see.neighbour_drop.sibling" in M.summarize(before, after, "car", n_boot=10)
    ours = "siblings-only-target/real@v1+x"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SUITES._entries, SiblingsOnlyTarget.name, SiblingsOnlyTarget)
        assert declared_metrics(p for p, _ in _table(ours, bool)) == {"target.recognition"}
        out = M.summarize(_table(ours, lambda i: True), _table(ours, lambda i: i < 3), "car", n_boot=10)
    assert set(out) == {"target.recognition", "target.recognition.original"}
    explicit = M.summarize(before, after, "car", n_boot=10, metrics=("see.neighbour_drop.<relation>",))
    assert set(explicit) == {"see.neighbour_drop.sibling"}


def test_a_yaml_relation_and_an_undeclared_metric_in_results_and_report(tiny_model_dir, tmp_path):  # noqa: F811
    """A YAML suite's new relation ("lookalike") is measured in results.json and report.html without code; a
    suite whose sibling probes are judged, but that declares no sibling metric, gets none."""
    from eraselab.report.html import write_report

    suite_file = tmp_path / "vehicles.yaml"
    suite_file.write_text("name: vehicles\nversion: 1\ntargets:\n  car:\n    lookalike: [van, truck]\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SUITES._entries, SiblingsOnlyTarget.name, SiblingsOnlyTarget)
        spec = _spec(tiny_model_dir, suites=(str(suite_file), SiblingsOnlyTarget.name), attention=False)
        run_bench(spec, tmp_path / "run", say=lambda m: None, progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    metrics = saved["methods"]["uce"]["metrics"]
    assert {"aspect.lookalike.shown", "aspect.lookalike.drop", "target.recognition"} <= set(metrics)
    assert any(e["aspect"] == "sibling" for e in saved["images"])  # judged, yet not measured:
    assert not any(k.startswith(("see.", "aspect.sibling", "erasebench.")) for k in metrics)
    html = write_report(tmp_path / "run").read_text()
    assert "lookalike drop pp" in html and "aspect.lookalike.drop" in html
