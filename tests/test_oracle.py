"""The miniworld oracle and its evaluator: accuracy on held-out renders, 'nothing recognisable', row
format."""

import numpy as np
import pytest

from eraselab.errors import EraseLabError
from eraselab.miniworld.oracle import FEATURE_DIM, Oracle, _nothing_images, heldout_accuracy
from eraselab.miniworld.render import render_dataset
from eraselab.miniworld.world import WORLD
from eraselab.probes import Probe


@pytest.fixture(scope="module")
def oracle():
    return Oracle.load()


def test_oracle_reads_heldout_renders(oracle):
    acc = heldout_accuracy(oracle, n=400, seed=2024)
    for attr in ("layout", "class", "color", "size", "fill"):
        assert acc[attr] >= 0.97, acc


def test_oracle_record_meets_the_gate(oracle):
    assert oracle.record["heldout_renders"]["min"] >= 0.98
    assert oracle.record["version"] and oracle.record["weights_sha256"]


def test_oracle_says_nothing_for_blank_and_noise(oracle):
    images = _nothing_images(60, np.random.default_rng(3))
    rows = oracle.predict(images)
    assert np.mean([r["nothing"] for r in rows]) >= 0.9


def test_oracle_predictions_carry_every_attribute(oracle):
    images, scenes = render_dataset(12, seed=77)
    for row, scene in zip(oracle.predict(images), scenes):
        assert not row["nothing"]
        assert {o["class"] for o in row["objects"]} == {o.cls for o in scene.objects}
        for o in row["objects"]:
            assert o["color"] in WORLD.colors and o["size"] in WORLD.sizes and o["fill"] in WORLD.fills
            assert o["position"] in ("center", "left", "right", "top", "bottom") and 0 < o["confidence"] <= 1


def test_features_are_deterministic_and_discriminative(oracle):
    images, _ = render_dataset(8, seed=5)
    f1, f2 = oracle.features(images), oracle.features(images)
    assert f1.shape == (8, FEATURE_DIM) and np.array_equal(f1, f2)
    assert np.abs(f1[0] - f1[1]).sum() > 0


def test_evaluator_rows_and_identity():
    from PIL import Image

    from eraselab.evaluators.base import get_evaluator

    ev = get_evaluator("oracle")
    images, scenes = render_dataset(4, seed=9)
    pil = [Image.fromarray(im).resize((64, 64)) for im in images]   # other sizes are resized
    rows = ev.judge(pil, [Probe("a shape", seed=i) for i in range(4)])
    for row, scene in zip(rows, scenes):
        assert set(row["labels"]) == {o.cls for o in scene.objects}
        assert set(row["scores"]) == set(row["labels"]) and row["nothing"] is False
    ident = ev.identity()
    assert (
        ident["name"] == "oracle"
        and ident["config"]["threshold"] == 0.5
        and ident["config"]["weights_sha256"]
    )
    assert get_evaluator("oracle", threshold=0.9).identity_hash() != ev.identity_hash()
    assert ev.features(pil).shape == (4, FEATURE_DIM)
    with pytest.raises(EraseLabError):
        ev.judge(pil, [])
    with pytest.raises(EraseLabError):
        get_evaluator("oracle", threshold=1.5)
