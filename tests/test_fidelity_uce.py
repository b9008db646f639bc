"""UCE equals its official code, re-derived here independently on a tiny SD-1-shaped pipeline.

"paper": rohitgandikota/unified-concept-editing@bd5fb515392e986758fa3197e382148227db8f25,
train-scripts/train_erase.py (`edit_model` with the script's __main__ settings: bare concepts, guide '' → ' ',
retained [''] + preserved concepts, preserve_scale max(0.1, 1/len(retain)), lamb 0.5, erase_scale 1,
technique 'replace', to_k and to_v).
"current": the same repository @28c81ed5a3e41277c1a0dc55f738e7ab188e9718, trainscripts/uce_sd_erase.py
(`UCE`).

The references below follow those scripts' own procedure: their loop over cross-attention layers (collected as
the scripts collect them), their tokenisation and token slicing, the per-row outer products summed into
mat1/mat2, and W_new = mat1 @ torch.inverse(mat2) — in float64, so that the comparison measures the method,
not float32 rounding. They use neither eraselab's text encoding nor its solve.
"""
import pytest
import torch

import eraselab

TOL = 1e-5


def cross_attention_layers(unet):
    """attn2 of every transformer block, collected the way train_erase.py's edit_model walks the UNet."""
    layers = []
    for child_name, child in unet.named_children():
        if "up" in child_name or "down" in child_name:
            for block in child:
                if "Cross" in block.__class__.__name__:
                    for attn in block.attentions:
                        layers.extend(t.attn2 for t in attn.transformer_blocks)
        if "mid" in child_name:
            for attn in child.attentions:
                layers.extend(t.attn2 for t in attn.transformer_blocks)
    return layers


def projection_names(pipe):
    """Edit names of the official projection list: every to_v, then every to_k."""
    names = {id(m): n for n, m in pipe.unet.named_modules()}
    layers = cross_attention_layers(pipe.unet)
    return [f"unet.{names[id(layer.to_v)]}.weight" for layer in layers] + [
        f"unet.{names[id(layer.to_k)]}.weight" for layer in layers]


def tokenize(pipe, texts):
    return pipe.tokenizer(
        texts,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


@torch.no_grad()
def encode(pipe, texts):
    tok = tokenize(pipe, texts)
    return pipe.text_encoder(tok.input_ids)[0].double(), tok.attention_mask


def outer_sums(values, contexts):
    """Σ_rows v cᵀ and Σ_rows c cᵀ over the token rows. The scripts stack the per-row outer products and sum
    them; written as Vᵀ C and Cᵀ C it is the same sum without the (rows × d × d) intermediate (363 MB
    here)."""
    return values.T @ contexts, contexts.T @ contexts


def paper_edit(pipe, concepts, guides, preserve, lamb=0.5, erase_scale=1.0, preserve_scale=None):
    """train_erase.py: __main__'s text preparation, then edit_model."""
    new_texts = [" " if g == "" else g for g in guides]
    retain_texts = [""] + list(preserve)
    if preserve_scale is None:
        preserve_scale = max(0.1, 1 / len(retain_texts))
    names = projection_names(pipe)
    weights = dict(pipe.unet.named_parameters())
    old = [weights[n[len("unet."):]].detach().double() for n in names]
    # edit_model re-encodes every text inside its layer loop and computes every layer's values, keeping
    # values[layer_num] (still W_old: that layer is replaced after its own solve); the encoder is
    # deterministic, so encoding once and computing only that layer's values gives the same numbers.
    erase_pairs = []
    for old_text, new_text in zip(concepts, new_texts):
        emb, mask = encode(pipe, [old_text, new_text])
        idx, idx_new = int(mask[0].sum()) - 2, int(mask[1].sum()) - 2
        farthest = max(idx, idx_new)
        old_emb = emb[0][idx:len(emb[0]) - max(0, farthest - idx)]
        new_emb = emb[1][idx_new:len(emb[1]) - max(0, farthest - idx_new)]
        erase_pairs.append((old_emb, new_emb))
    retained = []
    for text in retain_texts:
        emb, _ = encode(pipe, [text, text])
        retained.append((emb[0], emb[1]))  # all 77 rows
    return {names[i]: edit_layer(w, erase_pairs, retained, lamb, erase_scale, preserve_scale)
            for i, w in enumerate(old)}


def edit_layer(w, erase_pairs, retained, lamb, erase_scale, preserve_scale):
    """edit_model's solve for one projection W (RECE's erase_methods/uce.py repeats it on the edited weights):
    mat1 = λW + s_e Σ v* cᵀ + s_p Σ W c cᵀ, mat2 = λI + s_e Σ c cᵀ + s_p Σ c cᵀ, W_new = mat1 inverse(mat2),
    with technique 'replace' (v* = W c_guide)."""
    mat1 = lamb * w
    mat2 = lamb * torch.eye(w.shape[1], dtype=torch.float64)
    for old_emb, new_emb in erase_pairs:
        a, b = outer_sums(new_emb @ w.T, old_emb)
        mat1 = mat1 + erase_scale * a
        mat2 = mat2 + erase_scale * b
    for context, new_emb in retained:
        a, b = outer_sums(new_emb @ w.T, context)
        mat1 = mat1 + preserve_scale * a
        mat2 = mat2 + preserve_scale * b
    return mat1 @ torch.inverse(mat2)


def current_edit(pipe, edit_concepts, guide_concepts, preserve_concepts, erase_scale=1.0, preserve_scale=1.0,
                 lamb=0.5):
    """uce_sd_erase.py's UCE: one text vector per concept (its last word token), modules found by name."""
    embeds = {}
    for e in edit_concepts + guide_concepts + preserve_concepts:
        if e in embeds:
            continue
        with torch.no_grad():
            t_emb = pipe.encode_prompt(prompt=e, device="cpu", num_images_per_prompt=1,
                                       do_classifier_free_guidance=False)
        last = int(tokenize(pipe, e)["attention_mask"].sum()) - 2
        embeds[e] = t_emb[0][:, last, :].double()
    modules = [(n, m) for n, m in pipe.unet.named_modules() if "attn2" in n and n.endswith(("to_v", "to_k"))]
    outputs = {g: [m.weight.detach().double() @ embeds[g].T for _, m in modules]
               for g in guide_concepts + preserve_concepts}
    out = {}
    for idx, (name, module) in enumerate(modules):
        w_old = module.weight.detach().double()
        mat1 = lamb * w_old
        mat2 = lamb * torch.eye(w_old.shape[1], dtype=torch.float64)
        for erase_concept, guide_concept in zip(edit_concepts, guide_concepts):
            c_i, v_star = embeds[erase_concept].T, outputs[guide_concept][idx]
            mat1 = mat1 + erase_scale * (v_star @ c_i.T)
            mat2 = mat2 + erase_scale * (c_i @ c_i.T)
        for p in preserve_concepts:
            c_i, v_star = embeds[p].T, outputs[p][idx]
            mat1 = mat1 + preserve_scale * (v_star @ c_i.T)
            mat2 = mat2 + preserve_scale * (c_i @ c_i.T)
        out[f"unet.{name}.weight"] = mat1 @ torch.inverse(mat2)
    return out


def original(pipe):
    return {f"unet.{n}": p.detach().double() for n, p in pipe.unet.named_parameters()}


def worst(edit, reference, pipe) -> tuple[float, float]:
    """Largest relative difference over the edited matrices: of the weights, and of the weight changes ΔW."""
    base = original(pipe)
    assert set(edit.tensors) == set(reference)
    w = max(float((edit.tensors[n].double() - r).norm() / r.norm()) for n, r in reference.items())
    dw = max(
        float((edit.tensors[n].double() - r).norm() / (r - base[n]).norm()) for n, r in reference.items()
    )
    return w, dw


def delta_difference(a: dict, b: dict, pipe) -> float:
    base = original(pipe)
    return max(float((a[n].double() - b[n].double()).norm() / (b[n].double() - base[n]).norm()) for n in b)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0, sd1_shapes=True)


