"""`eraselab demo` end to end on miniworld (the README's main job): report in a real browser, warm re-run cached."""
import pytest

from eraselab.cli import main
from eraselab.models import miniworld_weights_dir

pytestmark = pytest.mark.skipif(not (miniworld_weights_dir() / "model_index.json").exists(),
                                reason="the miniworld weights are not shipped in this checkout")


def test_demo_runs_renders_and_resumes(tmp_path, monkeypatch, capsys):
    from report_browser import check_in_browser

    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "uce" in out and "esd-x" in out and "ap" in out
    page = tmp_path / "eraselab-demo" / "report.html"
    dom = check_in_browser(page, tmp_path, methods=3)
    assert "circle" in dom
    first = (tmp_path / "eraselab-demo" / "results.json").read_text()

    # A second run reuses every edit, image and judgment: no erasure and no UNet call happen.
    import eraselab.generate as gen
    import eraselab.methods as methods

    def must_not_run(*args, **kwargs):
        raise AssertionError("the warm demo recomputed something it had cached")

    import eraselab.metrics as metrics

    monkeypatch.setattr(methods, "erase", must_not_run)
    monkeypatch.setattr(gen, "_denoise", must_not_run)
    monkeypatch.setattr(metrics, "summarize", must_not_run)  # metrics are cached by what they depend on
    assert main(["demo"]) == 0
    assert (tmp_path / "eraselab-demo" / "results.json").read_text() == first
