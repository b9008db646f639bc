"""End-to-end bench → report on a tiny random pipeline, with a deterministic stand-in evaluator.

(The miniworld end-to-end bench with the oracle lives in test_demo.py.)"""
import json
import re

import numpy as np
import pytest

from eraselab.bench import BenchSpec, run_bench
from eraselab.errors import EraseLabError
from eraselab.evaluators.base import Evaluator, register_evaluator


@register_evaluator("brightness")
class BrightnessEvaluator(Evaluator):
    """Sees a probe's concept when the image is bright: a stand-in judge whose verdicts depend on pixels."""

    name = "brightness"
    version = "1"

    def judge(self, images, probes):
        return [
            {"labels": [p.concepts[0]] if p.concepts and np.asarray(im).mean() > 110 else [], "scores": {}}
            for im, p in zip(images, probes)
        ]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from eraselab.models import tiny_random_pipeline

    folder = tmp_path_factory.mktemp("tiny")
    tiny_random_pipeline(0).save_pretrained(str(folder))
    return folder


def _spec(model_dir, **kw):
    base = dict(model=str(model_dir), methods=("uce",), targets=("car",), suites=("see", "erasebench"),
                evaluator="brightness", seeds_per_prompt=1, steps=2)
    base.update(kw)
    return BenchSpec(**base)


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = run_bench(_spec(tiny_model_dir), out, say=lambda m: None, progress=False)
    return out, results


def test_bench_writes_results_with_provenance(bench_run):
    out, results = bench_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["results_hash"] == results["results_hash"]
    assert set(saved["methods"]) == {"uce"}
    assert saved["model"]["fingerprint"] and saved["evaluator"]["name"] == "brightness"
    assert {"torch", "diffusers"} <= set(saved["versions"])
    metrics = saved["methods"]["uce"]["metrics"]
    assert "erasebench.hm" in metrics and "target.recognition" in metrics
    aspects = {e["aspect"] for e in saved["images"]}
    assert {"target", "sibling", "parent", "unrelated"} <= aspects
    for e in saved["images"]:  # every image the table names exists
        for d in e["variants"].values():
            assert (out / d["image"]).exists()
    assert (out / "tables" / "metrics.csv").read_text().startswith("method,metric,value")


def test_second_bench_run_reuses_everything(bench_run, tiny_model_dir, monkeypatch):
    out, results = bench_run
    import eraselab.generate as gen
    import eraselab.methods as methods

    def boom(*a, **k):
        raise AssertionError("should have been cached")

    monkeypatch.setattr(methods, "erase", boom)
    monkeypatch.setattr(gen, "_denoise", boom)
    said = []
    again = run_bench(_spec(tiny_model_dir), out, say=said.append, progress=False)
    assert again["results_hash"] == results["results_hash"] and "nothing changed" in said[-1]
    # Without the stamp (run_stamp.py) each stage still reuses its own cache: edits, images, judgments.
    (out / "bench-stamp.json").unlink()
    said.clear()
    again = run_bench(_spec(tiny_model_dir), out, say=said.append, progress=False)
    assert again["results_hash"] == results["results_hash"] and not any("nothing changed" in m for m in said)


def test_report_is_escaped_and_complete(bench_run):
    from eraselab.report.html import write_report

    out, _ = bench_run
    results = json.loads((out / "results.json").read_text())
    results["images"][0]["prompt"] = "<script>alert(1)</script>"
    (out / "results.json").write_text(json.dumps(results))
    html = write_report(out).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert html.count('<tr class="method">') == 1
    for src in re.findall(r'src="([^"]+)"', html):
        assert (out / src).exists(), src
    assert (out / "report.md").read_text().startswith("# eraselab")


def test_bench_bad_input_is_refused_before_work(tiny_model_dir, tmp_path):
    with pytest.raises(EraseLabError, match="unknown method"):
        run_bench(_spec(tiny_model_dir, methods=("nope",)), tmp_path / "a", say=lambda m: None)
    with pytest.raises(EraseLabError, match="unknown suite"):
        run_bench(_spec(tiny_model_dir, suites=("nope",)), tmp_path / "b", say=lambda m: None)
    with pytest.raises(EraseLabError, match="unknown evaluator"):
        run_bench(_spec(tiny_model_dir, evaluator="nope"), tmp_path / "c", say=lambda m: None)
    with pytest.raises(EraseLabError, match="CA needs an anchor"):  # before uce would train
        run_bench(_spec(tiny_model_dir, methods=("uce", "ca"), targets=("spaceship",)), tmp_path / "d",
                  say=lambda m: None)
    assert not (tmp_path / "a").exists()


