import json
import subprocess
import sys

import pytest
import torch

from eraselab.edits import Edit, edit_from_changes, snapshot
from eraselab.errors import EraseLabError
from eraselab.models import (
    clip_tokenizer,
    compute_fingerprint,
    fingerprint,
    load_pipeline,
    tiny_random_pipeline,
)

KEY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _key_param(pipe):
    return pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight


def _make_edit(pipe, delta=0.5):
    before = snapshot(pipe)
    with torch.no_grad():
        _key_param(pipe).add_(delta)
    edit = edit_from_changes(pipe, before, "test", config={"delta": delta}, targets=["circle"])
    with torch.no_grad():
        _key_param(pipe).copy_(before[KEY])
    return edit


def test_clip_tokenizer_gives_real_clip_ids():
    tok = clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    # Ids of the published CLIP vocabulary: <start> a photo of a red car <end>
    assert tok("a photo of a red car").input_ids == [49406, 320, 1125, 539, 320, 736, 1615, 49407]


def test_tiny_pipeline_is_deterministic_and_fingerprinted():
    a, b, c = tiny_random_pipeline(0), tiny_random_pipeline(0), tiny_random_pipeline(1)
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_fingerprint_changes_with_any_weight(tiny_pipe):
    before = compute_fingerprint(tiny_pipe)
    with torch.no_grad():
        next(tiny_pipe.text_encoder.parameters()).view(-1)[0] += 1e-3
    assert compute_fingerprint(tiny_pipe) != before


def test_edit_holds_only_changed_parameters_and_round_trips(tiny_pipe, tmp_path):
    edit = _make_edit(tiny_pipe)
    assert list(edit.tensors) == [KEY]
    edit.save(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "edit.json").read_text())
    assert meta["method"] == "test" and meta["base_fingerprint"] == fingerprint(tiny_pipe)
    assert {"torch", "diffusers", "transformers"} <= set(meta["versions"])
    loaded = Edit.load(tmp_path / "e")
    assert loaded.content_hash() == edit.content_hash()
    original = _key_param(tiny_pipe).detach().clone()
    loaded.apply(tiny_pipe)
    assert torch.allclose(_key_param(tiny_pipe), original + 0.5)
    loaded.revert(tiny_pipe)
    assert torch.equal(_key_param(tiny_pipe), original)


def test_applying_second_edit_replaces_first(tiny_pipe):
    original = _key_param(tiny_pipe).detach().clone()
    e1, e2 = _make_edit(tiny_pipe, 0.5), _make_edit(tiny_pipe, 2.0)
    e1.apply(tiny_pipe)
    e2.apply(tiny_pipe)
    assert torch.allclose(_key_param(tiny_pipe), original + 2.0)
    e2.revert(tiny_pipe)
    assert torch.equal(_key_param(tiny_pipe), original)


def test_edit_refused_on_other_model(tiny_pipe):
    edit = _make_edit(tiny_pipe)
    other = tiny_random_pipeline(3)
    with pytest.raises(EraseLabError, match="made for model"):
        edit.apply(other)


def test_corrupted_or_tampered_edit_is_refused(tiny_pipe, tmp_path):
    edit = _make_edit(tiny_pipe)
    folder = edit.save(tmp_path / "e")
    data = (folder / "edit.safetensors").read_bytes()
    (folder / "edit.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EraseLabError, match="corrupted"):
        Edit.load(folder)
    edit.save(folder)
    raw = bytearray((folder / "edit.safetensors").read_bytes())
    raw[-1] ^= 0xFF  # flip bits inside the tensor payload
    (folder / "edit.safetensors").write_bytes(bytes(raw))
    with pytest.raises(EraseLabError, match="does not match the hash"):
        Edit.load(folder)


def test_export_full_pipeline_loads_back(tiny_pipe, tmp_path):
    edit = _make_edit(tiny_pipe)
    original = _key_param(tiny_pipe).detach().clone()
    edit.export_pipeline(tiny_pipe, tmp_path / "full")
    assert torch.equal(_key_param(tiny_pipe), original)  # exporting leaves the loaded model unedited
    reloaded = load_pipeline(str(tmp_path / "full"))
    assert torch.allclose(_key_param(reloaded), original + 0.5)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(EraseLabError, match="does not exist"):
        load_pipeline(str(tmp_path / "nope"))
    with pytest.raises(EraseLabError, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(EraseLabError, match="pickle"):
        load_pipeline(str(ckpt))
    with pytest.raises(EraseLabError, match="not in the local cache"):
        load_pipeline("nobody/no-such-model-xyz")


def test_cli_version_and_error_exit():
    out = subprocess.run([sys.executable, "-m", "eraselab.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("eraselab ")
