"""The on-disk outbox: events waiting for each sink, in the state database.

The main loop inserts an event's rows (one per configured sink) in the same transaction that
marks the kill recorded and advances the read position (state.StateStore.record), so an event
is either recorded-and-queued or neither. Each sink's worker (delivery.py) reads and updates
its own rows through its own connection; SQLite's WAL lets them run beside the main loop.

A row is LEASED by one worker at a time: the worker that selects due rows writes its name and a
deadline into them in the same transaction (BEGIN IMMEDIATE: SQLite's one writer at a time), and
settling releases them. Another worker of the same sink (the new one a reload starts while an old
one is still in a delivery) skips leased rows, so no reload sends an event twice. A lease that is
never released (its worker crashed, or is stuck) expires after LEASE_SECONDS, far beyond any
sink's delivery timeout (10 s each: sinks/*.py), and the row is delivered again: at least once.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from oom_journal.records import dataclass
from typing import Optional

from oom_journal.text import json_line

log = logging.getLogger(__name__)

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
    size            INTEGER,            -- bytes of document (NULL in rows of older versions)
    lease_owner     TEXT,               -- the worker delivering it now ("pid:token"), or NULL
    lease_until     REAL,               -- wall clock when that lease expires
    UNIQUE (sink, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (sink, failed, next_attempt_at);
CREATE TABLE IF NOT EXISTS outbox_dropped (
    sink   TEXT PRIMARY KEY,
    count  INTEGER NOT NULL
);
"""
# Columns added since the first version: a state database written by it gets them at open
# (ALTER TABLE ... ADD COLUMN keeps its rows; the NULLs they get are what "no lease" and
# "size not recorded" mean).
ADDED_COLUMNS = (("size", "INTEGER"), ("lease_owner", "TEXT"), ("lease_until", "REAL"))
BUSY_TIMEOUT_MS = 10_000
# Longer than any sink's deliver() may block (10 s: slack.DELIVER_BUDGET, kafka.DELIVER_TIMEOUT,
# elasticsearch.REQUEST_TIMEOUT, syslog.TIMEOUT) and than the daemon waits for a worker to stop
# (daemon.STOP_TIMEOUT), so a lease never expires under a delivery that is still within its time.
LEASE_SECONDS = 60.0
# A row's bytes as stored, for rows of older versions that did not record them.
_SIZE = "COALESCE(size, LENGTH(CAST(document AS BLOB)))"


CACHE_KIB = 256


def connect(path: str) -> sqlite3.Connection:
    """`path` is a file, or a `file:/...?vfs=memdb` URI (state kept in memory)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                         uri=path.startswith("file:"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # SQLite's page cache is up to 2 MiB a connection by default (cache_size=-2000), and it was
    # full in the idle daemon: the state's `recorded` table of a boot with 8,700 kills (1.4 MiB,
    # this test machine's) is searched whole at a userspace kill (recorded_with_prefix) and read
    # at a first start. Its pages are in the kernel's page cache anyway (a read ~2 us): CACHE_KIB.
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    db.executescript(SCHEMA)
    _upgrade(db)
    return db


def _upgrade(db: sqlite3.Connection) -> None:
    """Adds the columns a database of an earlier version lacks. Inside one write transaction:
    the main loop and the workers connect at about the same time, and only one may add them."""
    if not _missing_columns(db):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, kind in _missing_columns(db):
            db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _missing_columns(db: sqlite3.Connection) -> list:
    have = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    return [(name, kind) for name, kind in ADDED_COLUMNS if name not in have]


def enqueue(db: sqlite3.Connection, sinks, event_id: str, document: dict, now: Optional[float] = None) -> None:
    """Inside the caller's transaction: one row per sink, the command line capped for sinks."""
    from oom_journal.enrich.event import cap_command_line  # the document's own module knows its fields

    now = time.time() if now is None else now
    text = json_line(cap_command_line(document))
    size = len(text.encode("utf-8", "surrogatepass"))
    db.executemany("INSERT OR IGNORE INTO outbox (sink, event_id, document, created_at, next_attempt_at, size) "
                   "VALUES (?, ?, ?, ?, ?, ?)", [(sink, event_id, text, now, now, size) for sink in sinks])


def drop_other_sinks(db: sqlite3.Connection, keep) -> dict:
    """Deletes the rows of sinks that are no longer configured (a reload or restart removed
    them: nothing would ever deliver them) and counts them as dropped; returns {sink: count}."""
    keep = list(keep)
    marks = ",".join("?" * len(keep))
    where = f"sink NOT IN ({marks})" if keep else "1"
    db.execute("BEGIN IMMEDIATE")
    try:
        counts = dict(db.execute(f"SELECT sink, COUNT(*) FROM outbox WHERE {where} GROUP BY sink", keep).fetchall())
        db.execute(f"DELETE FROM outbox WHERE {where}", keep)
        for sink, n in counts.items():
            _count_dropped(db, sink, n)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return counts


