"""AP and AGE: candidate selection, the Gumbel-softmax concept search, and end-to-end runs on a tiny model."""
import pytest
import torch

import eraselab
from eraselab.methods.adversarial import concept_weights, gumbel_softmax, search_step
from eraselab.methods.params import in_group
from eraselab.methods.vocabulary import candidate_concepts, kmeans_1d, select_candidates
from eraselab.models import compute_fingerprint



def test_kmeans_1d_finds_the_cluster_means():
    values = torch.tensor([1.0, 1.2, 0.8, 5.0, 5.4, 9.0, 9.5, 10.0])
    centres = kmeans_1d(values, 3)
    assert torch.allclose(centres, torch.tensor([1.0, 5.2, 9.5], dtype=torch.float64), atol=1e-9)


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


def test_candidates_are_k_closest_then_one_per_distance_cluster():
    dist = {"near1": 1.0, "near2": 1.1, "near3": 1.3, "mid1": 5.0, "mid2": 5.2, "far1": 9.0, "far2": 9.1,
            "far3": 9.6, "beyond1": 50.0, "beyond2": 60.0}
    enc = HandMadeEncoder(dist)
    words = list(dist) + ["target"]
    names, emb, got_dist = candidate_concepts(enc, ["target"], words, k_closest=8, num_centers=3)
    # beyond* are not among the 8 closest; the target itself is excluded; one word nearest each cluster centre.
    assert names == ["near2", "mid1", "far2"]  # centres 1.133, 5.1, 9.233 (ties broken towards the nearer word)
    assert got_dist == pytest.approx([1.1, 5.0, 9.1], abs=1e-5)
    assert torch.equal(emb, enc(names))
    assert select_candidates(torch.tensor([3.0, 1.0, 2.0]), k_closest=2, num_centers=5) == [1, 2]


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
    vocab.write_text("\n".join(["circle", "square", "star", "heart", "dog", "car", "tree", "house"]))
    edit = eraselab.erase(pipe, method, ["circle"], ["moon"], iterations=3, ddim_steps=3, num_centers=4,
                          vocabulary=str(vocab), lr=1e-4, progress=False, **extra)
    candidates = [c["concept"] for c in edit.extras["candidates"]]
    assert "circle" not in candidates and "moon" in candidates and len(candidates) == 5
    assert {c["concept"] for c in edit.extras["adversarial_concepts"]} == set(candidates)
    assert sum(edit.extras["adversarial_picks"].values()) == 3  # one search step per model step
    assert edit.tensors and all(in_group(n.removeprefix("unet."), "x") for n in edit.tensors)
    assert compute_fingerprint(pipe) == fp
    assert len(edit.extras["loss_curve"]) == 3 and len(edit.extras["search_loss_curve"]) == 3
