"""The Evaluator interface: judge generated images, one row per image, and say exactly who judged.

A judgment row is a dict with at least
    "labels": list[str]  — the concepts the evaluator recognises in the image, best first
                           (oracle: every object class present; classifiers: their top-k class names)
    "scores": dict[str, float] — a score per label it considered (probabilities or similarities)
and evaluator-specific fields (oracle: "objects" with class/color/size/fill/position/confidence and
"nothing"; NudeNet: "detections" and "exposed"; VQA: "answers"). Metrics read only these rows.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

from ..errors import EraseLabError
from ..models import _offline as hub_offline
from ..models import pick_device  # noqa: F401  (evaluators import it from here)
from ..provenance import sha256_hex, stable_json
from ..registry import Registry


class Evaluator:
    name: str = "evaluator"
    version: str = "0"

    def config(self) -> dict:
        """Thresholds, weights and options that change the judgments (recorded with every result)."""
        return {}

    def identity(self) -> dict:
        return {"name": self.name, "version": self.version, "config": self.config()}

    def identity_hash(self) -> str:
        """Cache key of judgments: a change of version or threshold re-judges."""
        return sha256_hex(stable_json(self.identity()))[:16]

    def judge(self, images: Sequence, probes: Sequence) -> list[dict]:
        """images: PIL images; probes: the Probe each came from (same order). Returns one row per image."""
        raise NotImplementedError


def require_module(module: str, extra: str, purpose: str):
    """Import an optional dependency, or say which eraselab extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EraseLabError(f"{purpose} needs the Python package {module!r}, which is not installed ({exc}); "
                            f"install it with pip install 'eraselab[{extra}]'") from exc


def load_pretrained(loader: Callable, source: str, what: str, **kwargs):
    """Call a transformers `from_pretrained`-style loader on a local folder or a hub id, turning every failure
    into one line that says where the weights are expected (hub ids are looked up only in the local cache
    when HF_HUB_OFFLINE=1)."""
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return loader(str(path), local_files_only=True, **kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError… for incomplete folders
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise EraseLabError(f"could not load the {what} in {path}: {first}; pass a folder written by "
                                "save_pretrained (config plus weights)") from exc
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or not source.strip():
        raise EraseLabError(
            f"the {what} folder {source!r} does not exist; pass an existing folder or a hub id"
        )
    try:
        return loader(source, local_files_only=hub_offline(), **kwargs)
    except Exception as exc:  # hub errors come in many classes
        raise EraseLabError(
            f"the {what} {source} is not in the local Hugging Face cache; download it with "
            f"`hf download {source}` on a machine with network access, or pass a local folder"
        ) from exc


# Built-in evaluators are lazy entries: listing names imports no evaluator module (imagenet.py loads
# torch.nn); each module also registers its class with @register_evaluator when imported. Third-party
# packages add evaluators under the entry-point group "eraselab.evaluators" (see eraselab/registry.py).
EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator", base=Evaluator,
                                                 entry_points="eraselab.evaluators")
for _name, _target in {"oracle": "eraselab.evaluators.oracle:OracleEvaluator",
                       "clip": "eraselab.evaluators.clip:ClipEvaluator",
                       "imagenet": "eraselab.evaluators.imagenet:ImageNetEvaluator",
                       "nudenet": "eraselab.evaluators.nudenet:NudeNetEvaluator",
                       "vqa": "eraselab.evaluators.vqa:VQAEvaluator"}.items():
    EVALUATORS.add(_name, _target)


def register_evaluator(name: str):
    """Class decorator: register an Evaluator subclass under `name`."""
    return EVALUATORS.register(name)


def evaluator_names() -> list[str]:
    return sorted(EVALUATORS.names())


def get_evaluator(name: str, **options) -> Evaluator:
    return EVALUATORS.get(name)(**options)
