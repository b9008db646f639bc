"""Reliability under faults: SIGKILL at random moments, disk full, read-only output, two runs at once,
corrupted cache files. Every check runs the real CLI (`eraselab bench` / `eraselab report`) in child processes
forked from a zygote (tests/fault_injection.py) on a tiny random pipeline with a stand-in evaluator.

The kill moments are random (seed printed in every failure; replay with ERASELAB_FAULT_SEED=N). The long
version with >= 20 kills is benchmarks/faults.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_injection import Lab, audit_run, comparable_results  # noqa: E402

SEED = int(os.environ.get("ERASELAB_FAULT_SEED", random.SystemRandom().randrange(10**6)))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("faults"))
    yield lab
    lab.zygote.close()


def one_error_line(result: dict) -> str:
    """The run failed cleanly: exit 2, exactly one `error:` line, no traceback. Returns the line."""
    err = result["err"]
    assert result["signal"] is None and result["code"] == 2, (result, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def assert_same_as_reference(lab: Lab, out: Path, context: str) -> None:
    assert comparable_results(out) == lab.reference_results, context
    saved = json.loads((out / "results.json").read_text())
    assert saved["results_hash"] == lab.reference_results["results_hash"], context
    assert audit_run(out) == [], context


# ---- SIGKILL -----------------------------------------------------------------------------------------------
def test_sigkill_at_random_moments_then_resume(lab):
    """One random moment in each bench stage (erase, generation, judging, attention maps, report writing) and
    one kill from outside at a random time: the killed run leaves a consistent folder, and a re-run completes
    with results equal to the uninterrupted reference run's."""
    rng = random.Random(SEED)
    by_stage = lab.events_by_stage()
    stages = ("erase", "generate", "judge", "attention", "report")
    assert set(stages) <= set(by_stage), by_stage.keys()
    moments = [(stage, rng.choice(by_stage[stage]), None) for stage in stages]
    moments.append(("timed", None, rng.uniform(0.2, 0.8) * lab.reference_seconds))
    killed = 0
    for n, (stage, event, delay) in enumerate(moments):
        context = f"seed {SEED}, kill {n} during {stage} at event {event} / after {delay} s"
        outcome = lab.kill_and_resume(lab.root / f"kill{n}", event=event, delay=delay)
        if delay is None:
            assert outcome["killed"], context
        killed += outcome["killed"]
        assert outcome["after_kill"] == [], context
        assert outcome["resume_code"] == 0 and outcome["problems"] == [], (context, outcome)
        assert outcome["same_results"], (context, outcome)
        assert_same_as_reference(lab, lab.root / f"kill{n}", context)
    assert killed >= 5


def test_sigkill_while_writing_the_report(lab):
    run = lab.copy_of_reference("report_kill")
    log = lab.root / "report.log"
    first = lab.run(["report", "--run", str(run)], ERASELAB_FAULT_LOG=str(log))
    assert first["code"] == 0, first["err"][-2000:]
    expected = (run / "report.html").read_text()
    writes = [int(line.split("\t")[0]) for line in log.read_text().splitlines() if "\tfsync\t" in line]
    assert writes, "the report wrote nothing through the atomic writer"
    for event in random.Random(SEED).sample(writes, min(2, len(writes))):
        # An unchanged report is kept as it is (its stamp): drop the stamp so that the page is written again.
        (run / ".report-stamp.json").unlink(missing_ok=True)
        killed = lab.run(["report", "--run", str(run)], ERASELAB_FAULT_AT=event)
        assert killed["signal"] == signal.SIGKILL
        again = lab.run(["report", "--run", str(run)])
        assert again["code"] == 0, again["err"][-2000:]
        assert (run / "report.html").read_text() == expected
    from PIL import Image

    for png in (run / "report_assets").glob("*.png"):
        Image.open(png).load()  # no truncated figure survives


# ---- disk full, read-only ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "where", ["fsync:tables/", "fsync:/store/images/", "commit:", "fsync:results.json", "fsync:edits/"]
)
def test_disk_full_is_one_clear_line_and_keeps_earlier_results(lab, where):
    """ENOSPC from a patched writer (or SQLite's "database or disk is full") at one write of a run that has
    new work to do (steps 3) in a folder holding a finished run."""
    run = lab.copy_of_reference("full_" + where.replace(":", "_").replace("/", "_").replace(".", "_"))
    before = (run / "results.json").read_bytes()
    argv = lab.argv(run, steps=3)
    if where == "fsync:edits/":
        argv += ["--config", "uce.lam=0.3"]  # a new edit must be written
    failed = lab.run(argv, ERASELAB_FAULT_AT=where, ERASELAB_FAULT_ACTION="enospc")
    line = one_error_line(failed)
    assert "space" in line or "full" in line, line
    assert (run / "results.json").read_bytes() == before
    assert audit_run(run, finished=False) == []
    again = lab.run(argv)  # space freed: the run completes
    assert again["code"] == 0, again["err"][-2000:]
    assert audit_run(run) == []


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path("/tmp") / f"eraselab-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    finally:
        probe.rmdir()