PAPER_CASES = [(["circle"], "", []), (["circle", "red square"], "", ["star", "a blue arrow"]),
               (["circle"], "ellipse", ["star"])]


@pytest.mark.parametrize("targets,guide,preserve", PAPER_CASES)
def test_paper_recipe_equals_train_erase(pipe, targets, guide, preserve):
    edit = eraselab.erase(pipe, "uce", targets, preserve, guide=guide, preset="sd")
    assert edit.extras["recipe"]["name"] == "paper" and len(edit.tensors) == 32
    reference = paper_edit(pipe, targets, [guide] * len(targets), preserve)
    w, dw = worst(edit, reference, pipe)
    print(f"uce paper {targets} → {guide!r}, preserve {preserve}: weights {w:.2e}, ΔW {dw:.2e}")
    assert w <= TOL and dw <= TOL


@pytest.mark.parametrize("targets,guide,preserve", PAPER_CASES)
def test_current_recipe_equals_uce_sd_erase(pipe, targets, guide, preserve):
    edit = eraselab.erase(pipe, "uce", targets, preserve, guide=guide, recipe="current", preset="sd")
    reference = current_edit(pipe, targets, [guide] * len(targets), preserve)
    w, dw = worst(edit, reference, pipe)
    print(f"uce current {targets} → {guide!r}, preserve {preserve}: weights {w:.2e}, ΔW {dw:.2e}")
    assert w <= TOL and dw <= TOL


def test_old_default_and_the_other_recipe_differ_measurably(pipe):
    """The comparison can fail: eraselab's former default (rows last word → end for the preserved concepts
    too, no '' retained, s_p 1) and the "current" recipe are far from train_erase.py's edit."""
    targets, preserve = ["circle"], ["star"]
    reference = paper_edit(pipe, targets, [""], preserve)
    old = eraselab.erase(pipe, "uce", targets, preserve, preset="sd", preserve_tokens="last_to_end",
                         retain_empty=False, preserve_scale=1.0)
    current = eraselab.erase(pipe, "uce", targets, preserve, recipe="current", preset="sd")
    d_old, d_cur = (
        delta_difference(old.tensors, reference, pipe),
        delta_difference(current.tensors, reference, pipe),
    )
    print(f"ΔW vs train_erase.py: old eraselab default {d_old:.3f}, current recipe {d_cur:.3f}")
    assert d_old > 1e3 * TOL and d_cur > 1e3 * TOL


def test_preserve_scale_auto_and_bad_values(pipe):
    from eraselab.errors import EraseLabError

    edit = eraselab.erase(pipe, "uce", ["circle"], ["star", "heart", "arrow"], preset="sd")
    assert edit.extras["preserve_scale"] == 0.25  # max(0.1, 1/len(['', star, heart, arrow]))
    edit = eraselab.erase(
        pipe, "uce", ["circle"], ["star"], recipe="current", preserve_scale="auto", preset="sd"
    )
    assert edit.config["preserve_scale"] == -1.0 and edit.extras["preserve_scale"] == 1.0
    for bad, message in [
        (-0.5, "preserve_scale must be zero or positive, or auto"),
        ("lots", "preserve_scale must be float"),
        ("every", "preserve_tokens must be one of"),
    ]:
        key = "preserve_tokens" if bad == "every" else "preserve_scale"
        with pytest.raises(EraseLabError, match=message):
            eraselab.erase(pipe, "uce", ["circle"], **{key: bad})
