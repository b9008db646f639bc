"""CLIP judge: zero-shot classification over a label set, and CLIP score of each image against its prompt.

Row fields: "labels" (the top-k labels by image–text similarity, best first), "scores" (softmax probability of
every candidate label, CLIP's logit scale), "similarities" (cosine per label) and "clip_score"
(100 · max(cos(image, prompt), 0), the definition of Hessel et al. used by torchmetrics, computed here so that
no extra package is needed).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import EraseLabError
from ..provenance import sha256_hex, stable_json
from .base import Evaluator, load_pretrained, pick_device, register_evaluator

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_TEMPLATE = "a photo of a {label}"


@register_evaluator("clip")
class ClipEvaluator(Evaluator):
    name = "clip"
    version = "1"

    def __init__(self, model: str = DEFAULT_CLIP, labels: Sequence[str] | None = None,
                 template: str = DEFAULT_TEMPLATE, top_k: int = 5, device: str | None = None,
                 batch_size: int = 16):
        if "{label}" not in template:
            raise EraseLabError(f"the CLIP prompt template {template!r} has no {{label}}; use e.g. "
                                f"{DEFAULT_TEMPLATE!r}")
        if top_k < 1:
            raise EraseLabError(f"top_k must be >= 1, got {top_k}")
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        self.model_source = model
        self.model = load_pretrained(CLIPModel.from_pretrained, model, "CLIP model").eval()
        self.tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, model, "CLIP tokenizer")
        self.image_processor = load_pretrained(
            CLIPImageProcessor.from_pretrained, model, "CLIP image processor"
        )
        self.device = pick_device(device)
        self.model.to(self.device)
        self.labels = list(labels) if labels else None
        self.template = template
        self.top_k = int(top_k)
        self.batch_size = int(batch_size)

    def config(self) -> dict:
        return {"model": self.model_source,
                "model_revision": getattr(self.model.config, "_commit_hash", None) or "local",
                "labels": self.labels if self.labels else "probe concepts", "template": self.template,
                "top_k": self.top_k, "clip_score": "100*max(cos,0)"}

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm projected text embeddings (N × D); prompts longer than 77 tokens are truncated, as in
        CLIP."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            ).to(self.device)
            # text_model + text_projection rather than get_text_features, whose return type changed in
            # transformers 5 (an output object instead of a tensor).
            pooled = self.model.text_model(**tok).pooler_output
            out.append(self.model.text_projection(pooled))
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i:i + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, dtype=self.model.dtype)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled))
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)

    def candidate_labels(self, probes: Sequence) -> list[str]:
        if self.labels:
            return self.labels
        seen: dict[str, None] = {}
        for p in probes:
            for c in p.concepts:
                seen.setdefault(c, None)
        return list(seen)

    @torch.no_grad()
    def judge(self, images: Sequence, probes: Sequence) -> list[dict]:
        if len(images) != len(probes):
            raise EraseLabError(
                f"got {len(images)} images for {len(probes)} probes; pass one probe per image"
            )
        if not images:
            return []
        img = self.image_embeddings(images)
        prompt_emb = self.text_embeddings([p.prompt for p in probes])
        clip_scores = 100.0 * (img * prompt_emb).sum(-1).clamp(min=0)
        labels = self.candidate_labels(probes)
        rows = []
        if labels:
            lab = self.text_embeddings([self.template.format(label=label) for label in labels])
            cos = img @ lab.T
            probs = (self.model.logit_scale.exp().float().cpu() * cos.cpu()).softmax(-1)
        label_set = sha256_hex(stable_json(labels))[:12]
        for i in range(len(images)):
            row = {"clip_score": float(clip_scores[i]), "label_set": label_set, "labels": [], "scores": {},
                   "similarities": {}}
            if labels:
                order = torch.argsort(cos[i], descending=True)[: self.top_k].tolist()
                row["labels"] = [labels[j] for j in order]
                row["scores"] = {label: float(probs[i, j]) for j, label in enumerate(labels)}
                row["similarities"] = {label: float(cos[i, j]) for j, label in enumerate(labels)}
            rows.append(row)
        return rows
