"""The real-user journey's small promises (issue 14): interrupts, reproducible hashes, shareable files."""
import os
import stat

import pytest

from eraselab.atomic import atomic_write_text
from eraselab.bench import results_hash
from eraselab.cli import main


def test_ctrl_c_exits_130_with_the_resume_message(monkeypatch, capsys):
    """typer (outside standalone mode) turns KeyboardInterrupt into a *returned* 130, which main() ignored."""
    import eraselab.commands.methods as methods_command

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(methods_command, "method_rows", interrupted)
    assert main(["methods"]) == 130
    assert "interrupted; run the same command again" in capsys.readouterr().err


def test_results_hash_ignores_every_measured_duration():
    def results(erase_s, search_s):
        return {"targets": ["circle"], "methods": {
            "ap": {"seconds": erase_s,
                   "extras": {"candidate_search_seconds": search_s, "candidates": ["star"]},
                   "metrics": {"target": 0.1}}}}

    assert results_hash(results(1.0, 2.0)) == results_hash(results(3.5, 9.25))
    changed = results(1.0, 2.0)
    changed["methods"]["ap"]["extras"]["candidates"] = ["ring"]
    assert results_hash(changed) != results_hash(results(1.0, 2.0))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o666 & ~umask


def test_ci_runs_exactly_the_readme_commands():
    """A fresh clone + README's install + README's test command is what CI checks, nothing more."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    install = blocks[0].splitlines()[0]
    test_command = blocks[1].splitlines()[0]
    ci = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    assert install.startswith("pip install") and install in ci
    assert "python -m pytest -q" in test_command and test_command in ci


def test_methods_listing_is_not_truncated_when_piped(capsys):
    """Piped output (not a TTY) is plain text: every default and every reference in full."""
    from eraselab.methods import get_method, method_names

    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in method_names():
        config = get_method(name).Config
        assert f"{name}: " in text
        for recipe in config.recipes:
            assert recipe.reference.cite() in text
        assert "…" not in text
    assert "max_norm_growth=" in text  # the last UCE default, cut off by an 80-column table


@pytest.mark.parametrize("field, value, message", [
    ("format_version", 99, "format version 99"),
    ("format_version", "1", "format version '1'"),
    ("targets", "circle", "field 'targets' must be list"),
    ("config", [], "field 'config' must be dict"),
    ("seconds", "fast", "field 'seconds' must be int or float"),
    ("extras", None, None),  # an optional field may be null
])
def test_edit_json_of_another_version_or_with_wrong_types_is_refused(tiny_pipe_factory, tmp_path, field,
                                                                     value, message):
    import json

    import eraselab
    from eraselab.edits import Edit
    from eraselab.errors import EraseLabError

    edit = eraselab.erase(tiny_pipe_factory(0), "negprompt", ["circle"], progress=False)
    folder = edit.save(tmp_path / "edit")
    meta = json.loads((folder / "edit.json").read_text())
    meta[field] = value
    (folder / "edit.json").write_text(json.dumps(meta))
    if message is None:
        Edit.load(folder)
        return
    with pytest.raises(EraseLabError, match=message):
        Edit.load(folder)


@pytest.mark.parametrize("target", ["dog", "🐶", "circle" * 2000], ids=["dog", "emoji", "10k-chars"])
def test_erase_on_miniworld_refuses_concepts_the_world_does_not_have(tmp_path, capsys, target):
    assert main(["erase", "--model", "miniworld", "--method", "uce", "--target", target, "--out",
                 str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "not a miniworld concept" in err and len(err.strip().splitlines()) == 1 and len(err) < 400
    assert not (tmp_path / "e").exists()


def test_bench_without_a_target_does_not_start(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 2
    assert "no target given" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("method", ["uce", "esd-x", "negprompt"])
def test_erase_refuses_an_sdxl_style_pipeline_in_one_line(tiny_pipe, method):
    """A pipeline that looks SDXL-style but lacks SDXL's parts is refused before any work by the methods that
    run on SDXL (uce/esd-x crashed inside diffusers, negprompt wrote an edit that generate then refused)."""
    import eraselab
    from eraselab.errors import EraseLabError

    tiny_pipe.text_encoder_2 = tiny_pipe.text_encoder  # what makes a pipeline SDXL-style to the engine
    with pytest.raises(EraseLabError, match="no tokenizer_2") as info:
        eraselab.erase(tiny_pipe, method, ["circle"], progress=False)
    assert "\n" not in str(info.value)


def test_the_cli_silences_library_progress_bars(capsys):
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    assert main(["models"]) == 0  # lists models; loads none
    assert are_progress_bars_disabled() and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert not transformers_logging.is_progress_bar_enabled()
    from eraselab.models import load_pipeline

    load_pipeline("miniworld")
    assert not diffusers_logging.is_progress_bar_enabled()


def test_erase_time_leaves_out_fingerprinting_and_is_zero_for_inference_time_methods(tiny_pipe, monkeypatch):
    import time

    import eraselab
    import eraselab.models

    real = eraselab.models.compute_fingerprint

    def slow_fingerprint(pipe, *args):  # stands in for hashing SD's 3.9 GB of weights
        time.sleep(3)
        return real(pipe, *args)

    monkeypatch.setattr(eraselab.models, "compute_fingerprint", slow_fingerprint)
    edit = eraselab.erase(tiny_pipe, "uce", ["circle"], progress=False)
    assert 0 < edit.seconds < 3
    for method in ("negprompt", "sld"):
        assert eraselab.erase(tiny_pipe, method, ["circle"], progress=False).seconds == 0.0


def test_a_preset_tuned_for_another_model_family_warns_once(tiny_pipe_factory, monkeypatch):
    import eraselab.errors
    from eraselab.errors import EraseLabWarning
    from eraselab.methods import build_request

    monkeypatch.setattr(eraselab.errors, "_warned", set())  # other tests may have said it in this process

    pipe = tiny_pipe_factory(0)  # a tiny UNet: preset auto is miniworld
    with pytest.warns(EraseLabWarning, match="preset sd was tuned for Stable Diffusion"):
        build_request("esd-x", ["circle"], pipe=pipe, preset="sd")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_request("esd-x", ["circle"], pipe=pipe)  # auto: no warning
        build_request("esd-u", ["circle"], pipe=pipe, preset="sd")  # said once already


def test_cli_prints_warnings_as_one_line(capsys):
    import warnings

    from eraselab.cli import show_warnings_as_one_line
    from eraselab.errors import EraseLabWarning

    before = warnings.showwarning
    show_warnings_as_one_line()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("sld does nothing here", EraseLabWarning, stacklevel=1)
    finally:
        warnings.showwarning = before
    assert capsys.readouterr().err == "warning: sld does nothing here\n"


def test_a_full_output_device_is_a_one_line_error_not_a_traceback():
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "eraselab.cli", "methods"], stdout=full,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot write the output") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("method, config, prompt, steps, expected", [
    ("sld", {"strength": "medium"}, "a cat", 2, "warm-up is 10 steps but sampling has 2"),
    ("sld", {"strength": "max"}, "a cat", 2, None),
    ("negprompt", {}, "circle", 2, "equals the prompt"),
    ("negprompt", {}, "a cat", 2, None),
])
def test_inference_time_methods_that_would_do_nothing_warn(tiny_pipe_factory, tmp_path, monkeypatch, method,
                                                           config, prompt, steps, expected):
    import warnings

    import eraselab
    import eraselab.errors
    from eraselab.errors import EraseLabWarning
    from eraselab.generate import generate
    from eraselab.probes import Probe
    from eraselab.store import RunStore

    monkeypatch.setattr(eraselab.errors, "_warned", set())
    pipe = tiny_pipe_factory(0)
    edit = eraselab.erase(pipe, method, ["circle"], preset="sd", progress=False, **config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(pipe, [Probe(prompt, seed=0, steps=steps)], RunStore(tmp_path), edit=edit, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, EraseLabWarning)]
    if expected is None:
        assert said == []
    else:
        assert len(said) == 1 and expected in said[0]
