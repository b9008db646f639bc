"""`eraselab demo` end to end on miniworld (the README's main job): report in a real browser, warm re-run
cached."""

import pytest

from eraselab.cli import main
from eraselab.models import miniworld_weights_dir

pytestmark = pytest.mark.skipif(not (miniworld_weights_dir() / "model_index.json").exists(),
                                reason="the miniworld weights are not shipped in this checkout")


# The default run checks every step of the demo on fewer images (4 per aspect instead of 12) and with three
# methods that need no training (esd-x and ap train for ~3.5 min of CPU together, the longest item of CI);
# the slow test runs exactly what README says, training methods included.
FAST = ["--precision", "35", "--methods", "uce,sld,negprompt"]


@pytest.mark.parametrize("options", [pytest.param(FAST, id="coarse"),
                                     pytest.param([], id="as-in-readme", marks=pytest.mark.slow)])
def test_demo_runs_renders_and_resumes(tmp_path, monkeypatch, capsys, options):
    from report_browser import check_in_browser

    monkeypatch.chdir(tmp_path)
    assert main(["demo", *options]) == 0
    out = capsys.readouterr().out
    methods = options[options.index("--methods") + 1].split(",") if "--methods" in options else [
        "uce", "esd-x", "ap"]
    assert "report:" in out and all(m in out for m in methods)
    page = tmp_path / "eraselab-demo" / "report.html"
    dom = check_in_browser(page, tmp_path, methods=3)
    assert "circle" in dom
    first = (tmp_path / "eraselab-demo" / "results.json").read_text()

    # A second run reuses the finished run: no erasure, no UNet call, no metric is computed.
    import eraselab.generate as gen
    import eraselab.methods as methods

    def must_not_run(*args, **kwargs):
        raise AssertionError("the warm demo recomputed something it had cached")

    import eraselab.metrics as metrics

    monkeypatch.setattr(methods, "erase", must_not_run)
    monkeypatch.setattr(gen, "_denoise", must_not_run)
    monkeypatch.setattr(metrics, "summarize", must_not_run)  # metrics are cached by what they depend on
    assert main(["demo", *options]) == 0
    assert "nothing changed since the last run" in capsys.readouterr().out
    assert (tmp_path / "eraselab-demo" / "results.json").read_text() == first

    # Without the run's stamp every stage still finds its own cache: the same results, nothing recomputed.
    (tmp_path / "eraselab-demo" / "bench-stamp.json").unlink()
    assert main(["demo", *options]) == 0
    assert "nothing changed" not in capsys.readouterr().out
    assert (tmp_path / "eraselab-demo" / "results.json").read_text() == first
