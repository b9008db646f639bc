"""Fault injection for `eraselab` CLI processes, used by tests/test_faults.py and benchmarks/faults.py.

Three things:
* a stand-in evaluator, `faults-brightness` (registered on import; no weights needed);
* counted fault moments: once `install()` has run, every instrumented moment of a run is an *event*; with
  ERASELAB_FAULT_LOG=FILE each event appends "index<TAB>stage<TAB>kind<TAB>detail" to FILE (so a reference run
  lists every moment a run has). ERASELAB_FAULT_AT picks the moment of the fault: an event index N, or
  KIND:TEXT for the first event of that kind whose detail contains TEXT (e.g. fsync:/store/images/).
  ERASELAB_FAULT_ACTION says what happens there: kill (default: SIGKILL), enospc (the write fails as on a full
  disk: OSError ENOSPC from a file write, "database or disk is full" from SQLite) or erofs (read-only file
  system). Events sit where a fault hurts most: inside an atomic write between its fsync and its rename,
  inside a SQLite transaction before COMMIT, after an erase or a denoised batch but before anything is
  stored, after the evaluator judged but before the rows are stored. The stage is the bench stage running at
  the time (erase, generate, judge, attention, report; "setup" outside those: store set-up, bench.json).
  Importing this module through ERASELAB_EXTRA_MODULES with ERASELAB_FAULT_LOG or ERASELAB_FAULT_AT set
  installs the instrumentation;
* a zygote (`python fault_injection.py zygote`): imports torch, diffusers and eraselab once, then forks one
  child per CLI command it is sent. Importing those libraries costs ~6 s of CPU per process, more than a whole
  bench run on the tiny model, so forking is what lets the fast test SIGKILL many real CLI processes in
  seconds. The zygote itself never runs torch code, so its children start clean (no OpenMP pool to inherit).
  Protocol, one JSON object per line on stdin, one reply per line on stdout:
      {"op": "start", "argv": [...], "env": {...}, "cwd": DIR, "out": FILE, "err": FILE} -> {"pid": PID}
      {"op": "wait", "pid": PID} -> {"pid": PID, "code": EXIT_CODE or null, "signal": SIGNAL or null}
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import time

import numpy as np

from eraselab.evaluators.base import Evaluator, register_evaluator

EVALUATOR = "faults-brightness"
_state = {"count": 0, "stage": "setup", "installed": False}


def event(kind: str, detail: str = "") -> None:
    if not _state["installed"]:
        return
    _state["count"] += 1
    n = _state["count"]
    log = os.environ.get("ERASELAB_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{n}\t{_state['stage']}\t{kind}\t{detail}\n")
    if _is_fault_moment(n, kind, detail):
        _state["fired"] = True
        action = os.environ.get("ERASELAB_FAULT_ACTION", "kill")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        code = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}[action]
        if kind == "commit":
            import sqlite3

            raise sqlite3.OperationalError(
                "database or disk is full" if code == errno.ENOSPC else "attempt to write a readonly database"
            )
        raise OSError(code, os.strerror(code))


def _is_fault_moment(n: int, kind: str, detail: str) -> bool:
    at = os.environ.get("ERASELAB_FAULT_AT", "")
    if not at or _state.get("fired"):
        return False
    if at.isdigit():
        return n == int(at)
    want_kind, _, text = at.partition(":")
    return kind == want_kind and text in detail


@register_evaluator(EVALUATOR)
class FaultsBrightnessEvaluator(Evaluator):
    """Sees a probe's concept when the image is bright: verdicts depend on the pixels, so a damaged or wrong
    image changes the results."""

    name = EVALUATOR
    version = "1"

    def judge(self, images, probes):
        rows = [
            {
                "labels": [p.concepts[0]] if p.concepts and float(np.asarray(im).mean()) > 110 else [],
                "scores": {"brightness": round(float(np.asarray(im).mean()), 3)},
            }
            for im, p in zip(images, probes)
        ]
        event("judge", str(len(rows)))
        return rows


def _in_stage(stage: str, fn):
    def wrapper(*args, **kwargs):
        before = _state["stage"]
        if before != "attention":  # attention maps come from a generation of their own: keep that stage name
            _state["stage"] = stage
        try:
            return fn(*args, **kwargs)
        finally:
            _state["stage"] = before

    return wrapper


def _after(kind: str, fn):
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        event(kind)
        return out

    return wrapper


def install() -> None:
    """Instrument the bench's stages and writes (idempotent)."""
    if _state["installed"]:
        return
    import eraselab.bench as bench
    import eraselab.generate as generate_module
    import eraselab.methods as methods
    import eraselab.report.html as report_html
    import eraselab.store as store_module

    real_fsync = os.fsync

    def fsync(fd):
        real_fsync(fd)
        try:
            detail = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            detail = "?"
        event("fsync", detail)  # the temp file is complete but not yet renamed over its target

    real_transaction = store_module.RunStore._transaction

    @contextlib.contextmanager
    def transaction(self):
        with real_transaction(self):
            yield
            event("commit")  # inside the transaction: a kill here must leave none of its rows

    bench.make_edits = _in_stage("erase", bench.make_edits)
    bench.judge = _in_stage("judge", bench.judge)
    bench.record_attention = _in_stage("attention", bench.record_attention)
    bench._write_outputs = _in_stage("report", bench._write_outputs)
    report_html.write_report = _in_stage("report", report_html.write_report)
    generate_module.generate = _in_stage("generate", generate_module.generate)
    generate_module._denoise = _after("denoise", generate_module._denoise)
    methods.erase = _after("erase", methods.erase)
    os.fsync = fsync
    store_module.RunStore._transaction = transaction
    _state["installed"] = True


