"""The miniworld oracle as an evaluator: exact reading of miniworld images.

Row fields: "labels" (every object class present, most confident first), "scores" (P(layout)·P(class) per
class present), "objects" (class, color, size, fill, position, confidence and per-attribute probabilities),
"nothing" (True when no object reaches the threshold: nothing recognisable), "nothing_p" and "layout".
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import EraseLabError
from .base import Evaluator, pick_device, register_evaluator

DEFAULT_THRESHOLD = 0.5


@register_evaluator("oracle")
class OracleEvaluator(Evaluator):
    name = "oracle"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, weights: str | None = None,
                 device: str | None = None):
        if not 0.0 < threshold < 1.0:
            raise EraseLabError(f"the oracle threshold must be within (0, 1), got {threshold}; e.g. 0.5")
        from ..miniworld.oracle import ORACLE_VERSION, Oracle

        self.version = ORACLE_VERSION
        self.threshold = float(threshold)
        self.weights = weights
        self.oracle = Oracle.load(weights, device=pick_device(device))

    def config(self) -> dict:
        return {"threshold": self.threshold, "weights": self.weights or "shipped",
                "weights_sha256": self.oracle.record.get("weights_sha256")}

    def judge(self, images: Sequence, probes: Sequence) -> list[dict]:
        if len(images) != len(probes):
            raise EraseLabError(
                f"got {len(images)} images for {len(probes)} probes; pass one probe per image"
            )
        rows = []
        for pred in self.oracle.predict(list(images), threshold=self.threshold):
            objects = pred["objects"]
            scores: dict[str, float] = {}
            for o in objects:
                scores[o["class"]] = max(scores.get(o["class"], 0.0), o["confidence"])
            rows.append({"labels": list(dict.fromkeys(o["class"] for o in objects)), "scores": scores,
                         "objects": objects, "nothing": pred["nothing"], "nothing_p": pred["nothing_p"],
                         "layout": pred["layout"]})
        return rows

    def features(self, images: Sequence) -> np.ndarray:
        """Penultimate-layer features (n × 256) for Fréchet distances."""
        return self.oracle.features(list(images))
