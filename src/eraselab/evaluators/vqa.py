"""VQA judge for attribute leakage on real models: ask "what color is the {object}?" about each object a probe
names, with any transformers visual-question-answering or image-text-to-text model given by folder or hub id.

Questions are asked about every concept of the probe (for "a red car and a blue bus" with concepts
("car", "bus"): "what color is the car?", "what color is the bus?"). Row fields: "questions" {object:
question}, "raw_answers" {object: the model's text}, "answers" {object: the normalised answer — the first
known attribute value the text mentions, else the cleaned text}, "labels" ["<answer> <object>", …] and
"scores" (empty: the models' answer scores are not comparable across models, so none are reported).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from ..errors import EraseLabError
from .base import Evaluator, load_pretrained, pick_device, register_evaluator

QUESTIONS = {"color": "what color is the {object}?", "material": "what is the {object} made of?",
             "size": "what size is the {object}?", "shape": "what shape is the {object}?"}
# fmt: off
VALUES = {
    "color": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
              "silver", "gold"),
    "material": ("wood", "metal", "plastic", "glass", "stone", "paper", "fabric", "leather", "rubber",
                 "ceramic"),
    "size": ("small", "medium", "large"),
    "shape": ("circle", "square", "triangle", "rectangle", "star", "round"),
}
# fmt: on
# Answers use many spellings for one value; map them before matching against VALUES.
SYNONYMS = {"grey": "gray", "wooden": "wood", "metallic": "metal", "big": "large", "tiny": "small",
            "little": "small", "circular": "circle", "golden": "gold", "violet": "purple"}
_TASKS = ("visual-question-answering", "image-text-to-text")
_ARTICLES = re.compile(r"^(it is|it's|the answer is|answer:|this is|that is|the|a|an)\s+")


class Answerer(Protocol):
    def answer(self, images: Sequence, questions: Sequence[str]) -> list[str]: ...


def parse_answer(text: str, values: Sequence[str] = ()) -> str:
    """The attribute value an answer states: the first known value among its words, else its cleaned text."""
    cleaned = re.sub(r"[^a-z0-9 ]+", " ", str(text).lower()).strip()
    words = [SYNONYMS.get(w, w) for w in cleaned.split()]
    known = set(values)
    for w in words:
        if w in known:
            return w
    cleaned = " ".join(words)
    while (stripped := _ARTICLES.sub("", cleaned)) != cleaned:
        cleaned = stripped
    return cleaned


def load_answerer(source: str, task: str = "auto", device: str | None = None, max_new_tokens: int = 10):
    """A VQA-head model (ViLT, BLIP, … : task "visual-question-answering") or a chat vision-language model
    ("image-text-to-text"); "auto" decides from the model's config."""
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig.from_pretrained, source, "VQA model")
    if task == "auto":
        archs = getattr(config, "architectures", None) or []
        task = _TASKS[0] if any(a.endswith("ForQuestionAnswering") for a in archs) else _TASKS[1]
    if task not in _TASKS:
        raise EraseLabError(f"unknown VQA task {task!r}; choose one of {', '.join(_TASKS)} or auto")
    cls = HeadAnswerer if task == _TASKS[0] else ChatAnswerer
    return cls(source, pick_device(device), max_new_tokens)


class HeadAnswerer:
    """Models with a VQA head. transformers 5 dropped the visual-question-answering pipeline, so this calls
    the model: classifier heads (ViLT) answer with their best label, generative ones (BLIP) with generated
    text."""

    task = _TASKS[0]

    def __init__(self, source: str, device, max_new_tokens: int):
        from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

        self.model = load_pretrained(AutoModelForVisualQuestionAnswering.from_pretrained, source,
                                     "VQA model").eval().to(device)
        self.processor = load_pretrained(AutoProcessor.from_pretrained, source, "VQA processor")
        self.device = device
        self.max_new_tokens = max_new_tokens

    def answer(self, images: Sequence, questions: Sequence[str]) -> list[str]:
        import torch

        out = []
        with torch.no_grad():
            for image, question in zip(images, questions):
                inputs = self.processor(images=image.convert("RGB"), text=question, return_tensors="pt")
                inputs = inputs.to(self.device)
                if self.model.can_generate():
                    ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
                    out.append(self.processor.batch_decode(ids, skip_special_tokens=True)[0])
                else:
                    logits = self.model(**inputs).logits[0]
                    out.append(self.model.config.id2label[int(logits.argmax())])
        return out


