"""Probe: one image to generate (prompt, seed, sampler settings) plus what it is meant to show and measure."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import EraseLabError
from .provenance import sha256_hex, stable_json

SAMPLERS = ("ddim", "pndm", "euler", "euler_a", "dpm++", "ddpm", "lms")
# CLIP reads 77 tokens (a few hundred characters); far longer text is a mistake (a pasted file), and
# tokenizing megabytes takes minutes before the text encoder would cut it off anyway.
MAX_PROMPT_CHARS = 10_000


# What decides an image's pixels (labels such as concepts or aspect do not).
GENERATION_FIELDS = ("prompt", "seed", "negative_prompt", "steps", "guidance", "height", "width", "sampler")


@dataclass(frozen=True)
class Probe:
    """One seeded generation request and its labels.

    The generation fields (prompt … sampler) decide the pixels; the label fields (concepts, aspect, relation,
    suite, attributes) only say what the image is expected to show, so they are left out of the cache key.
    `height`/`width` of 0 mean "the model's default size".
    """

    prompt: str
    seed: int = 0
    negative_prompt: str = ""
    steps: int = 25
    guidance: float = 7.5
    height: int = 0
    width: int = 0
    sampler: str = "ddim"
    # labels
    concepts: tuple[str, ...] = ()
    aspect: str = ""
    relation: str = ""
    suite: str = ""
    attributes: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise EraseLabError("a probe has an empty prompt; give every probe a non-empty prompt")
        for name, text in (("prompt", self.prompt), ("negative prompt", self.negative_prompt)):
            if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
                raise EraseLabError(f"a {name} is {len(text)} characters long; prompts are at most "
                                    f"{MAX_PROMPT_CHARS} characters (CLIP reads 77 tokens), shorten it")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise EraseLabError(f"steps must be a positive integer, got {self.steps!r}; pass e.g. --steps 25")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise EraseLabError(
                f"guidance must be a finite number >= 0, got {self.guidance}; pass e.g. --guidance 7.5"
            )
        if self.sampler not in SAMPLERS:
            raise EraseLabError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.height < 0 or self.width < 0 or self.height % 8 or self.width % 8:
            raise EraseLabError(f"image size {self.height}x{self.width} must be multiples of 8 (0 = default)")

    def generation_fields(self) -> dict:
        return dict(zip(GENERATION_FIELDS, self.generation_values()))

    def generation_values(self) -> tuple:
        """The values of GENERATION_FIELDS, in order: cheap (no asdict), for grouping thousands of probes."""
        return tuple(getattr(self, name) for name in GENERATION_FIELDS)

    def generation_key(self) -> str:
        """Hash of what decides the pixels (independent of labels)."""
        return sha256_hex(stable_json(self.generation_fields()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        d["attributes"] = [list(a) for a in self.attributes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Probe":
        d = dict(d)
        d["concepts"] = tuple(d.get("concepts", ()))
        d["attributes"] = tuple(tuple(a) for a in d.get("attributes", ()))
        return cls(**d)
