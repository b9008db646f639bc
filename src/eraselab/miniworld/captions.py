"""Captions for miniworld scenes. They vary the level of abstraction (class name, synonym, parent, root),
which attributes are named, and how two objects are joined ("and" or a position word), so that after training
"a polygon" yields a spread of polygons and "a red circle left of a blue square" binds colours and places."""
from __future__ import annotations

import numpy as np

from .render import Scene, SceneObject
from .world import WORLD

# How a single object's noun is chosen: (own name, synonym, parent concept, root concept).
SINGLE_NAME_P = (0.55, 0.22, 0.17, 0.06)
PAIR_NAME_P = (0.72, 0.18, 0.10, 0.0)
# Probability that each attribute is named.
SINGLE_ATTR_P = {"size": 0.35, "color": 0.75, "fill": 0.35}
PAIR_ATTR_P = {"size": 0.25, "color": 0.85, "fill": 0.2}
# Binomial partners co-occur in most scenes; most of those captions name both, some only one.
BINOMIAL_NAME_BOTH_P = 0.8
# Position words: the subject's slot relative to the other object.
RELATION = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeio" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def noun_phrase(cls: str, name: str, size: str | None = None, color: str | None = None,
                fill: str | None = None) -> str:
    """'a small red outlined circle' — attributes in a fixed order (size, colour, fill), any of them
    omitted."""
    words = [w for w in (size, color, fill) if w] + [name]
    return with_article(" ".join(words))


def _pick_name(rng: np.random.Generator, cls: str, probs) -> str:
    kind = rng.choice(4, p=probs)
    if kind == 1 and WORLD.synonyms(cls):
        return str(rng.choice(WORLD.synonyms(cls)))
    if kind == 2:
        parent = WORLD.parent(cls)
        return str(rng.choice(WORLD.names(parent)))
    if kind == 3:
        return str(rng.choice(WORLD.names(WORLD.root)))
    return cls


def _describe(rng: np.random.Generator, obj: SceneObject, name_p, attr_p) -> str:
    named = {k: getattr(obj, k) if rng.random() < p else None for k, p in attr_p.items()}
    return noun_phrase(obj.cls, _pick_name(rng, obj.cls, name_p), **named)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One random caption that is true of the scene."""
    return caption_with_phrases(scene, rng)[0]


def caption_with_phrases(scene: Scene, rng: np.random.Generator
                         ) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """A random caption and, for each object it names, (its noun phrase, where the phrase starts in the
    caption, the object's index in scene.objects). Training's grounding loss uses them to tell which tokens
    describe which object."""
    if scene.layout == "single":
        text = _describe(rng, scene.objects[0], SINGLE_NAME_P, SINGLE_ATTR_P)
        return text, ((text, 0, 0),)
    a, b = 0, 1
    objs = scene.objects
    if objs[a].cls in WORLD.binomial_partners(objs[b].cls) and rng.random() > BINOMIAL_NAME_BOTH_P:
        # The partner is in the picture but unnamed: "a star" also shows its crescent.
        only = a if rng.random() < 0.5 else b
        text = _describe(rng, objs[only], PAIR_NAME_P, PAIR_ATTR_P)
        return text, ((text, 0, only),)
    if rng.random() < 0.5:
        a, b = b, a
    da, db = (
        _describe(rng, objs[a], PAIR_NAME_P, PAIR_ATTR_P),
        _describe(rng, objs[b], PAIR_NAME_P, PAIR_ATTR_P),
    )
    joint = "and" if rng.random() < 0.45 else RELATION[objs[a].position]
    return f"{da} {joint} {db}", ((da, 0, a), (db, len(da) + len(joint) + 2, b))


def all_caption_words() -> set[str]:
    """Every word a caption can use (for vocabulary checks)."""
    words = {"a", "an", "and"} | {w for r in RELATION.values() for w in r.split()}
    for c in WORLD.concepts:
        for n in WORLD.names(c):
            words |= set(n.split())
    for values in WORLD.attributes.values():
        words |= set(values)
    return words