def _wanted() -> bool:
    return bool(os.environ.get("ERASELAB_FAULT_LOG") or os.environ.get("ERASELAB_FAULT_AT"))


if _wanted():
    install()


# ---- checks after a fault ----------------------------------------------------------------------------------
def comparable_results(run_dir) -> dict:
    """results.json without the measured erase durations (the only field two correct runs may differ in)."""
    from pathlib import Path

    results = json.loads((Path(run_dir) / "results.json").read_text())
    for r in results.get("methods", {}).values():
        r.pop("seconds", None)
    return results


def _audit_store(folder, finished: bool) -> list[str]:
    import hashlib
    import sqlite3

    from PIL import Image

    problems: list[str] = []
    db = sqlite3.connect(str(folder / "store.sqlite"), timeout=60)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            problems.append(f"integrity_check: {check}")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        expected = {"meta", "runs", "probes", "images", "run_images", "evaluators", "judgments"}
        if (
            tables != expected
        ):  # the schema is made in one transaction: all of it or none (killed before COMMIT)
            return problems + ([f"partial schema: {sorted(tables)}"] if tables else [])
        for table, key in (
            ("images", "key"),
            ("probes", "key"),
            ("runs", "id"),
            ("run_images", "run_id, image_key"),
            ("judgments", "image_key, identity_hash"),
            ("evaluators", "identity_hash"),
        ):
            for row in db.execute(f"SELECT {key}, COUNT(*) FROM {table} GROUP BY {key} HAVING COUNT(*) > 1"):
                problems.append(f"duplicate {table} row {row}")
        orphan_queries = {
            "run_images without an image": "SELECT image_key FROM run_images WHERE image_key NOT IN "
            "(SELECT key FROM images)",
            "run_images without a run": "SELECT run_id FROM run_images WHERE run_id NOT IN "
            "(SELECT id FROM runs)",
            "judgments without an image": "SELECT image_key FROM judgments WHERE image_key NOT IN "
            "(SELECT key FROM images)",
            "judgments without an evaluator": "SELECT image_key FROM judgments WHERE identity_hash NOT IN "
            "(SELECT identity_hash FROM evaluators)",
            "images without a probe": "SELECT key FROM images WHERE probe_key NOT IN "
            "(SELECT key FROM probes)",
        }
        for what, query in orphan_queries.items():
            for row in db.execute(query):
                problems.append(f"{what}: {row[0]}")
        rows = list(db.execute("SELECT key, png_sha256, png_bytes FROM images"))
    finally:
        db.close()
    images_dir = folder / "images"
    for key, sha, size in rows:
        path = images_dir / key[:2] / f"{key}.png"
        try:
            data = path.read_bytes()
        except OSError:
            problems.append(f"image row {key} has no PNG file")
            continue
        if hashlib.sha256(data).hexdigest() != sha or len(data) != size:
            problems.append(f"PNG {key} fails its recorded sha256")
            continue
        try:
            Image.open(path).load()
        except Exception as exc:
            problems.append(f"PNG {key} does not decode: {exc}")
    if finished:
        claimed = {key for key, _, _ in rows}
        for path in images_dir.glob("*/*.png"):
            if path.stem not in claimed:
                problems.append(f"PNG file {path.name} has no row")
    return problems


