"""Content-addressed cache of generations in SQLite (WAL mode).

A key is the SHA-256 of everything that determines a generation: the backend's fingerprint
(backend, model, adapter), the messages, the sampling parameters and the seed. A rerun reads
its generations back, an interrupted run resumes, and a λ sweep re-scores stored futures.
Each `put_many` is one transaction: a process killed mid-write loses only that transaction.
Open the cache in each process (SQLite connections must not cross a `fork`).

Each row carries a checksum of its text and token counts, verified on every read: a row that
fails it is never served (it counts as a miss, is generated again and replaced). A cache file
written before checksums existed gets the column on first open (schema migration; its rows
are checksummed then). A file SQLite cannot read raises `CacheError` naming it and the way
out: `python -m collab_utils cache check PATH` / `cache repair PATH` (`check`, `repair`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now')),
    checksum TEXT
)
"""
SCHEMA_VERSION = 2  # 1: no checksum column; 2: checksum per row


class CacheError(RuntimeError):
    """The cache file cannot be read; the message names it and how to repair it."""


def request_key(fingerprint: str, messages: list[dict], params: dict, seed: int) -> str:
    """The cache key of one generation request."""
    payload = json.dumps(
        {"model": fingerprint, "messages": messages, "params": params, "seed": seed},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def checksum(key: str, text: str, prompt_tokens: int, completion_tokens: int) -> str:
    """The stored checksum of a row: SHA-256 of its key, text and token counts."""
    payload = json.dumps([key, text, prompt_tokens, completion_tokens], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Entry:
    text: str
    prompt_tokens: int
    completion_tokens: int


def _damaged(path: Path, exc: BaseException) -> CacheError:
    return CacheError(
        f"{path}: the generation cache file is damaged ({type(exc).__name__}: {exc}). "
        f"See what is readable with `python -m collab_utils cache check {path}`; keep every "
        f"readable row with `python -m collab_utils cache repair {path}` (the damaged file is "
        "kept beside it), or delete the file to start an empty cache."
    )


def _is_damage(exc: sqlite3.Error) -> bool:
    """A file problem (not a busy/locked database, which the timeout handles)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and not any(
        word in text for word in ("locked", "busy", "readonly", "read-only", "unable to open")
    )


class GenerationCache:
    """A SQLite table of generations, shared by processes and threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise CacheError(f"{self.path}: is a directory, not a generation cache file")
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.corrupt = 0  # rows read whose checksum failed (not served)
        self._local = threading.local()
        with self._guard():
            self._migrate(self._connect())

    # --- connection and errors
    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=60000")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                db.close()
                raise
            self._local.db = db
        return db

    def _guard(self):
        cache = self

        class Guard:
            def __enter__(self):
                return self

            def __exit__(self, kind, exc, tb):
                if isinstance(exc, sqlite3.Error) and _is_damage(exc):
                    cache.close()
                    raise _damaged(cache.path, exc) from None
                return False

        return Guard()

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(generations)")}
        if "checksum" in columns:
            return
        # a cache file from before checksums: add the column and checksum its rows, once
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(generations)")}
            if "checksum" not in columns:
                db.execute("ALTER TABLE generations ADD COLUMN checksum TEXT")
                rows = db.execute(
                    "SELECT key, text, prompt_tokens, completion_tokens FROM generations"
                ).fetchall()
                db.executemany(
                    "UPDATE generations SET checksum = ? WHERE key = ?",
                    [(checksum(*row), row[0]) for row in rows],
                )
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- reads and writes
    def get_many(self, keys: list[str]) -> dict[str, Entry]:
        """The stored entries among `keys` whose checksum holds; counts hits and misses."""
        found: dict[str, Entry] = {}
        corrupt = []
        unique = list(dict.fromkeys(keys))
        with self._guard():
            db = self._connect()
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT key, text, prompt_tokens, completion_tokens, checksum "
                    f"FROM generations WHERE key IN ({marks})",
                    chunk,
                )
                for key, text, prompt_tokens, completion_tokens, stored in rows:
                    if stored != checksum(key, text, prompt_tokens, completion_tokens):
                        corrupt.append(key)
                        continue
                    found[key] = Entry(text, prompt_tokens, completion_tokens)
        if corrupt:
            self.corrupt += len(corrupt)
            warnings.warn(
                f"{self.path}: {len(corrupt)} cached generation(s) failed their checksum and "
                "are generated again (see `python -m collab_utils cache check "
                f"{self.path}`)",
                stacklevel=2,
            )
        self.hits += sum(key in found for key in keys)
        self.misses += sum(key not in found for key in keys)
        return found

    def put_many(self, entries: dict[str, Entry]) -> None:
        """Store entries in one transaction (all or nothing)."""
        if not entries:
            return
        rows = [
            (k, e.text, e.prompt_tokens, e.completion_tokens, checksum(k, *_fields(e)))
            for k, e in entries.items()
        ]
        with self._guard():
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO generations "
                    "(key, text, prompt_tokens, completion_tokens, checksum) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self.writes += len(entries)

    def __len__(self) -> int:
        with self._guard():
            return self._connect().execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def stats(self) -> dict:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "size": len(self),
            "corrupt": self.corrupt,
        }

    def reset_stats(self) -> None:
        self.hits = self.misses = self.writes = self.corrupt = 0

    def integrity_ok(self) -> bool:
        with self._guard():
            return self._connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _fields(entry: Entry) -> tuple[str, int, int]:
    return entry.text, entry.prompt_tokens, entry.completion_tokens