def test_missing_evaluator_weights_fail_before_the_model_loads_or_anything_is_erased(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    import eraselab.models

    def too_late(*args, **kwargs):
        raise AssertionError("the model was loaded before the evaluator was checked")

    monkeypatch.setattr(eraselab.models, "load_pipeline", too_late)
    with pytest.raises(EraseLabError, match="does not exist"):
        run_bench(_spec(tiny_model_dir, evaluator="clip:/nonexistent/clip-folder"), tmp_path / "r",
                  say=lambda m: None, progress=False)
    for bad in ("clip:", "nudenet:/some/folder"):
        with pytest.raises(EraseLabError, match="name the weights after the colon"):
            run_bench(_spec(tiny_model_dir, evaluator=bad), tmp_path / "r", say=lambda m: None)


def test_bench_judges_with_a_clip_model_from_a_local_folder(tiny_model_dir, tmp_path):
    from conftest import save_clip_folder, tiny_clip_model

    folder = save_clip_folder(tmp_path / "clip", *tiny_clip_model())
    spec = _spec(tiny_model_dir, evaluator=f"clip:{folder}", suites=("erasebench",), attention=False)
    results = run_bench(spec, tmp_path / "run", say=lambda m: None, progress=False)
    assert results["evaluator"]["name"] == "clip" and results["evaluator"]["config"]["model"] == str(folder)


def test_report_renders_in_headless_browser(bench_run, tmp_path):
    """The report loads in a real browser with no console errors, every image resolves, one row per method."""
    from report_browser import check_in_browser

    from eraselab.report.html import write_report

    out, _ = bench_run
    check_in_browser(write_report(out), tmp_path, methods=1)


@pytest.mark.slow
def test_two_identical_runs_with_every_method_have_equal_results_hashes(tiny_model_dir, tmp_path):
    """Measured durations (erase seconds, AP's candidate-search seconds) stay out of the hash: two runs of the
    same bench with every method, in two folders, agree."""
    from eraselab.methods import method_names

    words = tmp_path / "words.txt"
    words.write_text("\n".join(["apple", "house", "river", "cloud", "table", "horse", "bread", "stone"]))
    short = {"iterations": 2}
    searched = {**short, "vocabulary": str(words), "k_closest": 6, "num_centers": 3}
    config = {"esd-x": short, "esd-u": short, "esd-x-strict": short, "ap": searched, "age": searched,
              "ca": {**short, "anchor": "vehicle", "anchor_images": 4, "captions": 4, "batch_size": 2,
                     "sample_steps": 2},
              "rece": {"validation_per_class": 1, "validation_steps": 2},
              "advunlearn": {"iterations": 2, "warmup_iterations": 1, "attack_steps": 1},
              "spm": {"iterations": 2, "resolution": 16, "dynamic_resolution": False},
              "mace": {"steps": 2, "images": 2, "sample_steps": 2}, "receler": short}
    methods = tuple(method_names())
    spec = _spec(
        tiny_model_dir,
        methods=methods,
        method_config={m: c for m, c in config.items() if m in methods},
        suites=("erasebench",),
        attention=False,
    )
    first = run_bench(spec, tmp_path / "a", say=lambda m: None, progress=False)
    second = run_bench(spec, tmp_path / "b", say=lambda m: None, progress=False)
    assert set(first["methods"]) == set(methods)
    assert first["results_hash"] == second["results_hash"]


def test_variants_prepared_by_worker_processes_give_the_same_results(bench_run, tiny_model_dir, tmp_path):
    """--jobs 2: the original and the uce variant are prepared in two spawned processes (variant_jobs.py);
    the bench then finds every edit, image and attention map cached and writes the same results."""
    _, sequential = bench_run
    said = []
    parallel = run_bench(_spec(tiny_model_dir), tmp_path / "par", say=said.append, progress=False, jobs=2)
    assert any("in 2 worker processes" in m for m in said), said
    assert any(m.startswith("reusing the cached uce edit") for m in said), said  # made by a worker
    assert not any(m.startswith("generating") for m in said), said  # every image came from the workers
    assert parallel["results_hash"] == sequential["results_hash"]


def test_worker_plan_stays_in_one_process_where_workers_cannot_help():
    import torch

    from eraselab.models import SMALL_MODEL_PARAMETERS
    from eraselab.variant_jobs import parse_jobs, plan_workers

    class Pipe:
        def __init__(self, size):
            self.unet = torch.nn.Linear(size, 1, bias=False, device="meta")

    small, big = Pipe(10), Pipe(SMALL_MODEL_PARAMETERS + 1)
    assert plan_workers(2, small, "cpu", 4, ["uce"]) == 2
    assert plan_workers(8, small, "cpu", 3, ["uce", "ap"]) == 3  # never more workers than variants
    assert plan_workers(None, big, "cpu", 4, ["uce"]) == 1  # a large model: one process, all threads
    assert plan_workers(2, small, "cuda", 4, ["uce"]) == 1  # one device: one process
    assert plan_workers(2, small, "cpu", 1, []) == 1
    assert plan_workers(1, small, "cpu", 4, ["uce"]) == 1
    with pytest.raises(EraseLabError, match="--jobs"):
        parse_jobs("0")


def test_a_variant_failing_in_a_worker_ends_the_bench_without_waiting_for_the_others(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The failing variant's one-line error reaches the caller at once: the other worker's long esd-x erase is
    stopped (its edit is never written), not waited for."""
    import importlib
    import sys

    from eraselab.methods import METHODS

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # the method leaves with the test
    sys.modules.pop("planted_failure_method", None)
    importlib.import_module("planted_failure_method")
    spec = _spec(tiny_model_dir, methods=("esd-x", "fails-at-once"), suites=("see",), attention=False,
                 method_config={"esd-x": {"iterations": 20000}})
    with pytest.raises(EraseLabError, match="planted failure of a bench variant"):
        run_bench(spec, tmp_path / "run", say=lambda m: None, progress=False, jobs=2)
    assert not (tmp_path / "run" / "edits" / "esd-x" / "edit.safetensors").exists()


def test_a_method_defined_inside_a_function_is_prepared_in_the_bench_process():
    from eraselab.methods.base import Eraser, MethodConfig
    from eraselab.variant_jobs import importable

    class Local(Eraser):
        name = "local"
        Config = MethodConfig

    assert not importable(Local)  # a worker could not import it: the bench prepares its variants itself
    from eraselab.methods import get_method

    assert importable(get_method("uce"))
