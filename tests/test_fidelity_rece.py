"""RECE equals its official code, re-derived here independently on a tiny SD-1-shaped pipeline.

CharlesGong12/RECE@403a67fd86dce6c124b88798340e001e625b28c9: train.py (recipe "nudity", with
scripts/nudity.sh's settings: close_regzero, regular_scale 0.1, lamb 0.1, preserve_scale 0.1, erase_scale 1)
and train_object.py (recipe "object": retains [''] + preserved concepts, regular_scale 1e-3), each epoch
computing the adversarial embedding with utils/embedding_calculation/close_form_emb.py
`close_form_emb_regzero` and re-editing with erase_methods/uce.py `edit_model_adversarial`. The start is the
UCE checkpoint train_erase.py writes (float32), re-derived by tests/test_fidelity_uce.py's `paper_edit`.

The references follow the scripts' procedure in float64 (their layer lists, their mat1/mat2, torch.inverse).
The epoch selection by a detector on generated images is not part of the closed form: these tests take the
epoch asked for (`select_epoch=last`); tests/test_rece_validation.py checks the selection rules and that
`erase` keeps exactly the epoch they pick.
"""
import pytest
import torch
from test_fidelity_uce import TOL, delta_difference, edit_layer, encode, paper_edit, projection_names, worst

import eraselab


def close_form_emb_regzero(current, base, names, concept_embedding, regular_scale):
    """c′ = concept_embedding @ (inverse(λ_c I + Σ W′ᵀW′) Σ W′ᵀW)ᵀ over every to_v and to_k."""
    d = concept_embedding.shape[1]
    mat1 = torch.eye(d, dtype=torch.float64) * regular_scale
    mat2 = torch.zeros(d, d, dtype=torch.float64)
    for n in names:
        mat1 = mat1 + current[n].T @ current[n]
        mat2 = mat2 + current[n].T @ base[n]
    coefficient = torch.inverse(mat1) @ mat2
    return concept_embedding @ coefficient.T


def edit_model_adversarial(current, names, old_embeddings, new_embeddings, retained, lamb, erase_scale,
                           preserve_scale):
    """One re-edit of the current weights: the adversarial rows onto the guide rows, the retained texts kept
    (values from the current, not yet replaced layer)."""
    pairs = list(zip(old_embeddings, new_embeddings))
    return {n: edit_layer(current[n], pairs, retained, lamb, erase_scale, preserve_scale) for n in names}


def official_rece(pipe, concepts, guide, preserve, epochs, script="train.py"):
    """The UCE checkpoint, then `epochs` epochs of train.py / train_object.py; returns every epoch's
    weights."""
    names = projection_names(pipe)
    params = dict(pipe.unet.named_parameters())
    base = {n: params[n[len("unet."):]].detach().double() for n in names}
    uce = paper_edit(pipe, concepts, [guide] * len(concepts), preserve)
    current = {n: w.float().double() for n, w in uce.items()}  # the checkpoint is saved in float32
    if script == "train.py":
        retain_texts, regular_scale = [" " for _ in concepts], 0.1
    else:
        retain_texts, regular_scale = [""] + list(preserve), 1e-3
    new_texts = [" " if guide == "" else guide for _ in concepts]
    retained = []
    for text in retain_texts:
        emb, _ = encode(pipe, [text, text])
        retained.append((emb[0], emb[1]))
    history = []
    for _ in range(epochs):
        adv_list, new_list = [], []
        for concept, new_text in zip(concepts, new_texts):
            new_list.append(encode(pipe, [new_text])[0][0])  # all 77 rows of the guide
            concept_embedding = encode(pipe, [concept])[0][0]
            adv_list.append(close_form_emb_regzero(current, base, names, concept_embedding, regular_scale))
        current = edit_model_adversarial(
            current, names, adv_list, new_list, retained, lamb=0.1, erase_scale=1.0, preserve_scale=0.1
        )
        history.append(current)
    return history


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0, sd1_shapes=True)


@pytest.fixture(scope="module")
def object_reference(pipe):
    return official_rece(pipe, ["circle"], "", ["star"], epochs=1, script="train_object.py")[0]


def test_nudity_recipe_equals_train_py_after_one_and_two_epochs(pipe):
    reference = official_rece(pipe, ["circle"], "", [], epochs=2)
    for k in (1, 2):
        edit = eraselab.erase(pipe, "rece", ["circle"], epochs=k, preset="sd", select_epoch="last")
        assert edit.extras["recipe"]["name"] == "nudity" and len(edit.extras["epochs"]) == k
        w, dw = worst(edit, reference[k - 1], pipe)
        print(f"rece nudity, epoch {k}: weights {w:.2e}, ΔW {dw:.2e}")
        assert w <= TOL and dw <= TOL


def test_nudity_recipe_with_two_targets_and_a_guide(pipe):
    """' ' retained once per target; the adversarial rows map onto the guide's rows position by position."""
    targets = ["circle", "red square"]
    reference = official_rece(pipe, targets, "ellipse", [], epochs=1)
    edit = eraselab.erase(pipe, "rece", targets, guide="ellipse", epochs=1, preset="sd", select_epoch="last")
    w, dw = worst(edit, reference[0], pipe)
    print(f"rece nudity, two targets → 'ellipse': weights {w:.2e}, ΔW {dw:.2e}")
    assert w <= TOL and dw <= TOL


def test_object_recipe_equals_train_object_py(pipe, object_reference):
    edit = eraselab.erase(pipe, "rece", ["circle"], ["star"], recipe="object", preset="sd",
                          select_epoch="last")
    w, dw = worst(edit, object_reference, pipe)
    print(f"rece object, preserve star: weights {w:.2e}, ΔW {dw:.2e}")
    assert w <= TOL and dw <= TOL


def test_old_default_differs_measurably(pipe, object_reference):
    """eraselab's former RECE (target rows kept in every re-edit, UCE's λ 0.5 / s_p 1, last-word rows, λ_c
    1e-3, no '' retained) is far from the official edit, so the comparisons above can fail."""
    old = eraselab.erase(
        pipe,
        "rece",
        ["circle"],
        ["star"],
        preset="sd",
        epochs=1,
        embedding_lam=1e-3,
        preserve_tokens="last_to_end",
        retain_empty=False,
        preserve_scale=1.0,
        reedit_lam=0.5,
        reedit_preserve_scale=1.0,
        reedit_tokens="last_to_end",
        reedit_retain="same_as_uce",
        keep_targets=True,
        select_epoch="last",
    )
    difference = delta_difference(old.tensors, object_reference, pipe)
    print(f"ΔW of the old default vs train_object.py: {difference:.3f}")
    assert difference > 1e3 * TOL