class ChatAnswerer:
    """Chat vision-language models through transformers' image-text-to-text pipeline."""

    task = _TASKS[1]

    def __init__(self, source: str, device, max_new_tokens: int):
        from transformers import pipeline

        self.pipe = load_pretrained(lambda src, local_files_only: pipeline(
            self.task, model=src, device=device, local_files_only=local_files_only), source, "VQA model")
        self.max_new_tokens = max_new_tokens

    def answer(self, images: Sequence, questions: Sequence[str]) -> list[str]:
        out = []
        for image, question in zip(images, questions):
            messages = [{"role": "user", "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": f"{question} Answer with one word."}]}]
            result = self.pipe(text=messages, max_new_tokens=self.max_new_tokens, return_full_text=False)
            text = result[0]["generated_text"] if result else ""
            if isinstance(text, list):  # chat-format output: the last message is the model's reply
                text = text[-1].get("content", "") if text else ""
            out.append(str(text))
        return out


@register_evaluator("vqa")
class VQAEvaluator(Evaluator):
    name = "vqa"
    version = "1"

    def __init__(
        self,
        model: str | Answerer | None = None,
        attribute: str = "color",
        question: str | None = None,
        values: Sequence[str] | None = None,
        task: str = "auto",
        device: str | None = None,
        max_new_tokens: int = 10,
    ):
        if model is None:
            raise EraseLabError("the vqa evaluator needs a model: pass model=FOLDER or a hub id of a "
                                "visual-question-answering or image-text-to-text model")
        template = question or QUESTIONS.get(attribute)
        if template is None:
            raise EraseLabError(
                f"no question known for attribute {attribute!r}; pass question='... {{object}} ...' "
                f"or one of {', '.join(QUESTIONS)}"
            )
        if "{object}" not in template:
            raise EraseLabError(
                f"the VQA question {template!r} has no {{object}}; use e.g. {QUESTIONS['color']!r}"
            )
        self.template = template
        self.attribute = attribute
        self.values = tuple(values) if values is not None else VALUES.get(attribute, ())
        if isinstance(model, str):
            self.model_source = model
            self.answerer: Answerer = load_answerer(model, task, device, max_new_tokens)
            self.task = self.answerer.task
        else:
            self.model_source = getattr(model, "name", type(model).__name__)
            self.answerer = model
            self.task = "custom"

    def config(self) -> dict:
        return {"model": self.model_source, "task": self.task, "attribute": self.attribute,
                "question": self.template, "values": list(self.values)}

    def questions(self, probe) -> dict[str, str]:
        return {obj: self.template.format(object=obj) for obj in probe.concepts}

    def judge(self, images: Sequence, probes: Sequence) -> list[dict]:
        if len(images) != len(probes):
            raise EraseLabError(
                f"got {len(images)} images for {len(probes)} probes; pass one probe per image"
            )
        asked = [self.questions(p) for p in probes]
        flat_images = [im for im, qs in zip(images, asked) for _ in qs]
        flat_questions = [q for qs in asked for q in qs.values()]
        replies = list(self.answerer.answer(flat_images, flat_questions)) if flat_questions else []
        if len(replies) != len(flat_questions):
            raise EraseLabError(
                f"the VQA model gave {len(replies)} answers to {len(flat_questions)} questions; "
                "its answer() must return one string per question"
            )
        replies = iter(replies)
        rows = []
        for qs in asked:
            raw = {obj: str(next(replies)) for obj in qs}
            answers = {obj: parse_answer(text, self.values) for obj, text in raw.items()}
            rows.append({"questions": qs, "raw_answers": raw, "answers": answers,
                         "labels": [f"{a} {obj}" if a else obj for obj, a in answers.items()], "scores": {}})
        return rows
