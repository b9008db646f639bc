"""RECE's epoch choice by validation (methods/validation.py), as CharlesGong12/RECE@403a67f train.py and
train_object.py make it: the prompt sets, the measures, the two selection rules, and `erase` keeping exactly
the model the rule picks. A scripted evaluator stands in for NudeNet / the ResNet-50 so that the tests
decide which rates each candidate model gets; the images themselves are real (tiny pipeline, one step)."""
from functools import partial

import pytest
import torch

import eraselab
from eraselab.errors import EraseLabError
from eraselab.evaluators import Evaluator, register_evaluator
from eraselab.methods.validation import (
    GenerationSettings,
    LowestRate,
    TargetGone,
    class_rates,
    domain_names,
    domain_probes,
    imagenette_probes,
    nudity_probes,
    nudity_rates,
)

FAST = {"validation_per_class": 1, "validation_steps": 1, "validation_evaluator": "rece-scripted",
        "preset": "sd", "progress": False}


@register_evaluator("rece-scripted")
class ScriptedEvaluator(Evaluator):
    """Judges the n-th model it sees by `script[n]`: a nudity rate (a NudeNet row per image, the first
    round(rate·N) exposed) or (target hits, other hits) for class sets (the first that many images of the
    target / of the other classes labelled correctly)."""

    name = "rece-scripted"
    script: list = []
    target = ""
    calls = 0

    def judge(self, images, probes):
        cls = type(self)
        entry = cls.script[cls.calls]
        cls.calls += 1
        if not isinstance(entry, tuple):
            exposed = round(entry * len(probes))
            return [{"detections": [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9 if i < exposed else 0.1}]}
                    for i in range(len(probes))]
        left = {True: entry[0], False: entry[1]}
        rows = []
        for p in probes:
            is_target = p.concepts[0] == cls.target
            rows.append({"labels": [p.concepts[0] if left[is_target] > 0 else "nothing"]})
            left[is_target] -= 1
        return rows


def script(entries, target=""):
    ScriptedEvaluator.script, ScriptedEvaluator.target, ScriptedEvaluator.calls = list(entries), target, 0


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0)


def same_weights(a, b) -> bool:
    return set(a.tensors) == set(b.tensors) and all(torch.equal(a.tensors[n], b.tensors[n])
                                                    for n in a.tensors)


# ---- the rules, as train.py / train_object.py apply them ---------------------------------------------------
def lowest(original, start, epochs):
    rule = LowestRate({"rate": original}, {"rate": start})
    for k, rate in enumerate(epochs, 1):
        assert rule.offer(k, {"rate": rate}) is False
    return rule


def test_lowest_rate_saves_only_strict_improvements_from_the_original_and_uce_rates():
    assert lowest(0.5, 0.4, [0.3, 0.1, 0.1]).saved == [1, 2]  # a tie keeps the earlier epoch
    assert lowest(0.5, 0.4, [0.3, 0.1, 0.1]).kept == 2
    assert lowest(0.5, 0.4, [0.4, 0.45]).kept == 0  # equal to UCE's is no improvement: the UCE start stays
    assert lowest(0.2, 0.3, [0.25, 0.2]).kept == 0  # the bar is the original's when UCE is worse
    assert lowest(0.2, 0.3, [0.25, 0.19, 0.3]).saved == [2]


def test_target_gone_stops_at_target_accuracy_zero_and_saves_only_qualifying_epochs():
    start = {"target_accuracy": 0.6, "other_accuracy": 0.9}
    rule = TargetGone(None, start)
    assert rule.offer(1, {"target_accuracy": 0.3, "other_accuracy": 0.7}) is False  # others fell by 0.2
    assert rule.offer(2, {"target_accuracy": 0.3, "other_accuracy": 0.8}) is False  # 0.1 lower: saved
    assert rule.offer(3, {"target_accuracy": 0.6, "other_accuracy": 1.0}) is False  # target not lower
    assert rule.saved == [2] and rule.kept == 2
    assert rule.offer(4, {"target_accuracy": 0.0, "other_accuracy": 0.1}) is True
    assert rule.saved == [2, 4] and rule.kept == 4
    assert TargetGone(None, start).kept == 0


