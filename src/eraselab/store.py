"""The run store: a SQLite database (WAL) of runs, probes, images and judgments, next to content-addressed
PNGs.

Layout of a store folder:
    store.sqlite                      runs, probes, images, run_images, evaluators, judgments
    images/<key[:2]>/<key>.png        one PNG per image key, written atomically

Crash safety comes from the order of writes: a PNG is written completely (temp file + rename) before its row
is inserted, so a row never points at a partial file; a file without a row (killed between the two) is simply
generated again. The PNG's sha256 is recorded so a file damaged later is detected and regenerated. Several
processes (shards of one run, or independent runs) may share one store: SQLite's WAL mode lets readers run
beside one writer, busy_timeout makes writers wait for each other, and INSERT OR IGNORE on unique keys means
no row is ever duplicated.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from .atomic import atomic_write_bytes
from .errors import EraseLabError
from .provenance import library_versions, sha256_hex, stable_json

DB_NAME = "store.sqlite"
IMAGES_DIR = "images"
SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 120_000
_SQL_VARS = 500  # stay well under SQLite's limit on bound parameters per statement
_STALE_TEMP_SECONDS = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, config TEXT NOT NULL, model_fingerprint TEXT NOT NULL,
    edit_hash TEXT NOT NULL, versions TEXT NOT NULL, finished REAL);
CREATE TABLE IF NOT EXISTS probes (key TEXT PRIMARY KEY, probe TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    key TEXT PRIMARY KEY, probe_key TEXT NOT NULL, model_fingerprint TEXT NOT NULL, edit_hash TEXT NOT NULL,
    config TEXT NOT NULL, png_sha256 TEXT NOT NULL, png_bytes INTEGER NOT NULL, producer TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS run_images (
    run_id TEXT NOT NULL, image_key TEXT NOT NULL, UNIQUE (run_id, image_key));
CREATE TABLE IF NOT EXISTS evaluators (
    identity_hash TEXT PRIMARY KEY, name TEXT NOT NULL, identity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS judgments (
    image_key TEXT NOT NULL, evaluator TEXT NOT NULL, identity_hash TEXT NOT NULL, row TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (image_key, identity_hash));
"""


def probe_key(probe) -> str:
    """Identity of a probe including its labels (the image key only covers what decides the pixels)."""
    return sha256_hex(stable_json(probe.to_dict()))[:32]


