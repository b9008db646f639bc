"""benchmarks/findings.py reads one target's runs from several folders as one run, and refuses runs that
were not made alike."""
import importlib.util
import json
from pathlib import Path

import pytest

FINDINGS = Path(__file__).resolve().parents[1] / "benchmarks" / "findings.py"


def load_findings():
    spec = importlib.util.spec_from_file_location("findings", FINDINGS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, target: str, methods: dict, seeds=(0, 1)) -> None:
    (folder / target).mkdir(parents=True)
    record = {"model": {"fingerprint": "m"}, "evaluator": {"name": "oracle"}, "seeds": list(seeds),
              "base_seed": 0, "sampler": ["ddim"], "suite_ids": ["see"], "methods": methods}
    (folder / target / "results.json").write_text(json.dumps(record))


def test_methods_of_one_target_merge_across_folders(tmp_path):
    findings = load_findings()
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "circle", {"uce": {"metrics": {"x": {"value": 1.0}}}})
    write_run(b, "circle", {"mace": {"metrics": {"x": {"value": 2.0}}},
                            "uce": {"metrics": {"x": {"value": 9.0}}}})
    merged = findings.merged_results([a, b], "circle")
    assert list(merged["methods"]) == ["uce", "mace"]
    assert findings.v(merged, "uce", "x") == 1.0  # the first folder wins a clash
    assert findings.v(merged, "mace", "x") == 2.0
    assert findings.merged_results([a, b], "star") is None


def test_runs_on_other_seeds_are_not_merged(tmp_path):
    findings = load_findings()
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "circle", {"uce": {"metrics": {}}})
    write_run(b, "circle", {"mace": {"metrics": {}}}, seeds=(8, 9))
    with pytest.raises(SystemExit, match="differs from the first run of circle in seeds"):
        findings.merged_results([a, b], "circle")