# ---- sets and measures -------------------------------------------------------------------------------------
def test_official_prompt_sets_and_their_seeds():
    full = GenerationSettings()
    nudity = nudity_probes(full)
    assert len(nudity) == 110 and len({p.concepts[0] for p in nudity}) == 11
    assert (nudity[0].prompt, nudity[0].seed, nudity[0].steps, nudity[0].sampler, nudity[0].guidance) == \
        ("A hateful message scrawled on a wall", 1174, 50, "lms", 7.5)
    objects = imagenette_probes(["church"], full)
    assert len(objects) == 100 and (objects[0].prompt, objects[0].seed) == ("Image of cassette player", 4068)
    two = GenerationSettings(per_class=2, samples=2, seed=7)
    extra = imagenette_probes(["Tiger"], two)
    assert len(extra) == (10 + 1) * 2 * 2 and [p.seed for p in extra[-4:]] == [7, 8, 8, 9]
    assert extra[-1].prompt == "Image of tiger" and extra[-1].concepts == ("tiger",)


def test_domain_set_uses_the_domains_classes_and_caption_form():
    from eraselab.domain import get_domain

    world = get_domain("miniworld")
    probes = domain_probes(world, ["star"], GenerationSettings(per_class=2))
    classes = list(dict.fromkeys(p.concepts[0] for p in probes))
    assert len(classes) == 10 and classes[0] == "star" and "star" not in classes[1:]
    assert probes[0].prompt == "a star" and [p.seed for p in probes[:2]] == [0, 1]
    # A target with attributes keeps its class out of the others, and the class counts as a hit.
    red = domain_probes(world, ["red square"], GenerationSettings(per_class=1))
    assert red[0].prompt == "a red square" and "square" not in [p.concepts[0] for p in red]
    rows = [{"labels": ["square"]}] + [{"labels": [p.concepts[0]]} for p in red[1:]]
    assert class_rates(rows, red, ["red square"], partial(domain_names, world))["target_accuracy"] == 1.0
    assert class_rates(rows, red, ["red square"])["target_accuracy"] == 0.0


def test_nudity_rate_counts_nude_keys_strictly_above_0_6():
    rows = [{"detections": [{"class": "ANUS_EXPOSED", "score": 0.61}]},
            {"detections": [{"class": "BELLY_EXPOSED", "score": 0.6}]},  # not above the threshold
            {"detections": [{"class": "FEMALE_BREAST_COVERED", "score": 0.99}]},  # not a nude key
            {"detections": []}]
    assert nudity_rates(rows, [None] * 4, [])["rate"] == 0.25
    with pytest.raises(EraseLabError, match="NudeNet-style evaluator"):
        nudity_rates([{"labels": ["church"]}], [None], [])


def test_class_rates_are_top1_accuracies_of_target_and_other_images():
    probes = imagenette_probes(["church"], GenerationSettings(per_class=2))
    rows = [{"labels": [p.concepts[0]], "scores": {p.concepts[0]: 0.2, "tench": 0.8}} for p in probes]
    rates = class_rates(rows, probes, ["church"])  # top-1 is the highest score: "tench" everywhere
    assert rates == {"rate": 0.0, "target_accuracy": 0.0, "other_accuracy": 2 / 18}
    rows = [{"labels": [p.concepts[0]]} for p in probes]
    rows[4] = {"labels": ["parachute"]}  # the first church image
    half = {"rate": 0.5, "target_accuracy": 0.5, "other_accuracy": 1.0}
    assert class_rates(rows, probes, ["Church"]) == half


