"""Content-addressed cache of generations in SQLite (WAL mode).

A key is the SHA-256 of everything that determines a generation: the backend's fingerprint
(backend, model, adapter), the messages, the sampling parameters and the seed. A rerun reads
its generations back, an interrupted run resumes, and a λ sweep re-scores stored futures.
Each `put_many` is one transaction: a process killed mid-write loses only that transaction.
Open the cache in each process (SQLite connections must not cross a `fork`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def request_key(fingerprint: str, messages: list[dict], params: dict, seed: int) -> str:
    """The cache key of one generation request."""
    payload = json.dumps(
        {"model": fingerprint, "messages": messages, "params": params, "seed": seed},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    text: str
    prompt_tokens: int
    completion_tokens: int


class GenerationCache:
    """A SQLite table of generations, shared by processes and threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._local = threading.local()
        with self._connect() as db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=60000")
            self._local.db = db
        return db

    def get_many(self, keys: list[str]) -> dict[str, Entry]:
        """The stored entries among `keys`; counts hits and misses."""
        found: dict[str, Entry] = {}
        db = self._connect()
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT key, text, prompt_tokens, completion_tokens FROM generations "
                f"WHERE key IN ({marks})",
                chunk,
            )
            for key, text, prompt_tokens, completion_tokens in rows:
                found[key] = Entry(text, prompt_tokens, completion_tokens)
        self.hits += sum(key in found for key in keys)
        self.misses += sum(key not in found for key in keys)
        return found

    def put_many(self, entries: dict[str, Entry]) -> None:
        """Store entries in one transaction (all or nothing)."""
        if not entries:
            return
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO generations (key, text, prompt_tokens, completion_tokens) "
                "VALUES (?, ?, ?, ?)",
                [(k, e.text, e.prompt_tokens, e.completion_tokens) for k, e in entries.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.writes += len(entries)

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes, "size": len(self)}

    def reset_stats(self) -> None:
        self.hits = self.misses = self.writes = 0

    def integrity_ok(self) -> bool:
        return self._connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
