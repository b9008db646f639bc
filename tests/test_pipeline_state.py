"""eraselab's bookkeeping about a pipeline lives in pipeline_state, not on diffusers' object, and the cached
fingerprints follow in-place changes of the weights while staying the base model's under an applied Edit."""
import gc
import weakref
from types import SimpleNamespace

import pytest
import torch

import eraselab.generation.keys
import eraselab.models
from eraselab.edit_modules import AddedModule, ModuleSpec, attached_modules
from eraselab.edits import applied_edit, edit_from_changes, snapshot
from eraselab.errors import EraseLabError
from eraselab.generate import generate
from eraselab.generation.keys import image_keys
from eraselab.models import compute_fingerprint, fingerprint, load_pipeline, model_source
from eraselab.pipeline_state import state_of
from eraselab.probes import Probe
from eraselab.store import RunStore

PROBES = [Probe("a photo of a cat", seed=s, steps=2) for s in range(2)]


def _to_k(pipe):
    return pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight


def _edit(pipe, with_module: bool = False):
    """An Edit that changes one K projection (and, with_module, hooks a Receler eraser after attn2), made the
    way methods make theirs: snapshot, write in place, edit_from_changes, write the originals back."""
    before = snapshot(pipe)
    with torch.no_grad():
        _to_k(pipe).add_(0.5)
    edit = edit_from_changes(pipe, before, "test", targets=["cat"])
    with torch.no_grad():
        _to_k(pipe).copy_(before["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"])
    if with_module:
        path = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
        spec = ModuleSpec("eraser", "receler_eraser", path, "add_to_output", {"dim": 32, "rank": 4})
        edit.modules.append(AddedModule(spec, spec.build().state_dict()))
    return edit


def _eraselab_attributes(pipe) -> list[str]:
    return [name for name in vars(pipe) if "eraselab" in name]


@pytest.fixture
def counted(monkeypatch):
    """How often the model and the VAE are hashed."""
    counts = {"model": 0, "vae": 0}
    model_hash, vae_hash = eraselab.models.compute_fingerprint, eraselab.generation.keys._hash_vae

    def count_model(*args, **kwargs):
        counts["model"] += 1
        return model_hash(*args, **kwargs)

    def count_vae(*args, **kwargs):
        counts["vae"] += 1
        return vae_hash(*args, **kwargs)

    monkeypatch.setattr(eraselab.models, "compute_fingerprint", count_model)
    monkeypatch.setattr(eraselab.generation.keys, "_hash_vae", count_vae)
    return counts


def test_no_bookkeeping_is_set_on_the_pipeline(tiny_pipe, tmp_path):
    loaded = load_pipeline("miniworld")
    assert model_source(loaded) == "miniworld" and not _eraselab_attributes(loaded)
    assert model_source(tiny_pipe) == "tiny-random(seed=0)"
    edit = _edit(tiny_pipe, with_module=True)
    edit.apply(tiny_pipe)
    assert applied_edit(tiny_pipe) is edit and list(attached_modules(tiny_pipe)) == ["eraser"]
    keys = generate(tiny_pipe, PROBES[:1], RunStore(tmp_path), progress=False)
    assert keys == image_keys(tiny_pipe, PROBES[:1], edit=edit)
    edit.revert(tiny_pipe)
    assert applied_edit(tiny_pipe) is None and attached_modules(tiny_pipe) == {}
    assert not _eraselab_attributes(tiny_pipe)


def test_an_in_place_change_without_an_edit_changes_the_fingerprint_and_the_keys(tiny_pipe):
    fp, keys = fingerprint(tiny_pipe), image_keys(tiny_pipe, PROBES)
    with torch.no_grad():
        next(tiny_pipe.unet.parameters()).add_(1e-3)
    assert fingerprint(tiny_pipe) == compute_fingerprint(tiny_pipe) != fp
    changed = image_keys(tiny_pipe, PROBES)
    assert not set(changed) & set(keys)
    with torch.no_grad():
        # the VAE is not in the fingerprint but decides the pixels
        next(tiny_pipe.vae.parameters()).add_(1e-3)
    assert fingerprint(tiny_pipe) == compute_fingerprint(tiny_pipe)
    assert not set(image_keys(tiny_pipe, PROBES)) & set(changed)


def test_an_unchanged_model_is_hashed_once(tiny_pipe, counted):
    fp, keys = fingerprint(tiny_pipe), image_keys(tiny_pipe, PROBES)
    assert counted == {"model": 1, "vae": 1}
    edit = _edit(tiny_pipe)  # a method's writes, put back: the base model is unchanged
    for _ in range(2):
        edit.apply(tiny_pipe)
        assert fingerprint(tiny_pipe) == fp
        edit.revert(tiny_pipe)
    assert fingerprint(tiny_pipe) == fp and image_keys(tiny_pipe, PROBES) == keys
    assert counted == {"model": 1, "vae": 1}
    before = snapshot(tiny_pipe)
    with torch.no_grad():
        _to_k(tiny_pipe).mul_(2)
    edit_from_changes(tiny_pipe, before, "test")  # a method that does not put its originals back
    assert fingerprint(tiny_pipe) != fp and counted["model"] == 2


def test_applying_and_reverting_an_edit_keeps_the_base_fingerprint_and_the_keys(tiny_pipe):
    fp, keys = fingerprint(tiny_pipe), image_keys(tiny_pipe, PROBES)
    edit = _edit(tiny_pipe)
    edited_keys = image_keys(tiny_pipe, PROBES, edit=edit)
    weights = {n: t.clone() for n, t in tiny_pipe.unet.state_dict().items()}
    edit.apply(tiny_pipe)
    assert not torch.equal(_to_k(tiny_pipe), weights["down_blocks.0.attentions.0.transformer_blocks.0.attn2"
                                                          ".to_k.weight"])
    assert fingerprint(tiny_pipe) == fp and image_keys(tiny_pipe, PROBES, edit=edit) == edited_keys
    edit.revert(tiny_pipe)
    assert all(torch.equal(t, weights[n]) for n, t in tiny_pipe.unet.state_dict().items())
    assert fingerprint(tiny_pipe) == fp and image_keys(tiny_pipe, PROBES) == keys
    # A change of another weight while the edit is applied is a change of the base model.
    edit.apply(tiny_pipe)
    with torch.no_grad():
        tiny_pipe.unet.conv_in.bias.add_(1e-3)
    changed = fingerprint(tiny_pipe)
    edit.revert(tiny_pipe)
    assert changed != fp and changed == fingerprint(tiny_pipe) == compute_fingerprint(tiny_pipe)


class _EqualToEverything:
    __hash__ = None

    def __eq__(self, other):
        return True


def test_the_state_goes_with_the_pipeline():
    a, b = _EqualToEverything(), _EqualToEverything()
    assert state_of(a) is state_of(a) is not state_of(b)  # by identity: equal objects are other pipelines
    pipe = eraselab.models.tiny_random_pipeline(0)
    _edit(pipe, with_module=True).apply(pipe)  # an applied edit with hooked-in modules keeps nothing alive
    state = weakref.ref(state_of(pipe))
    del pipe
    gc.collect()
    assert state() is None


def test_an_object_that_cannot_be_weakly_referenced_is_refused_in_one_line():
    with pytest.raises(EraseLabError, match="weak reference.*SimpleNamespace") as info:
        fingerprint(SimpleNamespace(unet=None))
    assert "\n" not in str(info.value)
