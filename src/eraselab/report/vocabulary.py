"""The report's words that are not metrics: probe aspects, the good/bad verdict of one image, attention terms.

Metric names, units and definitions come from metric_info; this file names what the report shows besides them,
so a word (e.g. "leak") means one thing on the page.
"""
from __future__ import annotations

from ..metric_info import describe

# Probes that ask for the erased target (or a route to it): after erasure, an image showing the target is bad.
ERASURE_ASPECTS = ("target", "synonym", "paraphrase", "composition", "parent", "child", "leak", "erased")
# Probes of concepts to keep: after erasure, an image still showing its own concept is good.
PRESERVATION_ASPECTS = ("sibling", "unrelated", "visually_similar", "subset_superset", "binomial",
                        "semantically_related", "preserved")
ASPECT_ORDER = ERASURE_ASPECTS + PRESERVATION_ASPECTS

# The aspect "leak" of results.json is shown as "two-object", so the page never uses "leak" for two things.
ASPECT_LABELS = {"leak": "two-object", "visually_similar": "visually similar",
                 "subset_superset": "subset/superset", "semantically_related": "semantically related"}

ASPECT_DEFINITIONS = {
    "target": "the erased concept itself (\"a circle\")",
    "synonym": "another name or a rewording of the target",
    "paraphrase": "EraseBench: a paraphrase of the target prompt",
    "composition": "the target with an added attribute (\"a large circle\")",
    "parent": "the target's superclass (\"a shape\"): the target may come back through it",
    "child": "a subclass of the target: showing it shows the target",
    "leak": "two objects in one prompt, the target and another with a different attribute value (\"a red "
            "circle left of a blue square\"); the metrics " + " and ".join(
                f"'{describe(k).label}'" for k in ("see.attribute_leak", "see.attribute_lost") if describe(k))
            + " read them",
    "erased": "AP protocol: images of an erased class",
    "sibling": "a neighbour sharing the target's parent: should survive the erasure",
    "unrelated": "a concept in another branch (control): should survive the erasure",
    "visually_similar": "EraseBench: a concept that looks like the target",
    "subset_superset": "EraseBench: a concept containing or contained in the target",
    "binomial": "EraseBench: a two-word concept sharing a word with the target",
    "semantically_related": "EraseBench: a concept related in meaning to the target",
    "preserved": "AP protocol: images of a class to keep",
}

ATTENTION_TERMS = {
    "entropy": "normalised entropy of the target word's cross-attention map (0 = all on one pixel, 1 = "
               "spread evenly); a rise means the word's attention dispersed",
    "top-5 % mass": "share of the word's attention on its 5 % strongest pixels; a fall means it dispersed",
}


def aspect_label(aspect: str) -> str:
    return ASPECT_LABELS.get(aspect, aspect)


def relation_label(relation: str) -> str:
    """A probe relation as shown: "leak:sibling" reads "two-object, sibling" (see ASPECT_LABELS)."""
    kind, sep, rest = relation.partition(":")
    return f"{aspect_label(kind)}, {rest}" if sep and kind in ASPECT_LABELS else relation


def aspect_goal(aspect: str) -> str:
    """What a good image of this aspect looks like after erasure, in a few words."""
    if aspect in ERASURE_ASPECTS:
        return "target should be gone"
    if aspect in PRESERVATION_ASPECTS:
        return "own concept should stay"
    return "no expectation"


def judged_shown(entry: dict, variant: dict, targets) -> bool | None:
    """What an image's verdict turns on: for erasure aspects, whether it shows the target; otherwise whether
    it shows the probe's own concept. Results without "shows_target" (older runs) fall back to the own concept
    where that concept is a target, else None (not judged)."""
    if entry["aspect"] not in ERASURE_ASPECTS:
        return variant.get("shows_concept")
    if variant.get("shows_target") is not None:
        return variant["shows_target"]
    concepts = entry.get("concepts") or []
    return variant.get("shows_concept") if concepts and concepts[0] in targets else None


def verdict(aspect: str, variant_is_original: bool, shown: bool | None) -> tuple[str, str]:
    """(css class, caption) for one image, given `judged_shown`: "good"/"bad" for an edited model, "ref" for
    the original model (a reference, neither good nor bad), "none" when there is no verdict."""
    if shown is None:
        return "none", "not judged"
    if aspect in ERASURE_ASPECTS:
        caption, good = ("target shown" if shown else "target gone"), not shown
    elif aspect in PRESERVATION_ASPECTS:
        caption, good = ("own concept shown" if shown else "own concept lost"), shown
    else:
        caption, good = ("own concept shown" if shown else "own concept not shown"), None
    if variant_is_original or good is None:
        return "ref", caption
    return ("good", "✓ " + caption) if good else ("bad", "✗ " + caption)
