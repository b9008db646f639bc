"""Metric summaries are computed once per distinct judgments, features, settings and metrics code."""
import numpy as np

from eraselab import metrics_cache
from eraselab.metrics_cache import cached_summary, features_hash, table_hash
from eraselab.probes import Probe


def test_a_summary_is_computed_once_per_distinct_input(tmp_path, monkeypatch):
    calls = []

    def compute():
        calls.append(1)
        return {"target.recognition": {"value": 50.0, "low": float("nan"), "n": 2}}

    inputs = {"original": "a", "edited": "b", "targets": ["circle"]}
    first = cached_summary(tmp_path, inputs, compute)
    assert (
        cached_summary(tmp_path, inputs, compute)["target.recognition"]["value"] == 50.0 and len(calls) == 1
    )
    assert first["target.recognition"]["value"] == 50.0
    cached_summary(tmp_path, {**inputs, "edited": "c"}, compute)  # other judgments
    assert len(calls) == 2
    monkeypatch.setattr(metrics_cache, "metrics_code_hash", lambda: "other code")
    cached_summary(tmp_path, inputs, compute)  # the metrics changed: recomputed
    assert len(calls) == 3
    for f in tmp_path.glob("*.json"):
        f.write_text("{broken")
    cached_summary(tmp_path, inputs, compute)  # a damaged file is recomputed, not an error
    assert len(calls) == 4


def test_hashes_see_labels_rows_and_feature_values():
    p = Probe(prompt="a circle", seed=0, concepts=("circle",), aspect="target")
    q = Probe(prompt="a circle", seed=0, concepts=("circle",), aspect="synonym")
    row = {"labels": ["circle"]}
    assert table_hash([(p, row)]) != table_hash([(q, row)])  # same image, other label
    assert table_hash([(p, row)]) != table_hash([(p, {"labels": []})])
    a = np.zeros((3, 2))
    assert features_hash((a, a)) != features_hash((a, a + 1e-9)) and features_hash(None) is None
