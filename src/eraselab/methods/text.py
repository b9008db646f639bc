"""Text encoding for the methods: one text-encoder pass per distinct prompt, and the token positions used."""
from __future__ import annotations

import torch


class PromptEncoder:
    """Encodes prompts with the pipeline's tokenizer and text encoder, caching by prompt.

    `passes` counts text-encoder forward passes per prompt, so callers (and tests) can check that no prompt
    is encoded twice.
    """

    def __init__(self, pipe, batch_size: int = 64):
        from .. import edits
        from ..models import fingerprint

        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        # Names the encoder's weights for caches (None while an edit is applied: the weights are not the
        # base's).
        self.model_fingerprint = fingerprint(pipe) if edits.applied_edit(pipe) is None else None
        self.device = pipe.text_encoder.device
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}
        self._lengths: dict[str, int] = {}
        self.passes: dict[str, int] = {}

    def _tokenize(self, prompts: list[str]):
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")

    @torch.no_grad()
    def __call__(self, prompts) -> torch.Tensor:
        """The text encoder's last hidden states for `prompts`: (n, tokens, d), float32 on the encoder's
        device."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            hidden, lengths = self._forward(chunk)
            for j, p in enumerate(chunk):
                self._cache[p] = hidden[j]
                self._lengths[p] = lengths[j]
        return torch.stack([self._cache[p] for p in prompts]) if prompts else torch.empty(0)

    @torch.no_grad()
    def encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        """Like calling the encoder, without keeping the results (for scanning large vocabularies)."""
        out = [
            self._forward(prompts[i : i + self.batch_size])[0]
            for i in range(0, len(prompts), self.batch_size)
        ]
        return torch.cat(out)

    def _forward(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        tokens = self._tokenize(prompts)
        hidden = self.text_encoder(tokens.input_ids.to(self.device))[0].float()
        for p in prompts:
            self.passes[p] = self.passes.get(p, 0) + 1
        return hidden, [int(n) for n in tokens.attention_mask.sum(1)]

    def last_subject_index(self, prompt: str) -> int:
        """Position of the prompt's last word token (just before the end-of-text token; 0 for "")."""
        if prompt not in self._lengths:
            self([prompt])
        return max(self._lengths[prompt] - 2, 0)


class SDXLPromptEncoder(PromptEncoder):
    """SDXL's text conditioning, as StableDiffusionXLPipeline.encode_prompt builds it: each tokenizer/encoder
    pair's penultimate hidden states, concatenated along the features (768 + 1280 = 2048 wide on SDXL base,
    the width of the UNet's cross-attention), and the second encoder's projected pooled output (`pooled`).
    Token positions (`last_subject_index`) count the first tokenizer's tokens, as the official UCE script."""

    def __init__(self, pipe, batch_size: int = 64):
        super().__init__(pipe, batch_size)
        self.tokenizer_2, self.text_encoder_2 = pipe.tokenizer_2, pipe.text_encoder_2
        self._pooled: dict[str, torch.Tensor] = {}

    def _forward(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        hidden = []
        pairs = ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))
        for tokenizer, encoder in pairs:
            tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            out = encoder(tokens.input_ids.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2].float().to(self.device))
            if tokenizer is self.tokenizer:
                lengths = [int(n) for n in tokens.attention_mask.sum(1)]
        for p, pooled in zip(prompts, out[0].float().to(self.device)):
            self._pooled[p] = pooled
            self.passes[p] = self.passes.get(p, 0) + 1
        return torch.cat(hidden, dim=-1), lengths

    def pooled(self, prompts) -> torch.Tensor:
        """The second encoder's projected pooled outputs for `prompts`: (n, projection_dim)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self(prompts)
        return torch.stack([self._pooled[p] for p in prompts])


def prompt_encoder(pipe, batch_size: int = 64) -> PromptEncoder:
    """The text conditioning of the pipeline's UNet: SDXL's two encoders, or the one CLIP encoder of SD."""
    from ..generation.family import family_of

    if family_of(pipe) == "sdxl":
        return SDXLPromptEncoder(pipe, batch_size)
    return PromptEncoder(pipe, batch_size)


# miniworld's captions always name an object as "a circle": its small text encoder (causal, 64-wide) gives the
# bare word a vector far from the one it has in every caption, so methods condition on the caption form there.
MINIWORLD_TEMPLATE = "a {}"


def concept_prompt(pipe, concept: str) -> str:
    """The prompt a method conditions on for `concept`: the bare concept (as the reference code does), or its
    caption form on the embedded miniworld model."""
    from ..models import MINIWORLD, model_source

    return MINIWORLD_TEMPLATE.format(concept) if model_source(pipe) == MINIWORLD else concept

