"""The miniworld quality gates: generate with a model (DDIM, ≤ 25 steps) and judge the images with the oracle.

Definitions (each image judged by the oracle at its default threshold):
  object_acc             "a {color} {class}" for every class × colour: the named class is among the objects
  color_acc              same images: the named class's object (else the most confident one) has the named
  colour synonym_acc            "a {synonym}" for every synonym of every class: the class is among the objects
  superclass_member_rate "a {superclass}" (round shape, polygon, symbol; 10 × seeds seeds each): the most
                         confident object belongs to the superclass
  superclass_spread      mean over superclasses of the number of distinct member classes among its first 20
  seeds two_object_rate        "a {c1} {c2}" pairs joined by "and" or a position word: both named classes
  present binding_acc            among those images with both classes present: each has its own named colour
  oracle_heldout_acc     the oracle's lowest per-attribute accuracy on 2,000 held-out renders
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence

import numpy as np

from ..probes import Probe
from .captions import noun_phrase
from .world import WORLD

TARGETS = {"object_acc": 0.90, "color_acc": 0.90, "synonym_acc": 0.85, "superclass_member_rate": 0.90,
           "superclass_spread": 2.0, "two_object_rate": 0.75, "binding_acc": 0.70, "oracle_heldout_acc": 0.98}
DEFAULT_GUIDANCE = 7.5   # SD's default; on the shipped model 7.5 ≥ 5 ≥ 3 on quick_check
N_PAIRS = 28
SUPERCLASS_SEED_FACTOR = 10
SPREAD_SEEDS = 20


def object_prompts() -> list[tuple[str, str, str]]:
    return [(f"{noun_phrase(c, c, color=k)}", c, k) for c in WORLD.classes for k in WORLD.colors]


def synonym_prompts() -> list[tuple[str, str]]:
    return [(noun_phrase(c, s), c) for c in WORLD.classes for s in WORLD.synonyms(c)]


def superclasses() -> list[str]:
    return [c for c in WORLD.hierarchy if c != WORLD.root]


def pair_prompts(n: int = N_PAIRS, seed: int = 0) -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
    """Fixed pairs of distinct classes with distinct colours, joined by 'and' or a position word."""
    rng = np.random.default_rng([seed, 7])
    words = ["and", "left of", "above", "right of", "below"]
    out = []
    for i in range(n):
        c1, c2 = (str(c) for c in rng.choice(WORLD.classes, 2, replace=False))
        k1, k2 = (str(k) for k in rng.choice(WORLD.colors, 2, replace=False))
        out.append(
            (
                f"{noun_phrase(c1, c1, color=k1)} {words[i % len(words)]} {noun_phrase(c2, c2, color=k2)}",
                (c1, k1),
                (c2, k2),
            )
        )
    return out


def _generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float) -> list:
    """Images in prompt-major order; generated through eraselab.generate in a throwaway store."""
    from ..generate import generate, images_for
    from ..store import RunStore

    probes = [
        Probe(p, seed=s, steps=steps, guidance=guidance, sampler="ddim") for p in prompts for s in seeds
    ]
    with tempfile.TemporaryDirectory(prefix="eraselab-score-") as tmp:
        store = RunStore(tmp)
        keys = generate(pipe, probes, store, progress=False, run_config={"purpose": "miniworld score"})
        images = images_for(store, keys)
        store.close()
    return images


def _classes(row: dict) -> list[str]:
    return [o["class"] for o in row["objects"]]


def _object_of(row: dict, cls: str) -> dict | None:
    return next((o for o in row["objects"] if o["class"] == cls), None)


def score_images(oracle, pipe, seeds: int, steps: int, guidance: float) -> dict:
    seed_list = list(range(seeds))
    out: dict = {}
    # single objects with a colour
    objs = object_prompts()
    rows = oracle.predict(_generate(pipe, [p for p, _, _ in objs], seed_list, steps, guidance))
    hit, col = [], []
    for i, (_, c, k) in enumerate(objs):
        for r in rows[i * seeds:(i + 1) * seeds]:
            hit.append(c in _classes(r))
            o = _object_of(r, c) or (r["objects"][0] if r["objects"] else None)
            col.append(o is not None and o["color"] == k)
    out["object_acc"], out["color_acc"] = float(np.mean(hit)), float(np.mean(col))
    # synonyms
    syn = synonym_prompts()
    rows = oracle.predict(_generate(pipe, [p for p, _ in syn], seed_list, steps, guidance))
    out["synonym_acc"] = float(np.mean([c in _classes(r) for i, (_, c) in enumerate(syn)
                                        for r in rows[i * seeds:(i + 1) * seeds]]))
    # superclasses
    sup = superclasses()
    n_sup = max(SPREAD_SEEDS, SUPERCLASS_SEED_FACTOR * seeds)
    rows = oracle.predict(
        _generate(pipe, [noun_phrase(s, s) for s in sup], list(range(n_sup)), steps, guidance)
    )
    member, spread = [], []
    for i, s in enumerate(sup):
        block = rows[i * n_sup:(i + 1) * n_sup]
        members = set(WORLD.leaves_under(s))
        member += [bool(r["objects"]) and r["objects"][0]["class"] in members for r in block]
        spread.append(len({r["objects"][0]["class"] for r in block[:SPREAD_SEEDS]
                           if r["objects"] and r["objects"][0]["class"] in members}))
    out["superclass_member_rate"] = float(np.mean(member))
    out["superclass_spread"] = float(np.mean(spread))
    out["superclass_spread_per_class"] = dict(zip(sup, spread))
    # two objects
    pairs = pair_prompts()
    rows = oracle.predict(_generate(pipe, [p for p, _, _ in pairs], seed_list, steps, guidance))
    both, bound = [], []
    for i, (_, (c1, k1), (c2, k2)) in enumerate(pairs):
        for r in rows[i * seeds:(i + 1) * seeds]:
            o1, o2 = _object_of(r, c1), _object_of(r, c2)
            both.append(o1 is not None and o2 is not None)
            if both[-1]:
                bound.append(o1["color"] == k1 and o2["color"] == k2)
    out["two_object_rate"] = float(np.mean(both))
    out["binding_acc"] = float(np.mean(bound)) if bound else 0.0
    out["images"] = seeds * (len(objs) + len(syn) + len(pairs)) + n_sup * len(sup)
    return out


def score(model: str = "miniworld", seeds: int = 2, steps: int = 25, guidance: float = DEFAULT_GUIDANCE,
          pipe=None, oracle=None, heldout_n: int = 2000) -> dict:
    """All gates as one JSON-able dict, with what produced them."""
    from ..errors import EraseLabError
    from ..models import fingerprint, load_pipeline, model_source
    from ..provenance import library_versions
    from .oracle import Oracle, heldout_accuracy

    if seeds < 1 or not 1 <= steps <= 25:
        raise EraseLabError(f"--seeds must be >= 1 and --steps within 1..25 (got {seeds}, {steps})")
    t0 = time.time()
    pipe = pipe if pipe is not None else load_pipeline(model)
    oracle = oracle if oracle is not None else Oracle.load()
    result = score_images(oracle, pipe, seeds, steps, guidance)
    result["oracle_heldout_acc"] = heldout_accuracy(oracle, n=heldout_n)["min"]
    result["seconds"] = round(time.time() - t0, 1)
    result["met"] = {k: result[k] >= v for k, v in TARGETS.items()}
    result["provenance"] = {
        "model": model_source(pipe),
        "model_fingerprint": fingerprint(pipe),
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "sampler": "ddim",
        "evaluator": {
            "name": "oracle",
            "version": oracle.record.get("version"),
            "weights_sha256": oracle.record.get("weights_sha256"),
        },
        "library_versions": library_versions(),
    }
    return result


QUICK_THRESHOLD = 0.5   # chance is 1/14 for the class and 1/7 for the colour


def quick_check(pipe, oracle, steps: int = 10, guidance: float = DEFAULT_GUIDANCE) -> dict:
    """A seconds-long sanity check: one "a {color} {class}" image per class (colours cycled), judged by the
    oracle. A trained model scores far above chance; a random or broken one near zero."""
    prompts = [
        (noun_phrase(c, c, color=WORLD.colors[i % len(WORLD.colors)]), c, WORLD.colors[i % len(WORLD.colors)])
        for i, c in enumerate(WORLD.classes)
    ]
    rows = oracle.predict(_generate(pipe, [p for p, _, _ in prompts], [0], steps, guidance))
    hit = [c in _classes(r) for r, (_, c, _) in zip(rows, prompts)]
    col = [(_object_of(r, c) or {}).get("color") == k for r, (_, c, k) in zip(rows, prompts)]
    return {"object_acc": float(np.mean(hit)), "color_acc": float(np.mean(col)),
            "passed": bool(np.mean(hit) >= QUICK_THRESHOLD and np.mean(col) >= QUICK_THRESHOLD)}
