"""Cross-attention capture on a tiny random pipeline, and the concentration metrics on hand-made maps."""
import math

import numpy as np
import pytest
import torch

from eraselab.attention import (
    AttentionRecorder,
    attention_metrics,
    compare_attention,
    load_maps,
    save_heatmaps,
    token_positions,
)
from eraselab.errors import EraseLabError
from eraselab.models import clip_tokenizer
from eraselab.probes import Probe


@pytest.fixture
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0)


def _encode(pipe, prompts):
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(tok.input_ids)[0]


def _denoise(pipe, cond_prompts, uncond_prompts=None, steps=3, layout="2B", seed=0, hw=(8, 8)):
    """A minimal CFG loop: the UNet sees [uncond × B, cond × B (, extra × B)] stacked, as the engine does."""
    b = len(cond_prompts)
    cond = _encode(pipe, cond_prompts)
    uncond = _encode(pipe, uncond_prompts or [""] * b)
    ctx = {"1B": cond, "2B": torch.cat([uncond, cond]), "3B": torch.cat([uncond, cond, uncond])}[layout]
    reps = {"1B": 1, "2B": 2, "3B": 3}[layout]
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, 4, *hw, generator=g)
    pipe.scheduler.set_timesteps(steps)
    outs = []
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            eps = pipe.unet(torch.cat([latents] * reps), t, encoder_hidden_states=ctx).sample
            outs.append(eps)
            if reps == 1:
                e = eps
            else:
                e_u, e_c = eps[:b], eps[b:2 * b]
                e = e_u + 7.5 * (e_c - e_u)
            latents = pipe.scheduler.step(e, t, latents).prev_sample
    return latents, outs


def test_token_positions_single_multi_and_absent():
    tok = clip_tokenizer()
    assert token_positions(tok, "a red car and a blue bus", "car") == [3]
    assert token_positions(tok, "a red car and a blue bus", "blue bus") == [6, 7]
    assert token_positions(tok, "a car next to a car", "car") == [2, 6]
    odd = token_positions(tok, "a photo of a quokkaroozle", "quokkaroozle")
    assert len(odd) > 1 and odd == list(range(odd[0], odd[0] + len(odd)))  # several BPE pieces, contiguous
    assert token_positions(tok, "a red car", "bus") == []


def test_metrics_on_hand_made_maps():
    n = 16
    uniform = attention_metrics(np.full((n, n), 0.25))
    assert uniform["normalized_entropy"] == pytest.approx(1.0)
    assert uniform["entropy"] == pytest.approx(math.log(n * n))
    assert uniform["top5_mass"] == pytest.approx(math.ceil(0.05 * n * n) / (n * n))
    assert uniform["spread"] == pytest.approx(math.sqrt((n * n - 1) / (6 * n * n)))
    assert uniform["mass"] == pytest.approx(0.25)
    one = np.zeros((n, n))
    one[3, 5] = 0.8
    peak = attention_metrics(one)
    assert peak["entropy"] == 0 and peak["normalized_entropy"] == 0
    assert peak["top5_mass"] == pytest.approx(1.0) and peak["spread"] == 0
    two = np.zeros((4, 4))
    two[0, 0] = two[0, 3] = 1.0  # two pixels 3/4 apart horizontally: spread = 3/8, entropy = log 2
    m = attention_metrics(two)
    assert m["spread"] == pytest.approx(3 / 8) and m["entropy"] == pytest.approx(math.log(2))
    with pytest.raises(EraseLabError):
        attention_metrics(np.zeros((4, 4)))

    assert compare_attention(peak, uniform)["verdict"] == "dispersed"
    assert compare_attention(uniform, peak)["verdict"] == "concentrated"
    assert compare_attention(uniform, uniform)["verdict"] == "unchanged"
    assert compare_attention(peak, uniform)["delta"]["normalized_entropy"] == pytest.approx(1.0)


def test_recorder_does_not_change_outputs_and_restores_processors(pipe):
    prompts = ["a red car and a blue bus", "a photo of a car"]
    originals = dict(pipe.unet.attn_processors)
    ref_latents, ref_eps = _denoise(pipe, prompts, steps=2)
    rec = AttentionRecorder(words=["car", "bus"])
    probes = [Probe(p) for p in prompts]
    rec.on_batch_start(pipe, probes)
    assert any(type(p).__name__ == "_RecordingProcessor" for p in pipe.unet.attn_processors.values())
    latents, eps = _denoise(pipe, prompts, steps=2)
    rec.on_batch_end(probes, ["k0", "k1"])
    assert torch.equal(latents, ref_latents) and all(torch.equal(a, b) for a, b in zip(eps, ref_eps))
    assert dict(pipe.unet.attn_processors) == originals  # the very same processor objects
    again, _ = _denoise(pipe, prompts, steps=2)
    assert torch.equal(again, ref_latents)
    assert set(rec.maps["k0"]) == {"car", "bus"} and set(rec.maps["k1"]) == {"car"}  # "bus" absent from k1
    for maps in rec.maps.values():
        for m in maps.values():
            assert m.shape == (8, 8) and (m >= 0).all() and (m <= 1).all() and m.sum() > 0
    assert rec.prompts["k1"] == "a photo of a car"
    met = rec.metrics()["k0"]["car"]
    assert 0 < met["normalized_entropy"] <= 1 and 0 < met["top5_mass"] <= 1