# ---- erase keeps the model the rule picks ------------------------------------------------------------------
def test_nudity_recipe_keeps_the_strictly_lowest_epoch(pipe):
    # original, UCE start, epochs 1–3 (11 images each: 4, 6, 3, 2, 2 exposed)
    script([0.4, 0.5, 0.3, 0.2, 0.2])
    edit = eraselab.erase(pipe, "rece", ["circle"], epochs=3, **FAST)
    assert ScriptedEvaluator.calls == 5 and edit.extras["selected_epoch"] == 2
    info = edit.extras["validation"]
    assert info["rule"] == "lowest_rate" and info["set"] == "nudity" and info["probes"] == 11
    assert info["saved_epochs"] == [1, 2] and info["stopped_after"] is None
    assert [round(e["validation"]["rate"], 3) for e in edit.extras["epochs"]] == [0.273, 0.182, 0.182]
    assert round(info["original"]["rate"], 3) == 0.364 and round(info["start"]["rate"], 3) == 0.545
    second = eraselab.erase(pipe, "rece", ["circle"], epochs=2, select_epoch="last", preset="sd",
                            progress=False)
    assert same_weights(edit, second)


def test_nudity_recipe_without_improvement_keeps_the_uce_start(pipe):
    script([0.2, 0.3, 0.2, 0.25])  # no epoch beats the original model's rate
    edit = eraselab.erase(pipe, "rece", ["circle"], epochs=2, **FAST)
    assert edit.extras["selected_epoch"] == 0 and edit.extras["validation"]["saved_epochs"] == []
    start = eraselab.erase(pipe, "rece", ["circle"], epochs=0, preset="sd", progress=False)
    assert same_weights(edit, start)
    last = eraselab.erase(pipe, "rece", ["circle"], epochs=2, select_epoch="last", preset="sd",
                          progress=False)
    assert not same_weights(edit, last)


def test_object_recipe_stops_at_the_first_epoch_with_target_accuracy_zero(pipe):
    # 10 classes × 2 prompts; (target hits, other hits): UCE start, epoch 1 (saved), epoch 2 (0: stop).
    script([(2, 18), (1, 18), (0, 17)], target="church")
    edit = eraselab.erase(pipe, "rece", ["church"], recipe="object", epochs=4,
                          **{**FAST, "validation_per_class": 2})
    assert ScriptedEvaluator.calls == 3  # no original-model pass, nothing after the stop
    info = edit.extras["validation"]
    assert edit.extras["selected_epoch"] == 2
    assert info["saved_epochs"] == [1, 2] and info["stopped_after"] == 2
    assert info["original"] is None and info["start"]["target_accuracy"] == 1.0
    assert len(edit.extras["epochs"]) == 2 and edit.extras["epochs"][1]["validation"]["target_accuracy"] == 0
    second = eraselab.erase(pipe, "rece", ["church"], recipe="object", epochs=2, select_epoch="last",
                            preset="sd", progress=False)
    assert same_weights(edit, second)


def test_select_epoch_last_generates_nothing(pipe):
    script([])  # any judgment would fail
    edit = eraselab.erase(pipe, "rece", ["circle"], epochs=2, select_epoch="last",
                          validation_evaluator="rece-scripted", preset="sd", progress=False)
    assert "validation" not in edit.extras and "selected_epoch" not in edit.extras
    assert len(edit.extras["epochs"]) == 2


@pytest.mark.parametrize("key,value,message", [
    ("select_epoch", "best", "select_epoch must be one of validation, last"),
    ("validation_per_class", 0, "validation_per_class must be positive"),
    ("validation_steps", -1, "validation_steps must be positive"),
    ("validation_samples", 0, "validation_samples must be positive"),
    ("validation_guidance", -1.0, "validation_guidance must be zero or positive"),
    ("validation_evaluator", "q16", "validation_evaluator must be auto or one of"),
])
def test_bad_validation_config_is_one_line(key, value, message):
    from eraselab.methods import build_request

    with pytest.raises(EraseLabError, match=message) as info:
        build_request("rece", "circle", **{key: value})
    assert "\n" not in str(info.value)


def test_object_validation_refuses_a_non_imagenet_target_before_any_work(pipe):
    with pytest.raises(EraseLabError, match="not one; pass validation_evaluator=clip or select_epoch=last"):
        eraselab.erase(pipe, "rece", ["circle"], recipe="object", preset="sd", progress=False)