class _Connection(sqlite3.Connection):
    """A connection whose failures a user can fix (full disk, read-only folder, a store locked for minutes)
    are one-line EraseLabErrors instead of tracebacks.

    SQLite's busy timeout does not cover every lock: switching a new database to WAL while another process
    opens it, or a reader meeting a WAL recovery, fails at once with "database is locked". A statement outside
    a transaction either happened completely or not at all, so such statements are retried until the same
    deadline; inside a transaction (held with BEGIN IMMEDIATE) the lock is already ours."""

    def _retrying(self, call, *args):
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        delay = 0.01
        while True:
            try:
                return call(*args)
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or self.in_transaction or time.monotonic() > deadline:
                    raise _user_error(exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def execute(self, *args):
        return self._retrying(super().execute, *args)

    def executemany(self, *args):
        return self._retrying(super().executemany, *args)


def _user_error(exc: sqlite3.OperationalError) -> Exception:
    text = str(exc)
    if "disk is full" in text:
        return EraseLabError(
            f"the store's disk is full ({text}); free disk space or choose another --out folder "
            "(earlier results are intact)"
        )
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return EraseLabError(
            f"cannot write the store ({text}); choose a writable --out folder (earlier results are intact)"
        )
    if "locked" in text:
        return EraseLabError(
            f"the store is locked by another process for too long ({text}); wait for the other "
            "eraselab run to finish or choose another --out folder"
        )
    return exc


def _chunks(items: list, size: int = _SQL_VARS):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class RunStore:
    """A store folder; open one per process (SQLite connections are not shared across processes)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / IMAGES_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise EraseLabError(
                f"cannot create the store folder {self.folder}: {exc.strerror}; choose a writable "
                "--out folder"
            ) from exc
        self.db_path = self.folder / DB_NAME
        try:
            # Autocommit (isolation_level=None): transactions are opened explicitly where several rows belong
            # together, so no write lock is held between calls (other shards would wait on it).
            self._db = sqlite3.connect(
                str(self.db_path),
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
                factory=_Connection,
            )
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last transactions but never corrupts the database;
            # lost rows are regenerated (their PNGs, written with fsync, are simply rewritten).
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            version = self._db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise EraseLabError(
                f"{self.db_path} is not a readable eraselab store ({exc}); choose another --out "
                "folder or move the damaged one away"
            ) from exc
        if int(version) != SCHEMA_VERSION:
            raise EraseLabError(
                f"{self.db_path} has store schema {version}, this eraselab reads {SCHEMA_VERSION}; "
                "use a new --out folder or the eraselab version that wrote it"
            )
        self._remove_stale_temp_files()

    # ---- plumbing ------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self):
        # BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails half-way on a lock
        # upgrade.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException as exc:
            if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise _user_error(exc) from exc
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _remove_stale_temp_files(self) -> None:
        """Temp files left by killed writers; recent ones may belong to a live process, so only old ones
        go."""
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for tmp in (self.folder / IMAGES_DIR).glob("*/.*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass

    # ---- runs ----------------------------------------------------------------------------------------------
    def start_run(self, run_id: str, config: dict, model_fingerprint: str, edit_hash: str) -> str:
        """Record a run (idempotent: starting the same run id again, e.g. to resume it, keeps the first
        record)."""
        self._db.execute(
            (
                "INSERT OR IGNORE INTO runs (id, created, config, model_fingerprint, edit_hash, versions)"
                " VALUES (?, ?, ?, ?, ?, ?)"
            ),
            (
                run_id,
                time.time(),
                stable_json(config),
                model_fingerprint,
                edit_hash,
                stable_json(library_versions()),
            ),
        )
        return run_id

    def finish_run(self, run_id: str) -> None:
        self._db.execute("UPDATE runs SET finished=? WHERE id=?", (time.time(), run_id))

    def run(self, run_id: str) -> dict | None:
        row = self._db.execute("SELECT id, created, config, model_fingerprint, edit_hash, versions, finished "
                               "FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "created": row[1], "config": json.loads(row[2]), "model_fingerprint": row[3],
                "edit_hash": row[4], "versions": json.loads(row[5]), "finished": row[6]}

    def runs(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM runs ORDER BY created")]

    def link_run_images(self, run_id: str, image_keys: Iterable[str]) -> None:
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO run_images (run_id, image_key) VALUES (?, ?)",
                                 [(run_id, k) for k in image_keys])

    def run_image_keys(self, run_id: str) -> list[str]:
        return [
            r[0]
            for r in self._db.execute(
                "SELECT image_key FROM run_images WHERE run_id=? ORDER BY rowid", (run_id,)
            )
        ]

    # ---- probes --------------------------------------------------------------------------------------------
    def put_probes(self, probes) -> list[str]:
        keys = [probe_key(p) for p in probes]
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO probes (key, probe) VALUES (?, ?)",
                                 [(k, stable_json(p.to_dict())) for k, p in zip(keys, probes)])
        return keys

    def probe(self, key: str):
        from .probes import Probe

        row = self._db.execute("SELECT probe FROM probes WHERE key=?", (key,)).fetchone()
        return None if row is None else Probe.from_dict(json.loads(row[0]))

    # ---- images --------------------------------------------------------------------------------------------
    def image_path(self, key: str) -> Path:
        return self.folder / IMAGES_DIR / key[:2] / f"{key}.png"

    def put_images(self, entries: list[dict]) -> None:
        """Store generated images. Each entry: key, png (bytes), probe, model_fingerprint, edit_hash, config
        (dict), producer (dict). Files first, then all rows in one transaction."""
        rows = []
        for e in entries:
            atomic_write_bytes(self.image_path(e["key"]), e["png"])
            rows.append((e["key"], probe_key(e["probe"]), e["model_fingerprint"], e["edit_hash"],
                         stable_json(e["config"]), hashlib.sha256(e["png"]).hexdigest(), len(e["png"]),
                         stable_json(e["producer"]), time.time()))
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO probes (key, probe) VALUES (?, ?)",
                [(probe_key(e["probe"]), stable_json(e["probe"].to_dict())) for e in entries],
            )
            # An existing row means this image was regenerated after its file was damaged: keep the row (one
            # per key) and refresh the checksum, since PNG encoders may differ between library versions.
            self._db.executemany(
                (
                    "INSERT INTO images (key, probe_key, model_fingerprint, edit_hash, config, png_sha256, "
                    "png_bytes, producer, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO "
                    "UPDATE SET png_sha256=excluded.png_sha256, png_bytes=excluded.png_bytes"
                ),
                rows,
            )

    def image_record(self, key: str) -> dict | None:
        row = self._db.execute(
            (
                "SELECT key, probe_key, model_fingerprint, edit_hash, config, png_sha256, png_bytes, "
                "producer, created FROM images WHERE key=?"
            ),
            (key,),
        ).fetchone()
        if row is None:
            return None
        return {"key": row[0], "probe_key": row[1], "model_fingerprint": row[2], "edit_hash": row[3],
                "config": json.loads(row[4]), "png_sha256": row[5], "png_bytes": row[6],
                "producer": json.loads(row[7]), "created": row[8]}

    def known_images(self, keys: Iterable[str]) -> dict[str, str]:
        """image key → recorded PNG sha256, for the keys that have a row."""
        keys = list(dict.fromkeys(keys))
        found = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            found.update(
                self._db.execute(f"SELECT key, png_sha256 FROM images WHERE key IN ({marks})", chunk)
            )
        return found

    def verify_image(self, key: str, expected_sha256: str | None = None) -> bool:
        """True when the PNG exists and its bytes have the recorded sha256 (False for a missing row too)."""
        if expected_sha256 is None:
            expected_sha256 = self.known_images([key]).get(key)
            if expected_sha256 is None:
                return False
        try:
            data = self.image_path(key).read_bytes()
        except OSError:
            return False
        return hashlib.sha256(data).hexdigest() == expected_sha256

    def complete_images(self, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """(keys whose row exists and whose PNG verifies, keys whose row exists but whose PNG is missing or
        damaged). Keys with no row are in neither set."""
        ok, damaged = set(), set()
        for key, sha in self.known_images(keys).items():
            (ok if self.verify_image(key, sha) else damaged).add(key)
        return ok, damaged

    def image_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def load_png(self, key: str) -> bytes:
        try:
            return self.image_path(key).read_bytes()
        except OSError as exc:
            raise EraseLabError(f"image {key} is not in the store {self.folder}; generate it first (run "
                                "`eraselab generate` with the same settings)") from exc

    # ---- judgments -----------------------------------------------------------------------------------------
    def put_judgments(self, evaluator_identity: dict, identity_hash: str, rows: dict[str, dict]) -> None:
        """Record one evaluator's rows (image key → row). Re-judging with the same identity replaces the row,
        so there is one row per (image, evaluator identity)."""
        name = str(evaluator_identity.get("name", "unknown"))
        now = time.time()
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO evaluators (identity_hash, name, identity) VALUES (?, ?, ?)",
                (identity_hash, name, stable_json(evaluator_identity)),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO judgments (image_key, evaluator, identity_hash, row, created) "
                "VALUES (?, ?, ?, ?, ?)",
                [(key, name, identity_hash, stable_json(row), now) for key, row in rows.items()])

    def get_judgments(self, identity_hash: str, image_keys: Iterable[str]) -> dict[str, dict]:
        """image key → row, for the keys this evaluator identity has judged (others are absent)."""
        keys = list(dict.fromkeys(image_keys))
        out = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            for key, row in self._db.execute(
                    f"SELECT image_key, row FROM judgments WHERE identity_hash=? AND image_key IN ({marks})",
                    [identity_hash, *chunk]):
                out[key] = json.loads(row)
        return out

    def evaluator_identity(self, identity_hash: str) -> dict | None:
        row = self._db.execute(
            "SELECT identity FROM evaluators WHERE identity_hash=?", (identity_hash,)
        ).fetchone()
        return None if row is None else json.loads(row[0])


def producer_info(shard: tuple[int, int] | None, device: str) -> dict:
    """Which process made an image (host, pid, shard): lets a sharded run be audited afterwards."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "shard": list(shard) if shard else None,
            "device": device}