def test_maps_of_all_tokens_sum_to_one_per_pixel_on_a_wide_latent(pipe):
    rec = AttentionRecorder(token_indices=range(77))
    probes = [Probe("a blue bus")]  # the probe's size is not used: the latent is read from the UNet's input
    rec.on_batch_start(pipe, probes)
    _denoise(pipe, ["a blue bus"], steps=2, hw=(8, 16))
    rec.on_batch_end(probes, ["k"])
    assert rec.maps["k"]["#3"].shape == (8, 16)
    total = sum(rec.maps["k"].values())
    np.testing.assert_allclose(total, np.ones((8, 16)), atol=1e-5)


def _maps(pipe, cond, uncond, layout, steps=1):
    rec = AttentionRecorder(words=["car"])
    probes = [Probe(p) for p in cond]
    rec.on_batch_start(pipe, probes)
    try:
        _denoise(pipe, cond, uncond, steps=steps, layout=layout)
    finally:
        rec.on_batch_end(probes, [str(i) for i in range(len(cond))])
    return [rec.maps[str(i)]["car"] for i in range(len(cond))]


def test_recorder_reads_the_conditional_rows(pipe):
    cond = ["a red car", "a car on a road"]
    base = _maps(pipe, cond, ["", ""], "2B")
    # One UNet call: the conditional rows do not depend on the unconditional ones …
    other_uncond = _maps(pipe, cond, ["a car", "a blurry car"], "2B")
    three = _maps(pipe, cond, ["", ""], "3B")
    for a, b, c in zip(base, other_uncond, three):
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(a, c, atol=1e-6)
    # … but swapping which prompts sit in the conditional rows changes the maps.
    swapped = _maps(pipe, ["a car", "a blurry car"], cond, "2B")
    assert not np.allclose(swapped[0], base[0], atol=1e-4)
    no_cfg = _maps(pipe, cond, None, "1B")
    for a, b in zip(base, no_cfg):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_full_pipeline_call_several_resolutions_and_files(tmp_path, tiny_pipe_factory):
    pipe = tiny_pipe_factory(1, sd1_shapes=True)
    prompts = ["a red car and a blue bus"]
    probes = [Probe(prompts[0], steps=2, concepts=("car", "bus"))]
    rec = AttentionRecorder()  # the probes' own concepts
    rec.on_batch_start(pipe, probes)
    image = pipe(prompts, num_inference_steps=2, guidance_scale=7.5, output_type="pil",
                 generator=torch.Generator().manual_seed(0)).images[0]
    rec.on_batch_end(probes, ["img"])
    assert set(rec.maps["img"]) == {"car", "bus"} and rec.maps["img"]["car"].shape == (8, 8)

    only4 = AttentionRecorder(words=["car"], resolutions=[4])
    only4.on_batch_start(pipe, probes)
    pipe(prompts, num_inference_steps=2, guidance_scale=7.5, generator=torch.Generator().manual_seed(0))
    only4.on_batch_end(probes, ["img"])
    assert not np.allclose(only4.maps["img"]["car"], rec.maps["img"]["car"])

    png = save_heatmaps(rec.maps["img"], tmp_path / "heat" / "img.png", image=image, title=prompts[0])
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    npz = rec.save(tmp_path / "maps.npz")
    back = load_maps(npz)
    np.testing.assert_array_equal(back["img"]["bus"], rec.maps["img"]["bus"])


def test_recorder_errors(pipe):
    rec = AttentionRecorder(words=["car"])
    probes = [Probe("a car"), Probe("a red car")]
    rec.on_batch_start(pipe, probes)
    with pytest.raises(EraseLabError, match="already installed"):
        rec.on_batch_start(pipe, probes)
    with pytest.raises(EraseLabError, match="cond_rows"):
        _denoise(pipe, ["a car", "a red car", "a bus"], layout="1B", steps=1)  # 3 rows for 2 probes
    with pytest.raises(EraseLabError, match="keys"):
        rec.on_batch_end(probes, ["only-one"])
    assert all(type(p).__name__ != "_RecordingProcessor" for p in pipe.unet.attn_processors.values())
    with pytest.raises(EraseLabError, match="either words or token_indices"):
        AttentionRecorder(words=["a"], token_indices=[1])


