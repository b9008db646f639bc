"""UCE and RECE: the closed form against an independent least-squares solve, its limits, and its
bookkeeping."""

import pytest
import torch

import eraselab
from eraselab.errors import EraseLabError
from eraselab.methods.params import kv_projections
from eraselab.methods.rece import adversarial_embedding
from eraselab.models import compute_fingerprint


def encode_independently(pipe, prompt):
    tok = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(tok.input_ids)[0][0].double()
    return hidden, max(int(tok.attention_mask.sum()) - 2, 0)


def rows_last_to_end(pipe, prompt, guide):
    hp, ip = encode_independently(pipe, prompt)
    hg, ig = encode_independently(pipe, guide)
    n = 77 - max(ip, ig)
    return hp[ip:ip + n], hg[ig:ig + n]


def kv_weights(pipe):
    return {f"unet.{n}": m.weight.detach().double().clone() for n, m in kv_projections(pipe.unet)}


@pytest.mark.parametrize("lam,s_e,s_p", [(0.5, 1.0, 1.0), (0.2, 3.0, 0.4)])
def test_uce_equals_stacked_least_squares(tiny_pipe_factory, lam, s_e, s_p):
    """The default (paper) recipe: erase rows last word → end; retained: '' and each preserved concept, all
    77 rows."""
    pipe = tiny_pipe_factory(0)
    targets, preserve = ["circle", "red square"], ["star", "heart", "a blue arrow"]
    edit = eraselab.erase(pipe, "uce", targets, preserve, lam=lam, erase_scale=s_e, preserve_scale=s_p)
    pairs = [rows_last_to_end(pipe, t, "") for t in targets]
    ce = torch.cat([a for a, _ in pairs])
    cg = torch.cat([g for _, g in pairs])
    cp = torch.cat([encode_independently(pipe, p)[0] for p in ["", *preserve]])
    d = ce.shape[1]
    for name, w_old in kv_weights(pipe).items():
        # min s_e‖W ce − W_old cg‖² + s_p‖W cp − W_old cp‖² + λ‖W − W_old‖²  as one stacked least squares in
        # Wᵀ.
        a = torch.cat([s_e ** 0.5 * ce, s_p ** 0.5 * cp, lam ** 0.5 * torch.eye(d, dtype=torch.float64)])
        b = torch.cat([s_e ** 0.5 * cg @ w_old.T, s_p ** 0.5 * cp @ w_old.T, lam ** 0.5 * w_old.T])
        expected = torch.linalg.lstsq(a, b).solution.T
        got = edit.tensors[name].double()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), name


