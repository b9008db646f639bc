"""CLIP evaluator on a tiny random CLIPModel saved to a folder (no downloads)."""
import numpy as np
import pytest
import torch
from conftest import save_clip_folder, tiny_clip_model
from PIL import Image

from eraselab.errors import EraseLabError
from eraselab.evaluators import get_evaluator
from eraselab.probes import Probe


def _image(seed, size=40):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    model, processor, tokenizer = tiny_clip_model()

    # Construct a case with a known winner: make the visual projection map this image's pooled vision
    # features exactly onto the text embedding of "a photo of a zebra", so cos(image, zebra) = 1.
    target_image = _image(7)
    with torch.no_grad():
        tok = tokenizer(["a photo of a zebra"], return_tensors="pt")
        text_emb = model.text_projection(model.text_model(**tok).pooler_output)[0]
        pixels = processor(images=[target_image], return_tensors="pt")["pixel_values"]
        h = model.vision_model(pixel_values=pixels).pooler_output[0]
        model.visual_projection.weight.copy_(torch.outer(text_emb, h) / h.dot(h))
    folder = save_clip_folder(tmp_path_factory.mktemp("tiny_clip"), model, processor, tokenizer)
    return folder, target_image


def test_zero_shot_picks_the_most_similar_label_and_clip_score(tiny_clip):
    folder, target_image = tiny_clip
    ev = get_evaluator("clip", model=str(folder), top_k=2)
    probes = [Probe("a photo of a zebra", concepts=("zebra",)), Probe("a red bus", concepts=("bus",)),
              Probe("a car", concepts=("car",))]
    images = [target_image, _image(1), _image(2)]
    rows = ev.judge(images, probes)
    assert len(rows) == 3
    assert rows[0]["labels"][0] == "zebra"
    assert rows[0]["similarities"]["zebra"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["clip_score"] == pytest.approx(100.0, abs=0.02)
    for row in rows:
        assert len(row["labels"]) == 2
        assert set(row["scores"]) == {"zebra", "bus", "car"}
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 <= row["clip_score"] <= 100.0
        best = max(row["similarities"], key=row["similarities"].get)
        assert row["labels"][0] == best
    # The prompt of another image is not the zebra caption, so its score is below the perfect match.
    assert rows[1]["clip_score"] < 100.0 - 1e-3
    ident = ev.identity()
    assert ident["name"] == "clip" and ident["config"]["model"] == str(folder)
    assert ident["config"]["template"] == "a photo of a {label}"


def test_given_labels_override_probe_concepts(tiny_clip):
    folder, target_image = tiny_clip
    ev = get_evaluator("clip", model=str(folder), labels=["horse", "zebra"], top_k=1)
    rows = ev.judge([target_image], [Probe("a photo of a zebra", concepts=("bus",))])
    assert rows[0]["labels"] == ["zebra"] and set(rows[0]["scores"]) == {"horse", "zebra"}
    assert ev.identity_hash() != get_evaluator("clip", model=str(folder), top_k=1).identity_hash()


def test_offline_missing_hub_id_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(EraseLabError) as err:
        get_evaluator("clip", model="nobody-here/no-such-clip")
    msg = str(err.value)
    assert "\n" not in msg and "hf download nobody-here/no-such-clip" in msg
    with pytest.raises(EraseLabError, match="does not exist"):
        get_evaluator("clip", model=str(tmp_path / "missing" / "folder"))
    with pytest.raises(EraseLabError, match="template"):
        get_evaluator("clip", model=str(tmp_path), template="a photo")