def test_real_full_disk_on_a_small_tmpfs(lab, tmp_path):
    """A real full file system (a tmpfs too small for the run): every write path, SQLite's included."""
    if not _can_mount():
        pytest.skip("needs root with mount rights (a tmpfs); the patched-writer test covers the code paths")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], check=True)
    try:
        run = mount / "run"
        failed = lab.bench(run)
        line = one_error_line(failed)
        assert "space" in line or "full" in line, line
        assert audit_run(run, finished=False) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _make_read_only(folder: Path, stack: list) -> str:
    """Make `folder` unwritable: a read-only bind mount as root (root ignores permission bits), else chmod.
    Returns how, or "" when neither works."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        stack.append(lambda: [p.chmod(p.stat().st_mode | 0o200) for p in [folder, *folder.rglob("*")]])
        return "chmod"
    if not _can_mount():
        return ""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    stack.append(lambda: subprocess.run(["umount", str(folder)], check=True))
    subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
    return "mount"


@pytest.mark.parametrize("command", ["bench", "report", "evaluate"])
def test_read_only_output_folder(lab, command):
    run = lab.copy_of_reference(f"readonly_{command}")
    argv = {
        "bench": lab.argv(run),
        "report": ["report", "--run", str(run)],
        "evaluate": ["evaluate", "--run", str(run)],
    }[command]
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    undo: list = []
    how = _make_read_only(run, undo)
    try:
        if how:
            failed = lab.run(argv)
        else:  # root without mount rights: the same error paths, reached through a patched writer
            failed = lab.run(argv, ERASELAB_FAULT_AT="fsync:", ERASELAB_FAULT_ACTION="erofs")
        line = one_error_line(failed)
        assert "read-only" in line.lower() or "permission" in line.lower() or "writable" in line, line
    finally:
        for fn in reversed(undo):
            fn()
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    assert audit_run(run) == []


# ---- two runs at once --------------------------------------------------------------------------------------
def test_two_bench_runs_on_one_folder(lab):
    out = lab.root / "concurrent"
    first = lab.start(lab.argv(out))
    second = lab.start(lab.argv(out))
    results = [lab.finish(*first), lab.finish(*second)]
    # The store is built to be shared (WAL, busy timeout, INSERT OR IGNORE, per-process temp names), so both
    # runs must succeed; a refusal would be allowed by the spec but would mean that sharing broke.
    assert [r["code"] for r in results] == [0, 0], [r["err"][-1500:] for r in results]
    assert_same_as_reference(lab, out, "two runs at once")


# ---- corrupted cache files ---------------------------------------------------------------------------------
def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_images_are_detected_and_regenerated(lab):
    run = lab.copy_of_reference("corrupt_images")
    pngs = sorted((run / "store" / "images").glob("*/*.png"))
    truncated, flipped = pngs[0], pngs[-1]
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])
    _flip_byte(flipped, len(flipped.read_bytes()) // 2)
    assert audit_run(run) != []  # the audit sees the damage …
    result = lab.bench(run)
    assert result["code"] == 0, result["err"][-2000:]
    assert "failed their sha256 check" in result["err"]  # … the run reports it …
    assert_same_as_reference(lab, run, "corrupted images")  # … and regenerates the same pixels


@pytest.mark.parametrize("damage", ["tensor_bytes", "truncated_tensors", "garbled_json", "nan"])
def test_corrupted_edit_is_detected_and_rebuilt(lab, damage):
    run = lab.copy_of_reference(f"corrupt_edit_{damage}")
    folder = run / "edits" / "uce"
    tensors = folder / "edit.safetensors"
    if damage == "tensor_bytes":
        _flip_byte(tensors, -5)  # inside the last tensor's data
    elif damage == "truncated_tensors":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "garbled_json":
        (folder / "edit.json").write_text('{"method": "uce", ')
    else:
        from safetensors.torch import load, save

        values = load(tensors.read_bytes())
        name = sorted(values)[0]
        values[name] = values[name].clone()
        values[name].view(-1)[0] = float("nan")
        tensors.write_bytes(save(values))
    result = lab.bench(run)
    assert result["code"] == 0, result["err"][-2000:]
    said = " ".join(result["out"].split())  # rich wraps long lines at the terminal width
    assert "is unusable" in said and "making it again" in said, said[-2000:]
    assert_same_as_reference(lab, run, f"corrupted edit ({damage})")
