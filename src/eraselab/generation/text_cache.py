"""Text embeddings for one generate() request: each distinct string encoded once, in fixed lanes."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from .lanes import TEXT_LANE, in_lanes


class TextEmbeddings:
    """Encodes each distinct string once per generate() call, in fixed lanes, the way diffusers' encode_prompt
    does for SD 1.x/2.x (max-length padding, truncation, last hidden state)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.cache: dict[str, torch.Tensor] = {}
        config = pipe.text_encoder.config
        self.use_mask = bool(getattr(config, "use_attention_mask", False))

    def encode(self, texts: Iterable[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if not todo:
            return
        tok = self.pipe.tokenizer(todo, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")
        device = self.pipe.text_encoder.device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)

        def run(ids_chunk, mask_chunk):
            return self.pipe.text_encoder(ids_chunk, attention_mask=mask_chunk if self.use_mask else None)[0]

        embeds = in_lanes(run, [ids, mask], TEXT_LANE).to(self.pipe.text_encoder.dtype)
        for text, e in zip(todo, embeds):
            self.cache[text] = e

    def stack(self, texts: list[str]) -> torch.Tensor:
        self.encode(texts)
        return torch.stack([self.cache[t] for t in texts])