def audit_run(run_dir, finished: bool = True) -> list[str]:
    """Problems in a bench run folder: duplicate or orphan store rows, images that fail their recorded hash or
    do not decode, a database that fails SQLite's integrity check, a results.json that is not whole JSON or
    names a missing image, a cached edit that does not load. `finished=True` (a run completed in this folder
    since the last fault) also counts PNG files that no row claims."""
    from pathlib import Path

    from eraselab.edit_cache import REQUEST_FILE
    from eraselab.edits import Edit
    from eraselab.errors import EraseLabError

    run_dir = Path(run_dir)
    problems = []
    if (run_dir / "store" / "store.sqlite").exists():
        problems += _audit_store(run_dir / "store", finished)
    results_path = run_dir / "results.json"
    if results_path.exists():
        try:
            results = json.loads(results_path.read_text())
        except ValueError as exc:
            problems.append(f"results.json is not whole JSON: {exc}")
        else:
            for entry in results.get("images", []):
                for variant in entry["variants"].values():
                    if not (run_dir / variant["image"]).exists():
                        problems.append(f"results.json names missing image {variant['image']}")
    for request in (run_dir / "edits").glob(f"*/{REQUEST_FILE}"):
        try:
            Edit.load(request.parent)
        except EraseLabError as exc:
            problems.append(f"cached edit {request.parent.name} does not load: {exc}")
    return problems


# ---- the lab: fixed inputs, a reference run, kill-and-resume ---------------------------------------------
SUITE_YAML = """name: faults
version: 1
templates: ["a photo of {np}"]
targets:
  car:
    sibling: [bus]
    composition: [red car]
    unrelated: [banana]
"""


def bench_argv(model, suite, out, steps: int = 2, methods: str = "uce") -> list[str]:
    return [
        "bench",
        "--model",
        str(model),
        "--methods",
        methods,
        "--target",
        "car",
        "--suites",
        str(suite),
        "--evaluator",
        EVALUATOR,
        "--seeds-per-prompt",
        "1",
        "--steps",
        str(steps),
        "--out",
        str(out),
    ]


