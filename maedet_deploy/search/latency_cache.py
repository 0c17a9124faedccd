"""The latency cache: measured latencies in one SQLite file, shared by every search and process.

A row is one measured thing (a block at its input size, or a whole network)
on one device (`backends.fingerprint_id`) and one target (backend, precision,
batch, threads). SQLite in WAL mode with a busy timeout lets several searches
read and write the same file at once; every write is one short transaction.
A file that is not a readable cache of ours is an error, never silently used
or overwritten: the measurements in it may have cost hours.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..cachedir import cache_dir
from ..errors import MaedetError, first_line

ENV_VAR = "MAEDET_LATENCY_CACHE"
FORMAT = "maedet-latency-cache"
VERSION = 1
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latency (
    device TEXT NOT NULL, target TEXT NOT NULL, item TEXT NOT NULL,
    latency_ms REAL NOT NULL, export_s REAL NOT NULL, measure_s REAL NOT NULL,
    details TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (device, target, item));
"""


def default_cache_path() -> Path:
    """$MAEDET_LATENCY_CACHE, else ~/.cache/maedet-deploy/latency.sqlite (XDG_CACHE_HOME honoured)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return cache_dir() / "latency.sqlite"


@dataclass(frozen=True)
class Entry:
    """One measurement: the latency the search uses and how long it took to get."""

    latency_ms: float
    export_s: float
    measure_s: float
    details: dict[str, Any]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text



class LatencyCache:
    """Rows of one device and target in a shared SQLite file."""

    def __init__(self, path: str | os.PathLike | None, device: str, fingerprint: dict[str, Any], target: str) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self.device = device
        self.target = target
        if self.path.is_dir():
            raise MaedetError(f"latency cache {self.path} is a directory; give a file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise MaedetError(f"cannot open latency cache {self.path}: {first_line(exc)}") from None
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._open(fingerprint)
                return
            except sqlite3.DatabaseError as exc:
                # Another process creating the file or switching it to WAL can make some of
                # these steps report "locked" at once instead of waiting on the busy timeout.
                busy = isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)
                if busy and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._db.close()
                if busy:
                    raise MaedetError(f"latency cache {self.path} stayed locked by another process for "
                                      f"{BUSY_TIMEOUT_S:g} s") from None
                raise MaedetError(f"latency cache {self.path} is corrupt or not a cache ({first_line(exc)}); "
                                  "move it away or use another cache file", setting="latency_cache") from None

    def _open(self, fingerprint: dict[str, Any]) -> None:
        """Check before writing anything: a foreign or damaged file stays untouched."""
        db = self._db
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        if tables:
            if "meta" not in tables:
                raise sqlite3.DatabaseError(f"an SQLite file without our tables ({', '.join(sorted(tables))})")
            self._check_meta()
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, str(VERSION)))
            db.execute("INSERT OR REPLACE INTO devices VALUES (?, ?)",
                       (self.device, json.dumps(fingerprint, sort_keys=True, default=str)))
        self._check_meta()

    def _check_meta(self) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise sqlite3.DatabaseError(f"format {meta.get('format')!r} version {meta.get('version')!r}, "
                                        f"expected {FORMAT!r} version {VERSION}")

    def _transaction(self):
        """BEGIN IMMEDIATE: take the write lock up front, so concurrent writers queue
        on the busy timeout instead of failing on a lock upgrade."""
        db = self._db

        class _Tx:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, traceback) -> None:
                db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()

    def get_many(self, items: Iterable[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        wanted = list(dict.fromkeys(items))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self._db.execute(
                f"SELECT item, latency_ms, export_s, measure_s, details FROM latency WHERE device = ? AND target = ? "
                f"AND item IN ({', '.join('?' * len(chunk))})", (self.device, self.target, *chunk))
            for item, latency, export_s, measure_s, details in rows:
                found[item] = Entry(latency, export_s, measure_s, json.loads(details))
        return found

    def get(self, item: str) -> Entry | None:
        return self.get_many([item]).get(item)

    def put(self, item: str, entry: Entry) -> None:
        try:
            with self._transaction():
                self._db.execute("INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (self.device, self.target, item, entry.latency_ms, entry.export_s, entry.measure_s,
                                  json.dumps(entry.details, sort_keys=True), time.time()))
        except sqlite3.OperationalError as exc:
            raise MaedetError(f"cannot write latency cache {self.path}: {first_line(exc)}") from None

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM latency WHERE device = ? AND target = ?",
                                (self.device, self.target)).fetchone()[0]

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class PriorRows:
    """Another device's (or target's) measurements of some items: `source` names it."""

    source: str
    rows: dict[str, Entry]


def read_prior(path: str | os.PathLike, items: Iterable[str], device: str, target: str) -> PriorRows:
    """From the cache file `path` (opened read-only, never changed), the measurements of `items` by
    the device and target that measured most of them, other than (`device`, `target`) itself.
    Measurements that never got quiet visits are left out."""
    path = Path(path).expanduser()
    wanted = list(dict.fromkeys(items))
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            if dict(db.execute("SELECT key, value FROM meta")).get("format") != FORMAT:
                raise sqlite3.DatabaseError("not a latency cache")
            rows = [row for start in range(0, len(wanted), 500) for row in db.execute(
                f"SELECT device, target, item, latency_ms, export_s, measure_s, details FROM latency WHERE item IN "
                f"({', '.join('?' * len(wanted[start:start + 500]))})", wanted[start:start + 500])]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise MaedetError(f"cannot read latency cache {path}: {first_line(exc)}", setting="latency_prior") from None
    sources: dict[tuple[str, str], dict[str, Entry]] = {}
    for source_device, source_target, item, latency, export_s, measure_s, details in rows:
        entry = Entry(latency, export_s, measure_s, json.loads(details))
        if (source_device, source_target) != (device, target) and not entry.details.get("contended"):
            sources.setdefault((source_device, source_target), {})[item] = entry
    if not sources:
        raise MaedetError(f"{path} holds no measurements of this profile plan by another device or target",
                          setting="latency_prior")
    (source_device, source_target), found = max(sources.items(), key=lambda pair: len(pair[1]))
    return PriorRows(f"{source_device} {source_target}", found)
