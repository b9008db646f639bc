"""Erasure methods on SDXL and Flux end to end: `eraselab erase` on saved tiny pipelines, the support matrix
of `eraselab methods`, one-line refusals, and edits that change the images the engine generates."""
import pytest

from eraselab.edits import Edit


@pytest.fixture(scope="module")
def pipes():
    from eraselab.tiny_families import tiny_random_flux_pipeline, tiny_random_sdxl_pipeline

    return {"sdxl": tiny_random_sdxl_pipeline(0), "flux": tiny_random_flux_pipeline(0)}


@pytest.fixture(scope="module")
def folders(pipes, tmp_path_factory):
    out = {}
    for family, pipe in pipes.items():
        out[family] = tmp_path_factory.mktemp(f"tiny_{family}")
        pipe.save_pretrained(str(out[family]))
    return out


def _cli(*args, capsys):
    from eraselab.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


@pytest.mark.parametrize("family,method,config,tensors", [
    ("sdxl", "uce", [], 16),
    ("sdxl", "esd-x", ["iterations=2", "ddim_steps=3"], 40),
    ("flux", "uce", [], 2),
])
def test_cli_erase_on_a_saved_folder(folders, family, method, config, tensors, tmp_path, capsys):
    out = tmp_path / "edit"
    settings = [a for c in config for a in ("--config", c)]
    code, io = _cli("erase", "--model", folders[family], "--method", method, "--target", "cat", "--preserve",
                    "dog", *settings, "--out", out, "--device", "cpu", capsys=capsys)
    assert code == 0, io.err
    edit = Edit.load(out)
    assert edit.method == method and len(edit.tensors) == tensors
    expected_recipe = {"uce": {"sdxl": "current", "flux": "flux"}, "esd-x": {"sdxl": "sdxl"}}[method][family]
    assert edit.config["recipe"] == expected_recipe


def test_cli_erase_refuses_a_method_without_a_flux_version(folders, tmp_path, capsys, monkeypatch):
    """Before the model loads: its folder's model_index.json tells the family."""
    import eraselab.models
    from eraselab.methods import family_of_model_name

    assert {f: family_of_model_name(str(folders[f])) for f in folders} == {"sdxl": "sdxl", "flux": "flux"}
    assert family_of_model_name("miniworld") == "sd" and family_of_model_name("org/unknown-model") is None

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(eraselab.models, "load_pipeline", no_loading)
    code, io = _cli("erase", "--model", folders["flux"], "--method", "esd-u", "--target", "cat", "--out",
                    tmp_path / "e", "--device", "cpu", capsys=capsys)
    assert code != 0
    assert "esd-u runs on SD 1.x/2.x models, not on this Flux pipeline" in io.err
    assert not (tmp_path / "e").exists()


def test_methods_lists_the_support_matrix(capsys):
    code, io = _cli("methods", capsys=capsys)
    assert code == 0
    lines = io.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("which model family"))
    header, rows = lines[start + 1].split(), {line.split()[0]: line.split()[1:] for line in lines[start + 2:]
                                              if line and not line.startswith("Set with")}
    assert header == ["SD", "1.x/2.x", "SDXL", "Flux"]
    assert rows["uce"] == ["paper", "current", "flux"]
    assert rows["esd-x"] == ["compvis", "sdxl", "flux"] and rows["esd-u"] == ["compvis", "–", "–"]
    assert rows["esd-x-strict"] == ["diffusers", "sdxl", "flux"]
    # The Flux ESD is eraselab's own port, and the listing says so.
    assert "esd-x: ESD fine-tuning of all cross-attention parameters (styles, specific objects); on Flux " \
           "eraselab's own port, no official reference" in io.out
    assert "recipe flux: eraselab's own port of rohitgandikota/erasing@25613d2:esd_sdxl.py" in io.out
    assert rows["negprompt"][1:] == ["diffusers", "–"] and rows["sld"][2] == "–"
    assert "runs on: SD 1.x/2.x (recipe paper), SDXL (recipe current), Flux (recipe flux)" in io.out


@pytest.mark.parametrize("family,method", [("sdxl", "uce"), ("flux", "uce"), ("sdxl", "negprompt"),
                                           ("sdxl", "sld")])
def test_an_edit_changes_what_the_engine_generates(pipes, family, method, tmp_path):
    import numpy as np

    import eraselab
    from eraselab.generate import generate, images_for
    from eraselab.probes import Probe
    from eraselab.store import RunStore

    pipe = pipes[family]
    probe = Probe("a photo of a cat", seed=3, steps=2, guidance=3.0, height=16, width=16, concepts=("cat",))
    edit = eraselab.erase(pipe, method, ["cat"], progress=False)
    store = RunStore(tmp_path / "run")
    images = []
    for e in (None, edit):
        keys = generate(pipe, [probe], store, edit=e, batch_size=1, progress=False)
        images.append(np.asarray(images_for(store, keys)[0], dtype=np.float32))
    assert np.abs(images[0] - images[1]).mean() > 0.5
    assert eraselab.edits.applied_edit(pipe) is None  # generate put the base weights back


@pytest.fixture(scope="module")
def sd2_folder(tmp_path_factory):
    from eraselab.tiny_families import tiny_random_sd2_pipeline

    folder = tmp_path_factory.mktemp("tiny_sd2")
    tiny_random_sd2_pipeline(0).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("method,config", [("uce", []), ("esd-x", ["iterations=2", "ddim_steps=3"])])
def test_cli_erase_on_a_saved_sd2_folder(sd2_folder, method, config, tmp_path, capsys):
    """SD 2.x is the "sd" family (1024-wide text, v-prediction): uce and esd-x erase it with their SD recipes
    and the edit changes what the engine generates."""
    import numpy as np

    from eraselab.generate import generate, images_for
    from eraselab.models import load_pipeline
    from eraselab.probes import Probe
    from eraselab.store import RunStore

    folder, out = sd2_folder, tmp_path / "edit"
    settings = [a for c in config for a in ("--config", c)]
    code, io = _cli("erase", "--model", folder, "--method", method, "--target", "cat", *settings,
                    "--out", out, "--device", "cpu", capsys=capsys)
    assert code == 0, io.err
    edit = Edit.load(out)
    assert edit.method == method and edit.tensors
    text_side = [t for n, t in edit.tensors.items()
                 if "attn2" in n and n.endswith(("to_k.weight", "to_v.weight"))]
    assert text_side and all(t.shape[-1] == 1024 for t in text_side)  # the 1024-wide text of SD 2
    pipe = load_pipeline(str(folder), device="cpu")
    probe = Probe("a photo of a cat", seed=1, steps=2, height=32, width=32, concepts=("cat",))
    images = []
    for e in (None, edit):
        with RunStore(tmp_path / "store") as store:
            keys = generate(pipe, [probe], store, edit=e, progress=False)
            images.append(np.asarray(images_for(store, keys)[0], dtype=np.float32))
    assert np.abs(images[0] - images[1]).mean() > 0
