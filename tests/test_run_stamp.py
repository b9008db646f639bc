"""A finished bench run is reused only while nothing it depends on changed (run_stamp.py)."""
import json
import os

from eraselab.bench import BenchSpec, results_hash
from eraselab.run_stamp import STAMP, reusable_results, signature, write_stamp


def fake_model(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "weights.safetensors").write_bytes(b"0123")
    return folder


def finished_run(tmp_path, spec):
    run = tmp_path / "run"
    run.mkdir()
    results = {"methods": {"uce": {"metrics": {"target.recognition": 12.5}}}}
    results["results_hash"] = results_hash(results)
    (run / "results.json").write_text(json.dumps(results))
    sig = signature(spec)
    write_stamp(run, sig, results)
    return run, results


def test_an_unchanged_run_is_reused_and_any_changed_input_is_not(tmp_path):
    spec = BenchSpec(model=str(fake_model(tmp_path)), methods=("uce",))
    run, results = finished_run(tmp_path, spec)
    assert reusable_results(run, signature(spec)) == results

    assert reusable_results(run, signature(BenchSpec(model=spec.model, methods=("uce", "esd-x")))) is None
    assert (
        reusable_results(run, signature(BenchSpec(model=spec.model, methods=("uce",), base_seed=1))) is None
    )
    weights = tmp_path / "model" / "unet" / "weights.safetensors"
    weights.write_bytes(b"01234")  # retrained weights: another size (and time)
    assert reusable_results(run, signature(spec)) is None


def test_a_touched_model_file_or_suite_file_changes_the_signature(tmp_path):
    model = fake_model(tmp_path)
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\n")
    spec = BenchSpec(model=str(model), suites=(str(suite),))
    before = signature(spec)
    st = suite.stat()
    os.utime(suite, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert signature(spec) != before


def test_an_edited_results_file_or_a_missing_stamp_is_not_reused(tmp_path):
    spec = BenchSpec(model=str(fake_model(tmp_path)))
    run, results = finished_run(tmp_path, spec)
    edited = dict(results, methods={"uce": {"metrics": {"target.recognition": 0.0}}})
    (run / "results.json").write_text(json.dumps(edited))
    assert reusable_results(run, signature(spec)) is None
    (run / "results.json").write_text(json.dumps(results))
    assert reusable_results(run, signature(spec)) == results
    (run / STAMP).unlink()
    assert reusable_results(run, signature(spec)) is None


def test_an_uncached_hub_model_is_never_skipped():
    assert signature(BenchSpec(model="eraselab-tests/never-downloaded-model")) is None


def test_a_changed_stored_image_or_edit_is_not_reused(tmp_path):
    spec = BenchSpec(model=str(fake_model(tmp_path)))
    run = tmp_path / "run"
    png = run / "store" / "images" / "ab" / "abc.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"png")
    (run / "edits" / "uce").mkdir(parents=True)
    (run / "edits" / "uce" / "edit.json").write_text("{}")
    results = {"methods": {}}
    results["results_hash"] = results_hash(results)
    (run / "results.json").write_text(json.dumps(results))
    write_stamp(run, signature(spec), results)
    assert reusable_results(run, signature(spec)) == results
    png.write_bytes(b"pn")  # truncated
    assert reusable_results(run, signature(spec)) is None
    write_stamp(run, signature(spec), results)
    (run / "edits" / "uce" / "edit.json").write_text('{"garbled": ')
    assert reusable_results(run, signature(spec)) is None