def _count_dropped(db: sqlite3.Connection, sink: str, n: int) -> None:
    db.execute("INSERT INTO outbox_dropped VALUES (?, ?) ON CONFLICT(sink) DO UPDATE SET count = count + ?",
               (sink, n, n))


@dataclass(frozen=True)
class Row:
    id: int
    event_id: str
    document: dict
    attempts: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has the pid: alive
        return True
    return True


class SinkQueue:
    """One sink's view of the outbox, used by one worker thread: it leases the rows it delivers."""

    def __init__(self, path: str, sink: str, max_events: int, max_age: float, max_bytes: Optional[int] = None,
                 lease_seconds: float = LEASE_SECONDS):
        self.db = connect(path)
        self.sink = sink
        self.max_events = max_events
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.lease_seconds = lease_seconds
        # os.urandom, not uuid: uuid imports platform and libuuid, 1.8 MiB of the idle daemon's RSS.
        self.owner = f"{os.getpid()}:{os.urandom(6).hex()}"
        self._release_leases_of_dead_processes()

    def _release_leases_of_dead_processes(self) -> None:
        """A lease of a process that is gone (killed in the middle of a delivery) need not wait to
        expire: only this daemon delivers from this database. A live process's leases stay: a
        worker of ours, or a process that got a dead one's pid (then its lease expires)."""
        owners = [o for (o,) in self.db.execute("SELECT DISTINCT lease_owner FROM outbox WHERE sink = ? "
                                                "AND lease_owner IS NOT NULL", (self.sink,))]
        dead = [o for o in owners if o.partition(":")[0].isdigit() and int(o.partition(":")[0]) != os.getpid()
                and not _pid_alive(int(o.partition(":")[0]))]
        for owner in dead:
            self.db.execute("UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (owner,))

    def due(self, limit: int, now: float) -> list:
        """Takes (leases) up to `limit` rows that are due and leased by no one, oldest first."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            rows = self.db.execute(
                "SELECT id, event_id, document, attempts FROM outbox WHERE sink = ? AND failed = 0 "
                "AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?) ORDER BY id LIMIT ?",
                (self.sink, now, now, limit)).fetchall()
            self.db.executemany("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                                [(self.owner, now + self.lease_seconds, r[0]) for r in rows])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return [Row(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def next_due(self) -> Optional[float]:
        """When a row is next due: its next attempt, or, if another worker holds it, its lease's end."""
        row = self.db.execute("SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0))) FROM outbox "
                              "WHERE sink = ? AND failed = 0", (self.sink,)).fetchone()
        return row[0]

    def settle(self, delivered=(), retry=(), failed=()) -> None:
        """delivered: row ids; retry: (id, next_attempt_at, error); failed: (id, error). Releases
        the leases. A row whose lease expired and was taken by another worker is left to that
        worker, unless it was delivered (then it is done, whoever holds it)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in delivered])
            self.db.executemany("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, "
                                "lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                                [(at, err, i, self.owner) for i, at, err in retry])
            self.db.executemany("UPDATE outbox SET attempts = attempts + 1, failed = 1, last_error = ?, "
                                "lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                                [(err, i, self.owner) for i, err in failed])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def enforce_bounds(self, now: float) -> dict:
        """Drops what is older than max_age, then the oldest beyond max_events, then the oldest
        beyond max_bytes (of stored documents, set-aside rows included: they take the disk too).
        Returns how many went for each reason: {"age": n, "events": n, "bytes": n}."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            dropped = {"age": self.db.execute("DELETE FROM outbox WHERE sink = ? AND created_at < ?",
                                              (self.sink, now - self.max_age)).rowcount}
            dropped["events"] = self.db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sink = ? ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (self.sink, self.max_events)).rowcount
            dropped["bytes"] = 0
            if self.max_bytes is not None:
                # The newest rows are kept while their running total fits (SQLite >= 3.25: window functions).
                dropped["bytes"] = self.db.execute(
                    f"DELETE FROM outbox WHERE id IN (SELECT id FROM (SELECT id, SUM({_SIZE}) OVER (ORDER BY id DESC) "
                    "AS total FROM outbox WHERE sink = ?) WHERE total > ?)", (self.sink, self.max_bytes)).rowcount
            total = sum(dropped.values())
            if total:
                _count_dropped(self.db, self.sink, total)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return dropped

    def stored_bytes(self) -> int:
        return self.db.execute(f"SELECT COALESCE(SUM({_SIZE}), 0) FROM outbox WHERE sink = ?", (self.sink,)).fetchone()[0]

    def counts(self) -> dict:
        waiting, failed = self.db.execute(
            "SELECT COALESCE(SUM(failed = 0), 0), COALESCE(SUM(failed = 1), 0) FROM outbox WHERE sink = ?",
            (self.sink,)).fetchone()
        row = self.db.execute("SELECT count FROM outbox_dropped WHERE sink = ?", (self.sink,)).fetchone()
        return {"waiting": waiting, "failed": failed, "dropped": row[0] if row else 0}

    def close(self) -> None:
        self.db.close()
