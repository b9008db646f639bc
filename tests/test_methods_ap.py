"""AP and AGE: candidate selection, the Gumbel-softmax concept search, and end-to-end runs on a tiny model."""
import numpy as np
import pytest
import torch

import eraselab
from eraselab.methods.adversarial import concept_weights, gumbel_softmax, search_step
from eraselab.methods.params import in_group
from eraselab.methods.vocabulary import candidate_concepts, kmeans_pp_1d, special_word
from eraselab.models import compute_fingerprint


def test_kmeans_pp_1d_matches_sklearn():
    """The reference calls sklearn's KMeans(n_clusters, random_state=0); our re-implementation must give the
    same centres in the same order (sklearn ≥ 1.4: n_init 1 for k-means++; 10 = older versions' default)."""
    sklearn = pytest.importorskip("sklearn.cluster")
    for seed, (n, k) in enumerate([(1000, 100), (100, 20), (50, 10), (300, 30)]):
        x = -np.abs(np.random.RandomState(seed).randn(n) * 3 + 20).astype(np.float32).astype(np.float64)
        want = sklearn.KMeans(n_clusters=k, random_state=0, n_init=1).fit(x[:, None]).cluster_centers_[:, 0]
        np.testing.assert_allclose(kmeans_pp_1d(x, k, seed=0, n_init=1), want, rtol=1e-12)


def test_kmeans_pp_1d_finds_separated_clusters():
    values = np.array([1.0, 1.2, 0.8, 5.0, 5.4, 9.0, 9.5, 10.0])
    assert sorted(kmeans_pp_1d(values, 3)) == pytest.approx([1.0, 5.2, 9.5])


class HandMadeEncoder:
    """Stands in for PromptEncoder: fixed (tokens=2, d=3) "encodings" placed at chosen L2 distances."""

    def __init__(self, distances):
        self.table = {"target": torch.zeros(2, 3)}
        for word, dist in distances.items():
            e = torch.zeros(2, 3)
            e[1, 2] = dist  # L2 distance of the full 2×3 output to the target's
            self.table[word] = e

    def __call__(self, words):
        return torch.stack([self.table[w] for w in words])

    def encode_uncached(self, words):
        return self(words)


def test_candidates_are_k_closest_then_one_per_cluster_with_the_target_kept():
    dist = {"nigh": 1.0, "close": 1.1, "next": 1.3, "middle": 5.0, "median": 5.2, "far": 9.0, "distant": 9.1,
            "remote": 9.6, "outer": 50.0, "outermost": 60.0, "two words": 0.5, "x2": 0.7}
    enc = HandMadeEncoder(dist)
    words = list(dist) + ["target"]
    names, emb, got_dist = candidate_concepts(enc, "target", words, k_closest=9, num_centers=4)
    # The target is its own nearest word and stays; "two words" and "x2" hold characters outside a-z (special
    # tokens); outer* are not among the 9 closest; k-means++ (random_state 0) finds the target and three
    # clusters.
    assert names == ["middle", "close", "distant", "target"], names
    assert got_dist[names.index("target")] == pytest.approx(0.0, abs=1e-3)
    assert torch.equal(emb, enc(names))
    # Without special-token filtering the two-word phrase is a candidate; num_centers ≥ k_closest: no k-means.
    names, _, _ = candidate_concepts(enc, "target", words, k_closest=3, num_centers=3, ignore_special=False)
    assert names == ["target", "two words", "x2"]
    names, _, _ = candidate_concepts(enc, "target", words, k_closest=3, num_centers=3, exclude=["target"])
    assert names == ["nigh", "close", "next"]
    assert special_word("two words") and special_word("t-shirt") and not special_word("Dog")


def test_gumbel_softmax_is_one_hot_forward_with_soft_gradients():
    logits = torch.zeros(5, requires_grad=True)
    w = gumbel_softmax(logits, tau=2.0, generator=torch.Generator().manual_seed(0))
    assert sorted(w.detach().tolist()) == [0, 0, 0, 0, 1]
    (w * torch.arange(5.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    mixture = concept_weights(torch.zeros(8), 2.0, "topk", 3, torch.Generator().manual_seed(0))
    assert int((mixture > 0).sum()) == 3 and float(mixture.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["hard", "topk"])
def test_search_moves_towards_the_most_damaged_candidate(mode):
    embeddings = torch.eye(4).unsqueeze(1)  # 4 candidates, 1 token, d = 4
    damage = torch.tensor([1.0, 5.0, 2.0, 0.5])  # candidate 1 has the largest preservation loss

    def preservation_loss(c):
        return (damage * c[0] ** 2).sum()

    logits = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        weights = concept_weights(logits, 2.0, mode, 2, g)
        search_step(logits, opt, embeddings, preservation_loss, weights)
    p = torch.softmax(logits.detach(), 0)
    assert int(p.argmax()) == 1 and float(p[1]) > 0.5, p


@pytest.mark.parametrize("method,extra", [("ap", {}), ("age", {"mode": "topk", "top_k": 2})])
def test_end_to_end_on_a_tiny_model(tiny_pipe_factory, tmp_path, method, extra):
    pipe = tiny_pipe_factory(0)
    fp = compute_fingerprint(pipe)
    vocab = tmp_path / "words.txt"
    vocab.write_text("circle\nsquare\nstar\nheart\ndog\ncar\ntree\nhouse")
    edit = eraselab.erase(pipe, method, ["circle"], ["moon"], iterations=3, ddim_steps=3, num_centers=4,
                          vocabulary=str(vocab), lr=1e-4, progress=False, **extra)
    candidates = [c["concept"] for c in edit.extras["candidates"]]
    # The reference keeps the target among its own candidates; `preserve` concepts are added.
    assert "circle" in candidates and "moon" in candidates and len(candidates) == 5
    assert {c["target"] for c in edit.extras["candidates"]} == {"circle"}
    assert {c["concept"] for c in edit.extras["adversarial_concepts"]} == set(candidates)
    assert sum(edit.extras["adversarial_picks"].values()) == 3  # one search step per model step
    assert edit.tensors and all(in_group(n.removeprefix("unet."), "x") for n in edit.tensors)
    assert compute_fingerprint(pipe) == fp
    assert len(edit.extras["loss_curve"]) == 3 and len(edit.extras["search_loss_curve"]) == 3


def test_a_second_search_on_the_same_model_reads_the_vocabulary_encodings_from_the_cache(
    tiny_pipe_factory, monkeypatch, tmp_path
):
    from eraselab.methods.text import PromptEncoder
    from eraselab.methods.vocabulary import candidate_concepts, en3k

    monkeypatch.setenv("ERASELAB_CACHE", str(tmp_path))
    pipe = tiny_pipe_factory(0)
    words = list(en3k()[:300])
    encoded = []
    real = PromptEncoder.encode_uncached

    def counting(self, prompts):
        encoded.extend(prompts)
        return real(self, prompts)

    monkeypatch.setattr(PromptEncoder, "encode_uncached", counting)
    first = candidate_concepts(PromptEncoder(pipe), "circle", words, 40, 8)
    assert len(encoded) == len(words)
    second = candidate_concepts(PromptEncoder(pipe), "circle", words, 40, 8)
    assert len(encoded) == len(words)  # nothing encoded again
    assert first[0] == second[0] and torch.equal(first[1], second[1]) and first[2] == second[2]
    assert len(list((tmp_path / "encodings").glob("*.npy"))) == 1
    other = candidate_concepts(PromptEncoder(tiny_pipe_factory(1)), "circle", words, 40, 8)  # another model
    assert len(encoded) == 2 * len(words) and other[2] != first[2]
