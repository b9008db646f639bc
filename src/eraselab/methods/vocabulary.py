"""Candidate concepts for AP and AGE's adversarial search: vocabularies, and the k-closest + 1-D k-means choice
of candidates that span the whole range of similarity to the target."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from ..errors import EraseLabError
from ..models import MINIWORLD, model_source, package_path

VOCABULARIES = ("auto", "en3k", "clip", "imagenet", "miniworld")


@cache
def en3k() -> tuple[str, ...]:
    """The shipped list of 3,000 frequent English content words (scripts/make_en3k.py)."""
    lines = package_path("data/en3k.txt").read_text().splitlines()
    return tuple(w for w in lines if w and not w.startswith("#"))


def miniworld_words() -> list[str]:
    """Every concept name of the embedded world and its synonyms."""
    from ..miniworld.world import WORLD

    return list(dict.fromkeys(n for c in WORLD.concepts for n in WORLD.names(c)))


def clip_tokens(pipe) -> list[str]:
    """Whole-word entries of the CLIP BPE vocabulary (tokens ending a word, alphabetic)."""
    vocab = pipe.tokenizer.get_vocab()
    return sorted({t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isalpha()})


def imagenet_classes() -> list[str]:
    import json

    path = package_path("evaluators/data/imagenet1k_classes.json")
    if not path.exists():
        raise EraseLabError("the ImageNet class list is not in this install; use vocabulary=en3k or a word file")
    data = json.loads(path.read_text())
    names = data if isinstance(data, list) else list(data.values())
    return [n if isinstance(n, str) else n[0] for n in names]


def default_vocabulary(pipe) -> list[str]:
    return miniworld_words() if is_miniworld(pipe) else list(en3k())


def is_miniworld(pipe) -> bool:
    return model_source(pipe) == MINIWORLD


def load_vocabulary(name: str, pipe) -> list[str]:
    """`name`: auto (the miniworld's own words for miniworld, else en3k), en3k, clip, imagenet, miniworld, or a
    path to a text file with one word or phrase per line."""
    if name == "auto":
        return default_vocabulary(pipe)
    if name == "en3k":
        return list(en3k())
    if name == "clip":
        return clip_tokens(pipe)
    if name == "imagenet":
        return imagenet_classes()
    if name == "miniworld":
        return miniworld_words()
    path = Path(name).expanduser()
    if not path.is_file():
        raise EraseLabError(f"vocabulary {name!r} is neither one of {', '.join(VOCABULARIES)} nor a file; pass a "
                            "text file with one concept per line")
    words = [w.strip() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#")]
    if not words:
        raise EraseLabError(f"vocabulary file {path} has no words; put one concept per line")
    return words


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 100) -> torch.Tensor:
    """Lloyd's k-means on scalars, initialised at evenly spaced quantiles (deterministic). Returns the sorted
    centres (at most k: duplicates merge)."""
    v = values.double().flatten()
    k = min(k, v.numel())
    centres = torch.quantile(v, torch.linspace(0, 1, k, dtype=torch.float64)).unique()
    for _ in range(iterations):
        assign = (v[:, None] - centres[None, :]).abs().argmin(1)
        moved = torch.stack([v[assign == j].mean() if (assign == j).any() else centres[j]
                             for j in range(len(centres))])
        if torch.allclose(moved, centres):
            break
        centres = moved
    return centres.sort().values


def select_candidates(distances: torch.Tensor, k_closest: int, num_centers: int) -> list[int]:
    """Indices of candidate concepts: among the k_closest smallest distances, the one nearest each 1-D
    k-means centre of those distances (so candidates range from near-synonyms to far concepts)."""
    order = distances.argsort()[:k_closest]
    close = distances[order].double()
    chosen = []
    for c in kmeans_1d(close, num_centers):
        idx = int(order[(close - c).abs().argmin()])
        if idx not in chosen:
            chosen.append(idx)
    return chosen


def candidate_concepts(encoder, targets, words, k_closest: int, num_centers: int, exclude=()):
    """(candidate words, their encodings (n, tokens, d)). Distance of a word = min over targets of the L2
    distance between the full token×d encoder outputs."""
    low = {w.lower() for w in (*targets, *exclude)}
    words = [w for w in dict.fromkeys(words) if w.lower() not in low]
    if not words:
        raise EraseLabError("the vocabulary has no word besides the targets; pass another vocabulary")
    target_h = encoder(list(targets)).flatten(1)
    dist = torch.full((len(words),), float("inf"))
    # Chunks keep memory flat for the 49k-token CLIP vocabulary; encodings are recomputed for the winners only.
    chunk = 256
    for i in range(0, len(words), chunk):
        h = encoder.encode_uncached(words[i:i + chunk]).flatten(1)
        dist[i:i + chunk] = torch.cdist(h, target_h).min(1).values.cpu()
    picked = select_candidates(dist, k_closest, num_centers)
    chosen = [words[i] for i in picked]
    return chosen, encoder(chosen), [float(dist[i]) for i in picked]
