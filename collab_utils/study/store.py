"""The study's SQLite store (WAL): systems, sessions, messages with their ratings, events.

Every write is committed at once, so a killed server loses nothing a participant was told was
saved. Assignment is balanced: a new session gets the system with the fewest sessions (ties
broken at random), then that system's least-used task, inside one write transaction, so
concurrent participants cannot both take the same free slot.

    store = Store("outputs/quickstart/study/study.sqlite")
    sid = store.create_session(["base", "proactive"], ["doc/a", "doc/b"])
    store.export("outputs/quickstart/study/export")     # sessions/messages/events/systems.parquet
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS systems (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    detail TEXT NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    participant TEXT,
    system TEXT NOT NULL REFERENCES systems(name),
    fingerprint TEXT NOT NULL,
    task_id TEXT NOT NULL,
    simulated INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    document TEXT,
    document_rating INTEGER,
    comment TEXT,
    completion_code TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    turn INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at REAL NOT NULL,
    client_id TEXT,
    completion_tokens INTEGER,
    rating INTEGER,
    rated_at REAL,
    PRIMARY KEY (session_id, turn, role)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
"""
TABLES = ("systems", "sessions", "messages", "events")


class StoreError(RuntimeError):
    """The database does not fit this server (e.g. a system's weights changed under its name)."""


