"""The on-disk outbox: events waiting for each sink, in the state database.

The main loop inserts an event's rows (one per configured sink) in the same transaction that
marks the kill recorded and advances the read position (state.StateStore.record), so an event
is either recorded-and-queued or neither. Each sink's worker (delivery.py) reads and updates
its own rows through its own connection; SQLite's WAL lets them run beside the main loop.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Optional

from .text import json_line

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sink            TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    document        TEXT NOT NULL,      -- the JSON event document
    created_at      REAL NOT NULL,      -- wall clock: survives reboots, bounds the age
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    failed          INTEGER NOT NULL DEFAULT 0,  -- 1: a permanent error set it aside
    UNIQUE (sink, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (sink, failed, next_attempt_at);
CREATE TABLE IF NOT EXISTS outbox_dropped (
    sink   TEXT PRIMARY KEY,
    count  INTEGER NOT NULL
);
"""
BUSY_TIMEOUT_MS = 10_000


def connect(path: str) -> sqlite3.Connection:
    """`path` is a file, or a `file:/...?vfs=memdb` URI (state kept in memory)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                         uri=path.startswith("file:"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.executescript(SCHEMA)
    return db


def enqueue(db: sqlite3.Connection, sinks, event_id: str, document: dict, now: Optional[float] = None) -> None:
    """Inside the caller's transaction: one row per sink."""
    now = time.time() if now is None else now
    text = json_line(document)
    db.executemany("INSERT OR IGNORE INTO outbox (sink, event_id, document, created_at, next_attempt_at) "
                   "VALUES (?, ?, ?, ?, ?)", [(sink, event_id, text, now, now) for sink in sinks])


@dataclass(frozen=True)
class Row:
    id: int
    event_id: str
    document: dict
    attempts: int


class SinkQueue:
    """One sink's view of the outbox, used by that sink's worker thread only."""

    def __init__(self, path: str, sink: str, max_events: int, max_age: float):
        self.db = connect(path)
        self.sink = sink
        self.max_events = max_events
        self.max_age = max_age

    def due(self, limit: int, now: float) -> list:
        rows = self.db.execute("SELECT id, event_id, document, attempts FROM outbox WHERE sink = ? AND failed = 0 "
                               "AND next_attempt_at <= ? ORDER BY id LIMIT ?", (self.sink, now, limit)).fetchall()
        return [Row(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def next_due(self) -> Optional[float]:
        row = self.db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE sink = ? AND failed = 0",
                              (self.sink,)).fetchone()
        return row[0]

    def settle(self, delivered=(), retry=(), failed=()) -> None:
        """delivered: row ids; retry: (id, next_attempt_at, error); failed: (id, error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in delivered])
            self.db.executemany("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                                "WHERE id = ?", [(at, err, i) for i, at, err in retry])
            self.db.executemany("UPDATE outbox SET attempts = attempts + 1, failed = 1, last_error = ? WHERE id = ?",
                                [(err, i) for i, err in failed])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def enforce_bounds(self, now: float) -> int:
        """Drops what is older than max_age, then the oldest beyond max_events; returns how many."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self.db.execute("DELETE FROM outbox WHERE sink = ? AND created_at < ?",
                                      (self.sink, now - self.max_age)).rowcount
            dropped += self.db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sink = ? ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (self.sink, self.max_events)).rowcount
            if dropped:
                self.db.execute("INSERT INTO outbox_dropped VALUES (?, ?) ON CONFLICT(sink) DO UPDATE SET count = count + ?",
                                (self.sink, dropped, dropped))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return dropped

    def counts(self) -> dict:
        waiting, failed = self.db.execute(
            "SELECT COALESCE(SUM(failed = 0), 0), COALESCE(SUM(failed = 1), 0) FROM outbox WHERE sink = ?",
            (self.sink,)).fetchone()
        row = self.db.execute("SELECT count FROM outbox_dropped WHERE sink = ?", (self.sink,)).fetchone()
        return {"waiting": waiting, "failed": failed, "dropped": row[0] if row else 0}

    def close(self) -> None:
        self.db.close()
