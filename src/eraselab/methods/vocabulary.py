"""Candidate concepts for AP and AGE's adversarial search: vocabularies, and the k-closest + 1-D k-means
choice of candidates that span the whole range of similarity to the target.

The reference procedure
(tuananhbui89/Erasing-Adversarial-Preservation@7222925bc31348c00ed0896eb3148acf2d669d7d,
gen_embedding_matrix.py: search_closest_tokens, learn_k_means_from_input_embedding, my_kmean): per target,
rank the vocabulary by −‖E(word) − E(target) + 10⁻⁶‖ (torch's pairwise_distance) over the flattened encoder
outputs, optionally skip words with characters outside a–z (its ignore_special_tokens), keep the k closest
(the target included when it is in the vocabulary), run sklearn's KMeans(n_clusters, random_state=0) on those
similarities unless there are no more words than centres, and take, centre by centre, the first word nearest
each centre. `kmeans_pp_1d` re-implements that sklearn call (k-means++ seeding with numpy's RandomState, Lloyd
iterations) so no sklearn is needed."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from ..domain import Domain, domain_for_model, get_domain
from ..errors import EraseLabError
from ..models import package_path
from .encoding_cache import vocabulary_encodings

VOCABULARIES = ("auto", "concepts", "en3k", "clip", "imagenet", "miniworld")


@cache
def en3k() -> tuple[str, ...]:
    """The shipped list of 3,000 frequent English content words (scripts/make_en3k.py)."""
    lines = package_path("data/en3k.txt").read_text().splitlines()
    return tuple(w for w in lines if w and not w.startswith("#"))


def clip_tokens(pipe) -> list[str]:
    """Whole-word entries of the CLIP BPE vocabulary (tokens ending a word, alphabetic)."""
    vocab = pipe.tokenizer.get_vocab()
    return sorted({t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isalpha()})


def imagenet_classes() -> list[str]:
    import json

    path = package_path("evaluators/data/imagenet1k_classes.json")
    if not path.exists():
        raise EraseLabError(
            "the ImageNet class list is not in this install; use vocabulary=en3k or a word file"
        )
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("classes"), list):
        return [c["clean"] for c in data["classes"]]
    names = data if isinstance(data, list) else list(data.values())
    return [n if isinstance(n, str) else n[0] for n in names]


def default_vocabulary(pipe, domain: Domain | None = None) -> list[str]:
    """The vocabulary of the domain (by default the model's): miniworld's own words, en3k on real models."""
    return load_vocabulary("auto", pipe, domain)


def load_vocabulary(name: str, pipe, domain: Domain | None = None) -> list[str]:
    """`name`: auto (the domain's default: miniworld's own words on miniworld, en3k on real models),
    concepts (the domain's concept names and synonyms), en3k, clip, imagenet, miniworld (miniworld's words),
    or a path to a text file with one word or phrase per line. `domain`: None = the model's."""
    if name in ("auto", "concepts"):
        domain = domain if domain is not None else domain_for_model(pipe)
        if name == "auto":
            name = domain.vocabulary
        if name == "concepts":
            return domain.concept_words()
    if name == "en3k":
        return list(en3k())
    if name == "clip":
        return clip_tokens(pipe)
    if name == "imagenet":
        return imagenet_classes()
    if name == "miniworld":
        return get_domain("miniworld").concept_words()
    path = Path(name).expanduser()
    if not path.is_file():
        raise EraseLabError(
            f"vocabulary {name!r} is neither one of {', '.join(VOCABULARIES)} nor a file; pass a "
            "text file with one concept per line"
        )
    words = [w.strip() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#")]
    if not words:
        raise EraseLabError(f"vocabulary file {path} has no words; put one concept per line")
    return words


# Vocabularies whose encodings fit in this are cached on disk (3,000 words on SD 1.x: 0.7 GB).
MAX_CACHED_BYTES = 2 * 2 ** 30


def candidate_concepts(
    encoder,
    target: str,
    words,
    k_closest: int,
    num_centers: int,
    ignore_special: bool = True,
    kmeans_runs: int = 1,
    exclude=(),
):
    """(candidate words, their encodings (n, tokens, d), their L2 distances) for one target, chosen as the
    reference does (`reference_candidates`); words in `exclude` (case-insensitive) are left out first."""
    low = {w.lower() for w in exclude}
    words = [w for w in dict.fromkeys(words) if w.lower() not in low]
    if ignore_special and not any(not special_word(w) for w in words):
        raise EraseLabError(
            "no vocabulary word is made of the letters a-z only; set ignore_special_tokens=false "
            "or pass another vocabulary"
        )
    if not words:
        raise EraseLabError("the vocabulary has no word besides the targets; pass another vocabulary")
    target_h = encoder([target])[0]
    sims = torch.empty(len(words))
    chunk = 256
    if len(words) * target_h.numel() * 4 <= MAX_CACHED_BYTES:
        # Cached on disk by model and word list: a second erase on the same model skips the encoding.
        every = vocabulary_encodings(encoder, words, getattr(encoder, "model_fingerprint", None), chunk)
        for i in range(0, len(words), chunk):
            sims[i:i + chunk] = reference_similarities(target_h, every[i:i + chunk].to(target_h.device)).cpu()
    else:
        # Chunks keep memory flat for the 49k-token CLIP vocabulary (~12 GB of encodings on SD, not cached).
        for i in range(0, len(words), chunk):
            h = encoder.encode_uncached(words[i:i + chunk])
            sims[i:i + chunk] = reference_similarities(target_h, h).cpu()
    picked = reference_candidates(sims, words, k_closest, num_centers, ignore_special, kmeans_runs)
    chosen = [words[i] for i in picked]
    return chosen, encoder(chosen), [-float(sims[i]) for i in picked]


# ---- the reference selection: k-closest by similarity, sklearn-style k-means++ -----------------------------


def special_word(word: str) -> bool:
    """True for a word the reference's ignore_special_tokens skips: any character outside a–z, '<', '/', '>'
    after lower-casing (spaces and hyphens included)."""
    return any(ch not in "abcdefghijklmnopqrstuvwxyz</>" for ch in word.lower())


def reference_similarities(target_h: torch.Tensor, words_h: torch.Tensor) -> torch.Tensor:
    """−‖w − t + 10⁻⁶‖₂ over flattened encodings, as torch.nn.functional.pairwise_distance computes it."""
    diff = words_h.flatten(1) - target_h.flatten().unsqueeze(0) + 1e-6
    return -diff.norm(dim=1)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances of 1-D points the way sklearn's _euclidean_distances forms them (−2ab + a² + b², ≥
    0), so that k-means++ draws the same candidates."""
    d = -2.0 * np.outer(a, b)
    d += (a * a)[:, None]
    d += (b * b)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    n = len(x)
    trials = 2 + int(np.log(k))
    weights = np.ones(n)
    first = rng.choice(n, p=weights / weights.sum())
    centres = [x[first]]
    closest = _sq_dist(x[first:first + 1], x)[0]
    potential = closest.sum()
    for _ in range(1, k):
        draws = rng.uniform(size=trials) * potential
        ids = np.searchsorted(np.cumsum(closest, dtype=np.float64), draws)
        ids = np.minimum(ids, n - 1)
        cand = np.minimum(closest[None, :], _sq_dist(x[ids], x))
        pots = cand.sum(1)
        best = int(np.argmin(pots))
        potential, closest = pots[best], cand[best]
        centres.append(x[ids[best]])
    return np.array(centres, dtype=np.float64)


def _lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's _kmeans_single_lloyd on 1-D data: assign by argmin(c² − 2xc), move centres to their means
    (empty clusters take the points farthest from their centres), stop when labels repeat or the squared
    centre shift is ≤ tol; a final assignment when it stopped on tol."""
    k = len(centres)
    labels_old = np.full(len(x), -1)

    def assign(c):
        return np.argmin((c * c)[None, :] - 2.0 * np.outer(x, c), axis=1)

    converged = False
    for _ in range(max_iter):
        labels = assign(centres)
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        sums = np.bincount(labels, weights=x, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            far = np.argsort(-(x - centres[labels]) ** 2, kind="stable")[:len(empty)]
            for j, i in zip(empty, far):
                sums[labels[i]] -= x[i]
                counts[labels[i]] -= 1
                sums[j], counts[j] = x[i], 1.0
        new = np.where(counts > 0, sums / np.maximum(counts, 1.0), centres)
        shift = ((new - centres) ** 2).sum()
        centres = new
        if np.array_equal(labels, labels_old):
            converged = True
            break
        if shift <= tol:
            break
        labels_old = labels
    if not converged:
        labels = assign(centres)
    return centres, labels


def kmeans_pp_1d(values, k: int, seed: int = 0, n_init: int = 1, max_iter: int = 300,
                 tol: float = 1e-4) -> np.ndarray:
    """sklearn.cluster.KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit(values[:, None])
    .cluster_centers_[:, 0] for 1-D float64 data (default init k-means++, Lloyd, tol relative to the variance;
    n_init=1 is sklearn ≥ 1.4's "auto" for k-means++, 10 that of older versions). Centres in sklearn's
    order."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if k > len(x):
        raise EraseLabError(f"k-means needs at least {k} values, got {len(x)}; lower num_centers")
    mean = x.mean()
    x = x - mean
    tol = float(np.var(x)) * tol
    rng = np.random.RandomState(seed)
    best, best_inertia, best_labels = None, None, None
    for _ in range(n_init):
        centres, labels = _lloyd(x, _kmeans_pp_init(x, k, rng), max_iter, tol)
        inertia = float(((x - centres[labels]) ** 2).sum())
        # sklearn keeps the earlier run when a later one is the same partition with relabelled clusters.
        if best is None or (inertia < best_inertia and not _same_partition(labels, best_labels, k)):
            best, best_inertia, best_labels = centres, inertia, labels
    return best + mean


def _same_partition(a: np.ndarray, b: np.ndarray, k: int) -> bool:
    mapping = np.full(k, -1)
    for i, j in zip(a, b):
        if mapping[i] == -1:
            mapping[i] = j
        elif mapping[i] != j:
            return False
    return True


def reference_candidates(sims: torch.Tensor, words: list[str], k_closest: int, num_centers: int,
                         ignore_special: bool, n_init: int = 1) -> list[int]:
    """Indices into `words` of the reference's candidate set for one target, in its order: the k_closest most
    similar (ties in torch.sort's order), then — when there are more of them than num_centers > 0 — for each
    k-means centre (sklearn order) the first of them nearest the centre; duplicates keep their first place."""
    order = torch.sort(sims, descending=True).indices.tolist()
    if ignore_special:
        order = [i for i in order if not special_word(words[i])]
    close = order[:k_closest]
    if num_centers <= 0 or len(close) <= num_centers:
        return close
    values = [float(sims[i]) for i in close]
    picked: dict[int, None] = {}
    for centre in kmeans_pp_1d(values, num_centers, seed=0, n_init=n_init):
        best, best_value = None, -float("inf")
        for i, v in zip(close, values):
            if abs(v - centre) < abs(best_value - centre):
                best, best_value = i, v
        picked[best] = None
    return list(picked)