class Store:
    """One connection shared by the server's threads, serialised by a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._random = random.SystemRandom()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)

    def _write(self, sql: str, args=()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _read(self, sql: str, args=()) -> list[dict]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args)]

    def event(self, session_id: str | None, kind: str, **detail) -> None:
        self._write(
            "INSERT INTO events (session_id, kind, detail, at) VALUES (?, ?, ?, ?)",
            (session_id, kind, json.dumps(detail, sort_keys=True), time.time()),
        )

    # ---------------------------------------------------------------- systems

    def register_systems(self, systems: dict[str, tuple[str, dict]]) -> None:
        """Record {name: (fingerprint, detail)}; a known name with other weights is refused."""
        with self._lock:
            known = {r["name"]: r["fingerprint"] for r in self._read("SELECT * FROM systems")}
            for name, (fingerprint, detail) in systems.items():
                if name in known and known[name] != fingerprint:
                    raise StoreError(
                        f"{self.path}: system {name!r} was {known[name]} in this study, now "
                        f"{fingerprint}; its sessions would continue on other weights. Use a "
                        "new database (--db) or give the system another name."
                    )
                if name not in known:
                    self._write(
                        "INSERT INTO systems VALUES (?, ?, ?, ?)",
                        (name, fingerprint, json.dumps(detail, sort_keys=True), time.time()),
                    )

    # --------------------------------------------------------------- sessions

    def create_session(
        self,
        systems: list[str],
        task_ids: list[str],
        *,
        participant: str | None = None,
        simulated: bool = False,
    ) -> str:
        """A new session on the least-assigned system and its least-used task.

        A participant id that already has a session gets that session back (a second device,
        a lost link), so one person is never assigned twice.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if participant:
                    found = self._db.execute(
                        "SELECT id FROM sessions WHERE participant = ?", (participant,)
                    ).fetchone()
                    if found:
                        self._db.execute("COMMIT")
                        return found["id"]
                system = self._least_used("system", systems, "1 = 1", ())
                task = self._least_used("task_id", task_ids, "system = ?", (system,))
                fingerprint = self._db.execute(
                    "SELECT fingerprint FROM systems WHERE name = ?", (system,)
                ).fetchone()["fingerprint"]
                session_id = secrets.token_urlsafe(18)
                self._db.execute(
                    "INSERT INTO sessions (id, participant, system, fingerprint, task_id, "
                    "simulated, started_at, completion_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        session_id,
                        participant,
                        system,
                        fingerprint,
                        task,
                        int(simulated),
                        time.time(),
                        secrets.token_hex(4).upper(),
                    ),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.event(session_id, "consent", simulated=simulated)
        return session_id

    def _least_used(self, column: str, options: list[str], where: str, args) -> str:
        counts = dict.fromkeys(options, 0)
        rows = self._db.execute(
            f"SELECT {column} AS value, COUNT(*) AS n FROM sessions WHERE {where} GROUP BY {column}",
            args,
        )
        for row in rows:
            if row["value"] in counts:
                counts[row["value"]] = row["n"]
        fewest = min(counts.values())
        return self._random.choice([o for o in options if counts[o] == fewest])

    def session(self, session_id: str) -> dict | None:
        rows = self._read("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return rows[0] if rows else None

    def messages(self, session_id: str) -> list[dict]:
        return self._read(
            "SELECT turn, role, content, rating, created_at FROM messages WHERE session_id = ? "
            "ORDER BY turn, role = 'assistant'",
            (session_id,),
        )

    def seen_client_id(self, session_id: str, client_id: str) -> bool:
        """Was a message with this client id stored (a send retried after a lost reply)?"""
        return bool(
            self._read(
                "SELECT 1 FROM messages WHERE session_id = ? AND client_id = ?",
                (session_id, client_id),
            )
        )

    def add_user_message(self, session_id: str, turn: int, text: str, client_id: str) -> None:
        self._write(
            "INSERT INTO messages (session_id, turn, role, content, created_at, client_id) "
            "VALUES (?, ?, 'user', ?, ?, ?)",
            (session_id, turn, text, time.time(), client_id),
        )
        self.event(session_id, "message", turn=turn, chars=len(text))

    def add_reply(self, session_id: str, turn: int, text: str, completion_tokens: int) -> None:
        """Store the assistant's reply of `turn` (a second reply for the same turn is ignored)."""
        cursor = self._write(
            "INSERT OR IGNORE INTO messages (session_id, turn, role, content, created_at, "
            "completion_tokens) VALUES (?, ?, 'assistant', ?, ?, ?)",
            (session_id, turn, text, time.time(), completion_tokens),
        )
        if cursor.rowcount:
            self.event(session_id, "reply", turn=turn, tokens=completion_tokens)

    def rate(self, session_id: str, turn: int, rating: int) -> None:
        self._write(
            "UPDATE messages SET rating = ?, rated_at = ? "
            "WHERE session_id = ? AND turn = ? AND role = 'assistant'",
            (rating, time.time(), session_id, turn),
        )
        self.event(session_id, "rating", turn=turn, rating=rating)

    def finish(self, session_id: str, document: str, rating: int, comment: str) -> None:
        self._write(
            "UPDATE sessions SET finished_at = ?, document = ?, document_rating = ?, comment = ? "
            "WHERE id = ? AND finished_at IS NULL",
            (time.time(), document, rating, comment, session_id),
        )
        self.event(session_id, "finish", rating=rating, chars=len(document))

    def waiting_for_reply(self) -> list[str]:
        """Unfinished sessions whose last message is the participant's (no reply yet)."""
        rows = self._read(
            "SELECT s.id FROM sessions s JOIN messages m ON m.session_id = s.id "
            "WHERE s.finished_at IS NULL GROUP BY s.id "
            "HAVING SUM(m.role = 'user') > SUM(m.role = 'assistant')"
        )
        return [r["id"] for r in rows]

    # ---------------------------------------------------------------- reading

    def summary(self) -> list[dict]:
        """Progress per system: sessions, finished, simulated, mean ratings and minutes."""
        return self._read(
            "SELECT s.system, COUNT(*) AS sessions, "
            "SUM(s.finished_at IS NOT NULL) AS finished, SUM(s.simulated) AS simulated, "
            "AVG(s.document_rating) AS document_rating, "
            "AVG((s.finished_at - s.started_at) / 60.0) AS minutes, "
            "(SELECT AVG(m.rating) FROM messages m JOIN sessions t ON t.id = m.session_id "
            " WHERE t.system = s.system AND m.rating IS NOT NULL) AS turn_rating "
            "FROM sessions s GROUP BY s.system ORDER BY s.system"
        )

    def tables(self) -> dict:
        """Every table as a DataFrame, timestamps as UTC datetimes, time spent in seconds."""
        import pandas as pd

        frames = {}
        for name in TABLES:
            with self._lock:
                frame = pd.read_sql_query(f"SELECT * FROM {name}", self._db)
            for column in (
                "registered_at",
                "started_at",
                "finished_at",
                "created_at",
                "rated_at",
                "at",
            ):
                if column in frame:
                    frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
            frames[name] = frame
        sessions = frames["sessions"]
        sessions["simulated"] = sessions["simulated"].astype(bool)
        sessions["time_spent_s"] = (
            sessions["finished_at"] - sessions["started_at"]
        ).dt.total_seconds()
        return frames

    def export(self, folder: str | Path) -> dict[str, Path]:
        """Write each table as `<folder>/<table>.parquet` (atomically); returns the paths."""
        from ..io import write_parquet

        folder = Path(folder)
        return {
            name: write_parquet(folder / f"{name}.parquet", frame)
            for name, frame in self.tables().items()
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
