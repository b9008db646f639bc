"""Edits that carry added modules: apply/revert, save/load, hashing, refusals, export, and version-1 edits."""
import json

import pytest
import torch
from safetensors.torch import load_file

from eraselab.edit_modules import MODULE_KINDS, AddedModule, ModuleSpec, attach, attached_modules
from eraselab.edits import Edit, applied_edit, edit_from_changes, snapshot
from eraselab.errors import EraseLabError
from eraselab.models import compute_fingerprint, fingerprint, load_pipeline


class LinearBranch(torch.nn.Module):
    """A LoRA-style branch beside a Linear (the shape of SPM's adapter), foldable into the Linear's weight."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = torch.nn.Linear(in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, out_features, bias=False)
        self.scale = 1.0

    def forward(self, x):
        return self.up(self.down(x)) * self.scale

    def merged_weights(self, target):
        return {"weight": target.weight + self.scale * self.up.weight @ self.down.weight}


MODULE_KINDS.add("test_linear_branch", LinearBranch)


@pytest.fixture
def tiny_pipe(tiny_pipe_factory):
    """One shared tiny pipeline: every test here leaves it as it found it (edits reverted)."""
    pipe = tiny_pipe_factory(0)
    yield pipe
    assert applied_edit(pipe) is None


def _attn2_paths(pipe):
    return [f"unet.{n}" for n, _ in pipe.unet.named_modules() if n.endswith("attn2")]


def _unet_out(pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(x, 10, encoder_hidden_states=ctx).sample


def _eraser_edit(pipe, seed=1, paths=None):
    """An Edit with a Receler eraser (random, non-zero weights) after each chosen cross-attention."""
    torch.manual_seed(seed)
    modules = []
    known = _attn2_paths(pipe)
    for i, path in enumerate(paths or known):
        attn = pipe.unet.get_submodule((path if path in known else known[0]).removeprefix("unet."))
        dim = attn.to_out[0].out_features
        spec = ModuleSpec(f"eraser{i}", "receler_eraser", path, "add_to_output", {"dim": dim, "rank": 4})
        module = spec.build()
        torch.nn.init.normal_(module.up.weight, std=0.5)
        modules.append(AddedModule(spec, {k: v.clone() for k, v in module.state_dict().items()}))
    return Edit(tensors={}, method="test", base_fingerprint=fingerprint(pipe), modules=modules)


def _branch_edit(pipe, seed=2):
    path = _attn2_paths(pipe)[0] + ".to_q"
    target = pipe.unet.get_submodule(path.removeprefix("unet."))
    spec = ModuleSpec("branch", "test_linear_branch", path, "add_beside",
                      {"in_features": target.in_features, "out_features": target.out_features, "rank": 1})
    torch.manual_seed(seed)
    module = spec.build()
    torch.nn.init.normal_(module.up.weight, std=0.5)
    return Edit(tensors={}, method="test", base_fingerprint=fingerprint(pipe),
                modules=[AddedModule(spec, module.state_dict())])


def test_apply_changes_outputs_and_revert_restores_them_bit_exactly(tiny_pipe):
    before_out, before_fp = _unet_out(tiny_pipe), compute_fingerprint(tiny_pipe)
    edit = _eraser_edit(tiny_pipe)
    edit.apply(tiny_pipe)
    applied = _unet_out(tiny_pipe)
    assert not torch.allclose(applied, before_out)
    assert set(attached_modules(tiny_pipe)) == {m.spec.name for m in edit.modules}
    assert compute_fingerprint(tiny_pipe) == before_fp  # hooks leave the model's own weights and names alone
    edit.revert(tiny_pipe)
    assert torch.equal(_unet_out(tiny_pipe), before_out)
    assert attached_modules(tiny_pipe) == {}
    edit.apply(tiny_pipe)  # applying again gives the same outputs
    assert torch.equal(_unet_out(tiny_pipe), applied)
    edit.revert(tiny_pipe)


def test_eraser_hook_computes_output_plus_eraser_of_output(tiny_pipe):
    path = _attn2_paths(tiny_pipe)[0]
    attn = tiny_pipe.unet.get_submodule(path.removeprefix("unet."))
    edit = _eraser_edit(tiny_pipe, paths=[path])
    h = torch.randn(1, 16, attn.to_q.in_features)
    ctx = torch.randn(1, 77, tiny_pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        plain = attn(h, encoder_hidden_states=ctx)
        edit.apply(tiny_pipe)
        hooked = attn(h, encoder_hidden_states=ctx)
        edit.revert(tiny_pipe)
        expected = plain + edit.modules[0].instantiate()(plain)
    assert torch.allclose(hooked, expected, rtol=0, atol=1e-6) and not torch.allclose(hooked, plain)


def test_second_edit_replaces_first_including_its_modules(tiny_pipe):
    before = _unet_out(tiny_pipe)
    first, second = _eraser_edit(tiny_pipe, seed=1), _branch_edit(tiny_pipe)
    first.apply(tiny_pipe)
    second.apply(tiny_pipe)
    only_second = _unet_out(tiny_pipe)
    second.revert(tiny_pipe)
    assert torch.equal(_unet_out(tiny_pipe), before)
    second.apply(tiny_pipe)
    assert torch.equal(_unet_out(tiny_pipe), only_second)
    second.revert(tiny_pipe)


def test_save_load_round_trip_keeps_modules_and_hash(tiny_pipe, tmp_path):
    edit = _eraser_edit(tiny_pipe)
    folder = edit.save(tmp_path / "e")
    meta = json.loads((folder / "edit.json").read_text())
    assert meta["format_version"] == 2 and [m["name"] for m in meta["modules"]] == [m.spec.name
                                                                                     for m in edit.modules]
    stored = load_file(folder / "edit.safetensors")
    assert stored and all(k.startswith("modules.eraser") for k in stored)
    loaded = Edit.load(folder)
    assert loaded.content_hash() == edit.content_hash() and loaded.tensors == {}
    edit.apply(tiny_pipe)
    want = _unet_out(tiny_pipe)
    edit.revert(tiny_pipe)
    loaded.apply(tiny_pipe)
    assert torch.equal(_unet_out(tiny_pipe), want)
    loaded.revert(tiny_pipe)


def test_hash_changes_with_module_weights_and_spec(tiny_pipe):
    edit = _eraser_edit(tiny_pipe)
    base = edit.content_hash()
    edit.modules[0].state["up.weight"].view(-1)[0] += 1e-3
    assert edit.content_hash() != base
    moved = _eraser_edit(tiny_pipe)
    m = moved.modules[0]
    elsewhere = ModuleSpec(m.spec.name, m.spec.kind, _attn2_paths(tiny_pipe)[1], m.spec.hook, m.spec.config)
    moved.modules[0] = AddedModule(elsewhere, m.state)
    assert moved.content_hash() != _eraser_edit(tiny_pipe).content_hash()
    without = Edit(tensors={}, method="test", base_fingerprint=edit.base_fingerprint)
    assert without.content_hash() != base


def test_unknown_module_kind_is_refused_in_one_line(tiny_pipe, tmp_path):
    folder = _eraser_edit(tiny_pipe).save(tmp_path / "e")
    meta = json.loads((folder / "edit.json").read_text())
    meta["modules"][0]["kind"] = "os_system"
    (folder / "edit.json").write_text(json.dumps(meta))
    with pytest.raises(EraseLabError, match="kind 'os_system', which this eraselab does not know") as info:
        Edit.load(folder)
    assert "\n" not in str(info.value)
    with pytest.raises(EraseLabError, match="does not know"):
        ModuleSpec("x", "os_system", "unet.conv_in", "add_to_output").build()


def test_missing_or_unclaimed_module_weights_are_refused(tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    folder = _eraser_edit(tiny_pipe).save(tmp_path / "e")
    stored = load_file(folder / "edit.safetensors")
    without_bias = {k: v for k, v in stored.items() if k != "modules.eraser0.up.bias"}
    save_file(without_bias, folder / "edit.safetensors")
    with pytest.raises(EraseLabError, match="lacks weight modules.eraser0.up.bias"):
        Edit.load(folder)
    save_file({**stored, "modules.ghost.weight": torch.zeros(1)}, folder / "edit.safetensors")
    with pytest.raises(EraseLabError, match="no added module in edit.json claims"):
        Edit.load(folder)


def test_module_on_missing_path_is_refused_before_anything_changes(tiny_pipe):
    before = _unet_out(tiny_pipe)
    edit = _eraser_edit(tiny_pipe, paths=[_attn2_paths(tiny_pipe)[0], "unet.no_such_block.attn2"])
    with pytest.raises(EraseLabError, match="unet.no_such_block.attn2, which the model does not have"):
        edit.apply(tiny_pipe)
    assert torch.equal(_unet_out(tiny_pipe), before)


def test_version_1_edit_still_loads_with_its_hash(tiny_pipe, tmp_path):
    before = snapshot(tiny_pipe)
    key = next(iter(before))
    with torch.no_grad():
        dict(tiny_pipe.unet.named_parameters())[key.removeprefix("unet.")].add_(0.25)
    edit = edit_from_changes(tiny_pipe, before, "test", targets=["circle"])
    folder = edit.save(tmp_path / "v1")
    meta = json.loads((folder / "edit.json").read_text())
    meta["format_version"] = 1
    del meta["modules"]  # what eraselab wrote before edits had modules
    (folder / "edit.json").write_text(json.dumps(meta))
    loaded = Edit.load(folder)
    with torch.no_grad():
        dict(tiny_pipe.unet.named_parameters())[key.removeprefix("unet.")].copy_(before[key])
    assert loaded.modules == [] and loaded.content_hash() == meta["edit_hash"] == edit.content_hash()


def test_export_refuses_nonlinear_eraser_and_leaves_pipeline_intact(tiny_pipe, tmp_path):
    before = _unet_out(tiny_pipe)
    with pytest.raises(EraseLabError, match="cannot hold; save the edit") as info:
        _eraser_edit(tiny_pipe).export_pipeline(tiny_pipe, tmp_path / "full")
    assert "\n" not in str(info.value)
    assert torch.equal(_unet_out(tiny_pipe), before) and not (tmp_path / "full").exists()


def test_export_bakes_a_linear_branch(tiny_pipe, tmp_path):
    edit = _branch_edit(tiny_pipe)
    before = _unet_out(tiny_pipe)
    edit.apply(tiny_pipe)
    hooked = _unet_out(tiny_pipe)
    edit.revert(tiny_pipe)
    edit.export_pipeline(tiny_pipe, tmp_path / "full")
    assert torch.equal(_unet_out(tiny_pipe), before)  # exporting leaves the loaded model unedited
    assert torch.allclose(_unet_out(load_pipeline(str(tmp_path / "full"))), hooked, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(hooked, before)


def test_training_attachment_can_be_switched_off_and_removed(tiny_pipe):
    before = _unet_out(tiny_pipe)
    edit = _eraser_edit(tiny_pipe)
    attachment = attach(tiny_pipe, [(m.spec, m.instantiate()) for m in edit.modules])
    on = _unet_out(tiny_pipe)
    with attachment.disabled():
        assert torch.equal(_unet_out(tiny_pipe), before)
    assert torch.equal(_unet_out(tiny_pipe), on) and not torch.allclose(on, before)
    attachment.remove()
    assert torch.equal(_unet_out(tiny_pipe), before)
