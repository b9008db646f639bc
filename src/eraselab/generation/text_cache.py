"""Text conditioning for one generate() request: each distinct string encoded once, in fixed lanes."""
from __future__ import annotations

from collections.abc import Iterable

import torch

# Stands for "no negative prompt" in families that condition it on zeros rather than on the encoding of "".
ZERO_TEXT = None


class TextEmbeddings:
    """Encodes each distinct string once per generate() call through the family's text encoder(s) (see
    generation/sd.py); a text's conditioning is a list of tensors (SD: hidden states; SDXL: hidden states and
    pooled text; Flux: T5 states and pooled CLIP text)."""

    def __init__(self, pipe, family=None):
        from .family import generation_family

        self.pipe = pipe
        self.family = family or generation_family(pipe)
        self.cache: dict[str | None, list[torch.Tensor]] = {}

    def encode(self, texts: Iterable[str | None]) -> None:
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t is not ZERO_TEXT and t not in self.cache))
        if ZERO_TEXT in texts and not todo and not self.cache:
            todo = [""]  # zeros take the shapes of an encoding, so encode one
        if todo:
            encoded = self.family.encode(todo)
            for n, text in enumerate(todo):
                self.cache[text] = [part[n] for part in encoded]
        if ZERO_TEXT in texts and ZERO_TEXT not in self.cache:
            self.cache[ZERO_TEXT] = [torch.zeros_like(part) for part in next(iter(self.cache.values()))]

    def stack(self, texts: list[str | None]) -> list[torch.Tensor]:
        """Each conditioning tensor stacked over `texts`, in order."""
        self.encode(texts)
        parts = [self.cache[t] for t in texts]
        return [torch.stack(column) for column in zip(*parts)]