def test_target_maps_to_guide_as_lambda_vanishes(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    errors = []
    for lam in (1.0, 1e-2, 1e-6):
        # Nothing retained (the paper recipe's '' would compete with the target row in this 32-wide encoder).
        edit = eraselab.erase(pipe, "uce", ["circle"], lam=lam, tokens="last", retain_empty=False)
        hc, ic = encode_independently(pipe, "circle")
        hg, ig = encode_independently(pipe, "")
        worst = 0.0
        for name, w_old in kv_weights(pipe).items():
            got = edit.tensors[name].double() @ hc[ic]
            want = w_old @ hg[ig]
            worst = max(worst, float((got - want).norm() / want.norm()))
        errors.append(worst)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_preserved_outputs_hold_as_preserve_scale_grows(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    preserve = ["star", "heart"]
    changes = []
    for s_p in (0.1, 1.0, 10.0, 1000.0):
        # The preserved concepts' rows last word → end only: their 77-row versions, with '', span the whole
        # 32-wide text space of this pipe and leave the target no room.
        edit = eraselab.erase(
            pipe,
            "uce",
            ["circle"],
            preserve,
            preserve_scale=s_p,
            preserve_tokens="last_to_end",
            retain_empty=False,
        )
        worst = 0.0
        for p in preserve:
            h, i = encode_independently(pipe, p)
            for name, w_old in kv_weights(pipe).items():
                before, after = h[i:] @ w_old.T, h[i:] @ edit.tensors[name].double().T
                worst = max(worst, float((after - before).norm() / before.norm()))
        changes.append(worst)
    assert all(a > b for a, b in zip(changes, changes[1:])), changes
    assert changes[-1] < 1e-2


def test_only_cross_attention_kv_change_and_pipe_is_untouched(tiny_pipe_factory):
    pipe = tiny_pipe_factory(1, sd1_shapes=True)
    fp = compute_fingerprint(pipe)
    edit = eraselab.erase(pipe, "uce", ["circle", "star"], ["square"])
    assert len(edit.tensors) == 32  # SD 1.x: 16 cross-attention blocks × (K, V)
    assert all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in edit.tensors)
    assert compute_fingerprint(pipe) == fp
    assert edit.base_fingerprint == fp and edit.seconds > 0


def test_one_text_encoder_pass_per_distinct_prompt(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    seen = []
    handle = pipe.text_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        eraselab.erase(pipe, "uce", ["circle", "star"], ["square", "heart"], check=True, check_prompts=10)
    finally:
        handle.remove()
    # targets, the guide "" (also the retained ''), preserved concepts and 10 probe words: 15 distinct
    # prompts, each encoded once.
    assert sum(seen) == 2 + 1 + 2 + 10


def test_collapsing_edit_is_refused(tiny_pipe_factory):
    from eraselab.methods.vocabulary import en3k

    pipe = tiny_pipe_factory(0)
    many = list(en3k()[100:400])
    with pytest.raises(EraseLabError, match="collapses outputs"):
        eraselab.erase(pipe, "uce", many, erase_scale=1e4, lam=0.01, tokens="last", check=True)
    edit = eraselab.erase(pipe, "uce", ["circle"], check=True)  # an ordinary edit passes the same check
    assert edit.extras["collapse_check"]["min_diversity"] > 0.2
    # The check is eraselab's own and off in the reference recipes: the same collapsing edit goes through.
    assert (
        "collapse_check"
        not in eraselab.erase(pipe, "uce", many, erase_scale=1e4, lam=0.01, tokens="last").extras
    )


def test_rece_embedding_solves_its_normal_equations():
    g = torch.Generator().manual_seed(0)
    d, lam = 24, 1e-3
    edited = [torch.randn(16, d, generator=g) for _ in range(6)]
    original = [w + 0.3 * torch.randn(16, d, generator=g) for w in edited]
    c = torch.randn(5, d, generator=g)
    c_adv = adversarial_embedding(edited, original, c, lam)
    lhs = sum(w.double().T @ w.double() for w in edited) + lam * torch.eye(d, dtype=torch.float64)
    rhs = sum(wn.double().T @ wo.double() for wn, wo in zip(edited, original))
    assert torch.allclose(lhs @ c_adv.T, rhs @ c.double().T, atol=1e-8)
    # and it is the minimiser: a perturbation raises the objective
    def objective(x):
        return sum(float((x @ wn.double().T - c.double() @ wo.double().T).norm() ** 2)
                   for wn, wo in zip(edited, original)) + lam * float(x.norm() ** 2)

    assert objective(c_adv) < objective(
        c_adv + 1e-3 * torch.randn(c_adv.shape, generator=g, dtype=torch.float64)
    )


def test_rece_edits_further_than_uce(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    uce = eraselab.erase(pipe, "uce", ["circle"], check=False)
    rece = eraselab.erase(pipe, "rece", ["circle"], epochs=2, check=False, select_epoch="last")
    assert set(rece.tensors) == set(uce.tensors)
    assert any(not torch.allclose(rece.tensors[n], uce.tensors[n]) for n in uce.tensors)
    assert len(rece.extras["adversarial_mismatch"]) == 2 and [e["epoch"] for e in rece.extras["epochs"]] == [
        1,
        2,
    ]
    start = eraselab.erase(pipe, "rece", ["circle"], epochs=0)  # epochs=0 is the UCE start
    assert all(torch.equal(start.tensors[n], uce.tensors[n]) for n in uce.tensors)


@pytest.mark.parametrize("key,value,message", [("reedit_tokens", "first", "reedit_tokens must be one of"),
                                               ("reedit_retain", "all", "reedit_retain must be one of"),
                                               ("reedit_lam", 0, "reedit_lam must be positive"),
                                               ("recipe", "paper", "unknown recipe 'paper'")])
def test_rece_bad_config_is_one_line(key, value, message):
    from eraselab.methods import build_request

    with pytest.raises(EraseLabError, match=message):
        build_request("rece", "circle", **{key: value})