class Lab:
    """A zygote, a tiny pipeline, a four-probe suite and an uninterrupted reference bench run (with the log of
    every fault moment it has), in `root`."""

    def __init__(self, root, methods: str = "uce"):
        from pathlib import Path

        from eraselab.models import tiny_random_pipeline

        self.root, self.methods = Path(root), methods
        self.model = self.root / "tiny"
        tiny_random_pipeline(0).save_pretrained(str(self.model))
        self.suite = self.root / "faults.yaml"
        self.suite.write_text(SUITE_YAML)
        here = os.path.dirname(os.path.abspath(__file__))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "ERASELAB_EXTRA_MODULES": "fault_injection",
            "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
        }
        self.zygote = Zygote(env=env)
        self.calls = 0
        self.reference = self.root / "reference"
        start = time.perf_counter()
        done = self.bench(self.reference, ERASELAB_FAULT_LOG=str(self.root / "ref.log"))
        self.reference_seconds = time.perf_counter() - start
        if done["code"] != 0:
            raise RuntimeError("the reference run failed: " + done["err"][-3000:])
        self.events = [line.split("\t") for line in (self.root / "ref.log").read_text().splitlines()]
        self.reference_results = comparable_results(self.reference)

    def argv(self, out, steps: int = 2) -> list[str]:
        return bench_argv(self.model, self.suite, out, steps=steps, methods=self.methods)

    def start(self, argv: list[str], **env):
        self.calls += 1
        out, err = self.root / f"call{self.calls}.out", self.root / f"call{self.calls}.err"
        pid = self.zygote.start(
            argv, str(out), str(err), env={k: str(v) for k, v in env.items()}, cwd=str(self.root)
        )
        return pid, out, err

    def finish(self, pid: int, out, err) -> dict:
        status = self.zygote.wait(pid)
        return {**status, "out": out.read_text(errors="replace"), "err": err.read_text(errors="replace")}

    def run(self, argv: list[str], **env) -> dict:
        return self.finish(*self.start(argv, **env))

    def bench(self, out, **env) -> dict:
        return self.run(self.argv(out), **env)

    def copy_of_reference(self, name: str):
        import shutil

        target = self.root / name
        shutil.copytree(self.reference, target)
        return target

    def events_by_stage(self) -> dict[str, list[int]]:
        by: dict[str, list[int]] = {}
        for index, stage, _, _ in self.events:
            by.setdefault(stage, []).append(int(index))
        return by

    def kill_and_resume(
        self, out, event: int | None = None, delay: float | None = None, resume_event: int | None = None
    ) -> dict:
        """SIGKILL a bench run in `out` at fault event `event` (or from outside after `delay` seconds), check
        what it left, optionally kill the first resume too (at `resume_event`), then resume to the end.
        Returns what happened: killed, problems after the kill, resume exit code, problems after the resume,
        whether results.json equals the reference (durations aside) and the stderr tail on failure."""
        if delay is not None:
            pid, o, e = self.start(self.argv(out))
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            first = self.finish(pid, o, e)
        else:
            first = self.bench(out, ERASELAB_FAULT_AT=event)
        outcome = {
            "killed": first["signal"] == signal.SIGKILL,
            "first_code": first["code"],
            "after_kill": audit_run(out, finished=False),
        }
        if resume_event is not None:
            second = self.bench(out, ERASELAB_FAULT_AT=resume_event)
            outcome["resume_killed"] = second["signal"] == signal.SIGKILL
            outcome["after_kill"] += audit_run(out, finished=False)
        final = self.bench(out)
        outcome["resume_code"] = final["code"]
        outcome["problems"] = audit_run(out) if final["code"] == 0 else ["resume failed"]
        outcome["same_results"] = final["code"] == 0 and comparable_results(out) == self.reference_results
        if final["code"] != 0 or not outcome["same_results"]:
            outcome["stderr"] = final["err"][-2000:]
        return outcome


# ---- zygote ------------------------------------------------------------------------------------------------
def _child(request: dict) -> None:
    """In the forked child: become `eraselab <argv>` with the given environment, then exit with its status."""
    code = 70
    try:
        os.chdir(request.get("cwd") or os.getcwd())
        os.environ.update(request.get("env") or {})
        for fd, path in ((1, request["out"]), (2, request["err"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        if _wanted():
            install()
        from eraselab.cli import main

        code = main(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def zygote() -> None:
    import diffusers  # noqa: F401  (the expensive imports, done once for every child)
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionPipeline  # noqa: F401

    import eraselab.bench  # noqa: F401
    import eraselab.cli  # noqa: F401
    import eraselab.evaluators  # noqa: F401
    import eraselab.generate  # noqa: F401
    import eraselab.methods  # noqa: F401
    import eraselab.report.html  # noqa: F401

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(request)
            print(json.dumps({"pid": pid}), flush=True)
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            print(
                json.dumps(
                    {
                        "pid": request["pid"],
                        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    }
                ),
                flush=True,
            )
        elif request["op"] == "exit":
            return


class Zygote:
    """The test side of the zygote: start CLI children, kill them, wait for them."""

    def __init__(self, env: dict | None = None):
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            bufsize=1,
        )
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("the fault-injection zygote did not start")

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(
        self, argv: list[str], out: str, err: str, env: dict | None = None, cwd: str | None = None
    ) -> int:
        return self._ask({"op": "start", "argv": argv, "env": env or {}, "cwd": cwd, "out": out, "err": err})[
            "pid"
        ]

    def wait(self, pid: int) -> dict:
        return self._ask({"op": "wait", "pid": pid})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()


if __name__ == "__main__" and sys.argv[1:] == ["zygote"]:
    sys.modules["fault_injection"] = sys.modules["__main__"]  # ERASELAB_EXTRA_MODULES finds this very module
    zygote()
