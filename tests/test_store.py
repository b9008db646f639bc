"""The run store: WAL SQLite, files-before-rows, checksums, judgments, and several processes sharing one
store."""

import multiprocessing as mp
import sqlite3

import pytest

from eraselab.errors import EraseLabError
from eraselab.probes import Probe
from eraselab.store import RunStore, probe_key


def _entry(key, probe, png=b"\x89PNG fake bytes"):
    return {"key": key, "png": png + key.encode(), "probe": probe, "model_fingerprint": "m" * 16,
            "edit_hash": "none", "config": {"sampler": "ddim"}, "producer": {"pid": 1}}


def _rows(store, table):
    return store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_store_uses_wal_and_records_images_with_checksums(tmp_path):
    store = RunStore(tmp_path / "s")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    probe = Probe("a cat", seed=3)
    store.put_images([_entry("ab" * 16, probe)])
    store.put_images([_entry("ab" * 16, probe)])  # same key again: still one row
    assert _rows(store, "images") == 1 and _rows(store, "probes") == 1
    record = store.image_record("ab" * 16)
    assert record["probe_key"] == probe_key(probe) and record["config"] == {"sampler": "ddim"}
    path = store.image_path("ab" * 16)
    assert path.parent.name == "ab" and path.read_bytes().endswith(("ab" * 16).encode())
    assert store.verify_image("ab" * 16)
    assert store.probe(probe_key(probe)) == probe


def test_truncated_or_corrupted_png_is_detected(tmp_path):
    store = RunStore(tmp_path)
    keys = ["aa" * 16, "bb" * 16, "cc" * 16]
    store.put_images([_entry(k, Probe("p", seed=i)) for i, k in enumerate(keys)])
    data = store.image_path(keys[0]).read_bytes()
    store.image_path(keys[0]).write_bytes(data[:5])                       # truncated
    store.image_path(keys[1]).write_bytes(data[:-1] + b"X")                # same length, one byte changed
    ok, damaged = store.complete_images(keys + ["dd" * 16])
    assert ok == {keys[2]} and damaged == {keys[0], keys[1]}
    assert not store.verify_image("dd" * 16)  # no row at all


def test_file_is_written_before_the_row(tmp_path, monkeypatch):
    """A writer killed after the PNG but before the INSERT leaves a file and no row (never the reverse)."""
    store = RunStore(tmp_path)
    real_execute = store._db.executemany

    class Killed(Exception):
        pass

    def die_on_insert(sql, rows):
        if "INTO images" in sql:
            raise Killed
        return real_execute(sql, rows)

    monkeypatch.setattr(store, "_db", _Proxy(store._db, executemany=die_on_insert))
    with pytest.raises(Killed):
        store.put_images([_entry("ee" * 16, Probe("p"))])
    assert store.image_path("ee" * 16).exists()
    monkeypatch.undo()
    assert store.known_images(["ee" * 16]) == {} and _rows(store, "images") == 0


class _Proxy:
    def __init__(self, inner, **overrides):
        self._inner, self._overrides = inner, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._inner, name)


def test_judgments_round_trip_one_row_per_image_and_identity(tmp_path):
    store = RunStore(tmp_path)
    ident = {"name": "clip", "version": "1", "threshold": 0.5}
    store.put_judgments(ident, "h1", {"k1": {"label": "cat", "score": 0.9}, "k2": {"label": "dog"}})
    store.put_judgments(ident, "h1", {"k1": {"label": "cat", "score": 0.8}})  # re-judged: replaced
    store.put_judgments({"name": "oracle"}, "h2", {"k1": {"label": "x"}})
    assert store.get_judgments("h1", ["k1", "k2", "k3"]) == {"k1": {"label": "cat", "score": 0.8},
                                                             "k2": {"label": "dog"}}
    assert store.get_judgments("h2", ["k1", "k2"]) == {"k1": {"label": "x"}}
    assert _rows(store, "judgments") == 3
    assert store.evaluator_identity("h1") == ident
    many = {f"k{i}": {"i": i} for i in range(1200)}  # more keys than one SQL statement may bind
    store.put_judgments(ident, "h3", many)
    assert store.get_judgments("h3", list(many)) == many


def test_runs_are_idempotent_and_link_images_once(tmp_path):
    store = RunStore(tmp_path)
    store.start_run("r1", {"a": 1}, "fp", "none")
    store.start_run("r1", {"a": 2}, "fp", "none")
    assert store.run("r1")["config"] == {"a": 1} and store.runs() == ["r1"]
    store.link_run_images("r1", ["k1", "k2"])
    store.link_run_images("r1", ["k2", "k3"])
    assert store.run_image_keys("r1") == ["k1", "k2", "k3"]
    assert "torch" in store.run("r1")["versions"]


def test_unreadable_database_gives_one_line_error(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EraseLabError, match="not a readable eraselab store"):
        RunStore(tmp_path)


def _writer(folder, start, count, queue):
    try:
        store = RunStore(folder)
        for i in range(start, start + count):
            key = f"{i % 50:02d}" + f"{i:030d}"
            store.put_images([_entry(key, Probe("p", seed=i % 50))])
            store.put_judgments({"name": "e"}, "h", {key: {"i": i}})
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 — any failure is reported to the parent, which asserts
        queue.put(repr(exc))


def test_two_processes_share_a_store_without_duplicates(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    # Overlapping ranges: both processes write keys 25..49 (the same images from two writers).
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, 50, queue)) for s in (0, 25)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok", "ok"]
    db = sqlite3.connect(str(tmp_path / "store.sqlite"))
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM images").fetchone() == (75, 75)
    assert db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 75
    assert all(RunStore(tmp_path).verify_image(k) for (k,) in db.execute("SELECT key FROM images"))


def _open_together(folder, barrier, results, slot):
    barrier.wait()
    try:
        with RunStore(folder) as store:
            store.start_run(f"run{slot}", {"slot": slot}, "fp", "none")
        results[slot] = "ok"
    except Exception as exc:  # noqa: BLE001 — any failure is reported to the parent, which asserts on it
        results[slot] = repr(exc)


def test_processes_creating_one_store_at_the_same_moment_all_succeed(tmp_path):
    """Switching a new database to WAL fails at once with "database is locked" when another process opens it
    at the same moment (SQLite's busy timeout does not cover it); the store must retry, not fail the shard."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for attempt in range(15):
        folder = tmp_path / f"store{attempt}"
        barrier, results = ctx.Barrier(3), ctx.Manager().dict()
        procs = [ctx.Process(target=_open_together, args=(folder, barrier, results, i)) for i in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert dict(results) == {0: "ok", 1: "ok", 2: "ok"}, (attempt, dict(results))
        assert sorted(RunStore(folder).runs()) == ["run0", "run1", "run2"]
