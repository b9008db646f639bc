"""The token grounding loss used in training (eraselab.miniworld.grounding)."""
import numpy as np
import pytest
import torch

from eraselab.miniworld.captions import caption, caption_with_phrases
from eraselab.miniworld.grounding import (
    CrossAttentionTap,
    grounding_loss,
    grounding_targets,
    phrase_token_positions,
    region_mask,
)
from eraselab.miniworld.render import render_dataset
from eraselab.models import clip_tokenizer


@pytest.fixture(scope="module")
def scenes():
    return render_dataset(200, seed=5)[1]


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_caption_with_phrases_is_the_same_caption_and_locates_each_phrase(scenes):
    """caption() is caption_with_phrases()[0] draw for draw; every phrase sits where it says, names its
    object's class (or a synonym or a parent) and, when a colour is named, the object's colour."""
    from eraselab.miniworld.world import WORLD

    a, b = np.random.default_rng(3), np.random.default_rng(3)
    pairs_seen = 0
    for scene in scenes:
        text, phrases = caption_with_phrases(scene, a)
        assert text == caption(scene, b)
        assert 1 <= len(phrases) <= len(scene.objects)
        pairs_seen += len(phrases) == 2
        for phrase, start, index in phrases:
            assert text[start:start + len(phrase)] == phrase
            obj = scene.objects[index]
            names = {n for c in [obj.cls, *WORLD.ancestors(obj.cls)] for n in WORLD.names(c)}
            assert any(phrase.endswith(" " + n) for n in names), (phrase, obj.cls)
            colours = [w for w in phrase.split() if w in WORLD.colors]
            assert colours in ([], [obj.color]), (phrase, obj.color)
    assert pairs_seen > 20


def test_phrase_tokens_are_the_phrase_without_its_article(scenes, tokenizer):
    rng = np.random.default_rng(0)
    for scene in scenes:
        text, phrases = caption_with_phrases(scene, rng)
        ids = tokenizer(text)["input_ids"]
        for phrase, start, _ in phrases:
            positions = phrase_token_positions(tokenizer, text, phrase, start)
            assert tokenizer.decode([ids[p] for p in positions]) == phrase.split(" ", 1)[1]


def test_phrase_tokens_tell_two_identical_phrases_apart(tokenizer):
    text = "a red circle and a red circle"
    assert phrase_token_positions(tokenizer, text, "a red circle", 0) == [2, 3]
    assert phrase_token_positions(tokenizer, text, "a red circle", 17) == [6, 7]
    with pytest.raises(ValueError, match="does not start"):
        phrase_token_positions(tokenizer, text, "a red circle", 3)


def test_region_masks_are_the_objects_halves(scenes):
    horizontal = next(s for s in scenes if s.layout == "horizontal")
    vertical = next(s for s in scenes if s.layout == "vertical")
    single = next(s for s in scenes if s.layout == "single")
    left = horizontal.objects.index(next(o for o in horizontal.objects if o.position == "left"))
    top = vertical.objects.index(next(o for o in vertical.objects if o.position == "top"))
    m = region_mask(horizontal, left, 4)
    assert m[:, :2].sum() == 8 and m[:, 2:].sum() == 0
    m = region_mask(vertical, 1 - top, 8)
    assert m[4:].sum() == 32 and m[:4].sum() == 0
    assert region_mask(single, 0, 8) is None


def _maps_with_mass(scenes, targets, inside: bool, size: int = 4) -> torch.Tensor:
    """Attention maps (rows, size², 77) in which each grounded token's attention lies wholly in (or out of)
    its object's region."""
    probs = torch.full((len(scenes), size * size, 77), 1.0 / 77)
    for r, positions, i in targets:
        mask = region_mask(scenes[r], i, size).flatten()
        where = mask if inside else 1 - mask
        for p in positions:
            probs[r, :, p] = where * 0.5
    return probs


def test_grounding_loss_is_zero_inside_the_region_and_one_outside(scenes, tokenizer):
    rng = np.random.default_rng(1)
    batch = [s for s in scenes if s.layout != "single"][:8] + [s for s in scenes if s.layout == "single"][:2]
    described = [caption_with_phrases(s, rng) for s in batch]
    texts = [t for t, _ in described]
    texts[0] = ""   # a caption dropped for guidance is not grounded
    targets = grounding_targets(tokenizer, batch, texts, [p for _, p in described])
    assert targets and {r for r, _, _ in targets} <= set(range(1, 8))
    assert grounding_loss(
        [_maps_with_mass(batch, targets, inside=True)], batch, targets
    ).item() == pytest.approx(0)
    assert grounding_loss(
        [_maps_with_mass(batch, targets, inside=False)], batch, targets
    ).item() == pytest.approx(1)
    uniform = torch.full((len(batch), 64, 77), 1.0 / 77, requires_grad=True)
    loss = grounding_loss([uniform], batch, targets)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert uniform.grad.abs().sum() > 0


def test_tap_computes_what_the_default_attention_computes_and_records_every_cross_attention():
    from eraselab.miniworld.train import build_unet

    torch.manual_seed(0)
    unet = build_unet().eval()
    z, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, 64)
    with torch.no_grad():
        before = unet(z, t, encoder_hidden_states=text).sample
        tap = CrossAttentionTap(unet)
        after = unet(z, t, encoder_hidden_states=text).sample
    assert torch.allclose(before, after, atol=1e-5)
    maps = tap.take()
    n_cross = sum(name.endswith("attn2.processor") for name in unet.attn_processors)
    assert len(maps) == n_cross > 0 and tap.take() == []
    for probs in maps:
        assert probs.shape[0] == 2 and probs.shape[2] == 77
        assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5)


def test_training_with_grounding_records_its_loss_and_command(tmp_path):
    from eraselab.miniworld.train import TrainConfig, train

    cfg = TrainConfig(seed=0, minutes=1e-6, n_images=100, init="miniworld", steps=3, pair_share=1.0, batch=8,
                      cfg_dropout=0.0, checkpoint_every_s=1e9, grounding=0.5)
    record = train(tmp_path / "run", cfg)
    assert 0 < record["final_losses"]["grounding"] < 1
    assert "--grounding 0.5" in record["command"]