# --- check and repair (python -m collab_utils cache check|repair)


def _scan(path: Path) -> tuple[list[tuple], int, list[str]]:
    """Every readable row of the file (key, text, prompt, completion, checksum-or-None), the
    number of rows SQLite could not read, and the problems met. Never writes to the file."""
    problems: list[str] = []
    rows: list[tuple] = []
    unreadable = 0
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0)
    try:
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(generations)")}
        except sqlite3.DatabaseError as exc:
            return [], 0, [f"not readable as an SQLite database: {exc}"]
        if not columns:
            return [], 0, ["no generations table"]
        sums = "checksum" if "checksum" in columns else "NULL"
        select = f"SELECT key, text, prompt_tokens, completion_tokens, {sums} FROM generations"
        try:
            rows = db.execute(select).fetchall()
        except sqlite3.DatabaseError as exc:
            # read around the damage: rowid by rowid where a whole scan fails
            problems.append(f"a full scan failed ({exc}); reading row by row")
            rows = []
            try:
                top = db.execute("SELECT max(rowid) FROM generations").fetchone()[0] or 0
            except sqlite3.DatabaseError:
                top = 1_000_000
            for start in range(1, top + 1, 256):
                try:
                    rows += db.execute(
                        f"{select} WHERE rowid BETWEEN ? AND ?", (start, start + 255)
                    ).fetchall()
                    continue
                except sqlite3.DatabaseError:
                    pass
                for rowid in range(start, start + 256):
                    try:
                        rows += db.execute(f"{select} WHERE rowid = ?", (rowid,)).fetchall()
                    except sqlite3.DatabaseError:
                        unreadable += 1
        try:
            verdict = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            verdict = [str(exc)]
        if verdict != ["ok"]:
            problems += [f"integrity_check: {v}" for v in verdict[:5]]
    finally:
        db.close()
    return rows, unreadable, problems


def _valid(row: tuple) -> bool:
    key, text, prompt_tokens, completion_tokens, stored = row
    if not (isinstance(key, str) and isinstance(text, str)):
        return False
    if not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
        return False
    return stored is None or stored == checksum(key, text, prompt_tokens, completion_tokens)


def check(path: str | Path) -> dict:
    """What is readable in a cache file: {path, ok, rows, bad_checksum, unreadable, problems}.

    Reads the file only (SQLite read-only mode); `ok` is True when SQLite's integrity check
    passes and every row is readable and matches its checksum."""
    path = Path(path)
    if path.is_dir():
        raise CacheError(f"{path}: is a directory, not a generation cache file")
    if not path.is_file():
        raise CacheError(f"{path}: no such cache file")
    rows, unreadable, problems = _scan(path)
    bad = sum(not _valid(row) for row in rows)
    return {
        "path": str(path),
        "ok": not problems and not bad and not unreadable,
        "rows": len(rows) - bad,
        "bad_checksum": bad,
        "unreadable": unreadable,
        "problems": problems,
    }


def repair(path: str | Path) -> dict:
    """Rebuild a cache file from every readable row whose checksum holds.

    Writes a fresh database beside the file, moves the damaged file (and its -wal/-shm) aside
    as `<name>.damaged-<time>` and renames the fresh one into place. Stop the runs using the
    cache first. Returns `check`'s fields plus `kept` and `moved_to`."""
    path = Path(path)
    report = check(path)
    rows, _, _ = _scan(path)
    kept = [row for row in rows if _valid(row)]
    fresh = path.with_name(f".{path.name}.repair-{os.getpid()}")
    fresh.unlink(missing_ok=True)
    db = sqlite3.connect(fresh, isolation_level=None)
    try:
        db.execute(SCHEMA)
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO generations "
            "(key, text, prompt_tokens, completion_tokens, checksum) VALUES (?, ?, ?, ?, ?)",
            [(k, t, p, c, checksum(k, t, p, c)) for k, t, p, c, _ in kept],
        )
        db.execute("COMMIT")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        db.close()
    moved = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, moved.with_name(moved.name + suffix))
    os.replace(path, moved)
    os.replace(fresh, path)
    return {**report, "kept": len(kept), "moved_to": str(moved)}