def test_maps_match_an_independent_computation(pipe):
    """One step, no CFG: the recorded map equals softmax(QKᵀ/√d) of the word's column, averaged over heads and
    the cross-attention layers, computed here from the attn2 modules' inputs."""
    captured = []

    def grab(module, args, kwargs):
        captured.append(
            (module, args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"])
        )

    hooks = [m.register_forward_pre_hook(grab, with_kwargs=True)
             for name, m in pipe.unet.named_modules() if name.endswith("attn2")]
    try:
        expected_maps = _maps(pipe, ["a red car"], None, "1B")
    finally:
        for h in hooks:
            h.remove()
    assert len(captured) == 4  # down 8×8, mid 4×4, up 2 × 8×8
    per_layer = []
    with torch.no_grad():
        for attn, hs, ehs in captured:
            q, k = attn.to_q(hs), attn.to_k(ehs)
            heads, d = attn.heads, q.shape[-1] // attn.heads
            q = q.view(1, -1, heads, d).transpose(1, 2)
            k = k.view(1, -1, heads, d).transpose(1, 2)
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # 1 × heads × 64 × 77
            m = probs[0, :, :, 3].mean(0)  # "car" is token 3 of "a red car"
            side = math.isqrt(m.numel())  # the mid block sees 4 × 4; resample it to the 8 × 8 latent
            m = torch.nn.functional.interpolate(m.view(1, 1, side, side), size=(8, 8), mode="bilinear")
            per_layer.append(m[0, 0])
    np.testing.assert_allclose(expected_maps[0], torch.stack(per_layer).mean(0).numpy(), atol=1e-5)


def test_engine_row_layout_and_split_calls(pipe):
    """The engine interleaves rows per probe ([u0, c0, u1, c1]) and may split a step into several UNet calls;
    on_unet_call's layout routes each conditional row to its probe's map."""
    cond = ["a red car", "a car on a road"]
    expected = _maps(pipe, cond, ["", ""], "2B")
    c, u = _encode(pipe, cond), _encode(pipe, ["", ""])
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    probes = [Probe(p) for p in cond]
    for split in (False, True):
        rec = AttentionRecorder(words=["car"])
        rec.on_batch_start(pipe, probes)
        x = torch.stack([latents[0], latents[0], latents[1], latents[1]])
        e = torch.stack([u[0], c[0], u[1], c[1]])
        layout = [(0, "uncond"), (0, "cond"), (1, "uncond"), (1, "cond")]
        with torch.no_grad():
            if split:  # two calls of a fixed 3-row lane, the last padded as the engine pads
                rec.on_unet_call(0, t, layout[:3])
                pipe.unet(x[:3], t, encoder_hidden_states=e[:3])
                rec.on_unet_call(0, t, layout[3:] + [None, None])
                pipe.unet(
                    torch.cat([x[3:], x[:1], x[:1]]),
                    t,
                    encoder_hidden_states=torch.cat([e[3:], e[:1], e[:1]]),
                )
            else:
                rec.on_unet_call(0, t, layout)
                pipe.unet(x, t, encoder_hidden_states=e)
        rec.on_batch_end(probes, ["a", "b"])
        np.testing.assert_allclose(rec.maps["a"]["car"], expected[0], atol=1e-6)
        np.testing.assert_allclose(rec.maps["b"]["car"], expected[1], atol=1e-6)


def test_with_the_generation_engine(tmp_path, tiny_pipe_factory):
    from eraselab.generate import generate, images_for
    from eraselab.store import RunStore

    pipe = tiny_pipe_factory(0)
    probes = [Probe("a red car and a blue bus", seed=1, steps=2, concepts=("car", "bus")),
              Probe("a photo of a car", seed=2, steps=2, concepts=("car",))]
    plain = generate(pipe, probes, RunStore(tmp_path / "plain"), progress=False)
    rec = AttentionRecorder()
    store = RunStore(tmp_path / "rec")
    keys = generate(pipe, probes, store, progress=False, hooks=[rec], batch_size=2)
    assert keys == plain
    for a, b in zip(images_for(RunStore(tmp_path / "plain"), plain), images_for(store, keys)):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # recording does not change a pixel
    assert set(rec.maps) == set(keys)
    assert set(rec.maps[keys[0]]) == {"car", "bus"} and set(rec.maps[keys[1]]) == {"car"}
    assert all(type(p).__name__ != "_RecordingProcessor" for p in pipe.unet.attn_processors.values())
    # Same maps whether the probe was denoised alone or with another probe.
    alone = AttentionRecorder()
    generate(pipe, probes[1:], RunStore(tmp_path / "alone"), progress=False, hooks=[alone], batch_size=1)
    np.testing.assert_allclose(alone.maps[keys[1]]["car"], rec.maps[keys[1]]["car"], atol=1e-5)
