"""What survives a restart: where reading stopped, and which kills are already recorded.

One SQLite database in the state directory. A kill is marked recorded and the read position
advanced in ONE transaction, after the journal entry was written (so a crash re-reads rather
than skips). The crash window between the journal write and the commit is closed by asking
the journal which events it already holds (JournalWriter.recorded_event_ids) at start.
A corrupt file raises StateCorrupt (waiting will not help: the daemon goes on in memory), any
other failure StateError (a full disk: the daemon retries); never a raw sqlite3 error.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Iterable, Optional

from oom_journal.store import outbox
from oom_journal.model import Resume

SCHEMA = """
CREATE TABLE IF NOT EXISTS position (
    source    TEXT PRIMARY KEY,   -- 'journal' or 'kmsg'
    boot_id   TEXT NOT NULL,
    value     TEXT NOT NULL,      -- journal cursor, or kmsg sequence number
    inclusive INTEGER NOT NULL,   -- 1: re-read from value; 0: start after it
    saved_at  REAL NOT NULL
);
-- The second witness's accounting point (enrich/witness.py): every kernel OOM kill up to the
-- kernel's count `counted` (/proc/vmstat oom_kill) was recorded or its kill line read by then.
CREATE TABLE IF NOT EXISTS oom_count (
    boot_id   TEXT PRIMARY KEY,
    counted   INTEGER NOT NULL,
    since_ns  INTEGER NOT NULL    -- CLOCK_MONOTONIC ns of the point: kill lines from here on count
);
CREATE TABLE IF NOT EXISTS recorded (
    event_id    TEXT PRIMARY KEY,
    boot_id     TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
"""
# Kills recorded in one boot that are remembered for de-duplication; beyond this the oldest go.
MAX_RECORDED = 100_000


class StateError(Exception):
    """The state directory cannot be used; the message says why and where."""


class StateCorrupt(StateError):
    """The database file is not (any longer) a database SQLite can use: overwritten, cut, a bad
    disk. Unlike a full disk or a lock held too long, waiting does not help; only another store does."""


# Primary result codes (sqlite3.h) for a file whose content is wrong: SQLITE_CORRUPT ("database
# disk image is malformed"), SQLITE_NOTADB ("file is not a database"). Python raises both as a plain
# sqlite3.DatabaseError; the transient ones (SQLITE_FULL, SQLITE_BUSY, SQLITE_IOERR, SQLITE_CANTOPEN)
# are OperationalError.
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


def is_corruption(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # the extended code (Python 3.11+)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    return type(e) is sqlite3.DatabaseError


def state_error(message: str, e: BaseException) -> StateError:
    return (StateCorrupt if is_corruption(e) else StateError)(f"{message}: {e}")


@contextlib.contextmanager
def _errors(message: str):
    """sqlite3 and OS errors as StateError (StateCorrupt for a corrupt file), never raw."""
    try:
        yield
    except (OSError, sqlite3.Error) as e:
        raise state_error(message, e) from e


class StateStore:
    FILENAME = "state.sqlite3"

    def __init__(self, state_dir: str, boot_id: str, in_memory: bool = False):
        self.state_dir = state_dir
        self.boot_id = boot_id
        self.path = os.path.join(state_dir, self.FILENAME)
        if in_memory:
            # Nothing persists (no position, no outbox across restarts), but kills are still
            # recorded: better than not watching at all. The name is shared by the sinks' threads.
            # The memdb VFS (SQLite 3.36+; Debian 12 has 3.40), not a shared-cache memory database:
            # shared cache locks tables, and a reader meeting the main thread's write gets
            # SQLITE_LOCKED at once, which the busy timeout does not retry ("database table is
            # locked: outbox" stopped the sink's worker: reproduced); memdb's locks are waited for.
            self.path = f"file:/oom-journal-state-{os.getpid()}?vfs=memdb"
            self.db = outbox.connect(self.path)
            self.db.executescript(SCHEMA)
            return
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            # WAL, synchronous=FULL: a recorded kill's row is on disk before we go on (kills are
            # rare, the fsync costs nothing that matters); transactions are ours, one per kill.
            self.db = outbox.connect(self.path)
            self.db.executescript(SCHEMA)
            # Kills of a previous boot are never replayed, so their ids are of no use any more.
            self.db.execute("DELETE FROM recorded WHERE boot_id != ?", (boot_id,))
        except (OSError, sqlite3.Error) as e:
            raise state_error(f"state directory {state_dir}", e) from e

    def resume_point(self, source: str) -> Optional[Resume]:
        with _errors(f"state database {self.path}"):
            row = self.db.execute("SELECT boot_id, value, inclusive FROM position WHERE source = ?",
                                  (source,)).fetchone()
        if row is None or row[0] != self.boot_id:
            return None
        value = int(row[1]) if source == "kmsg" else row[1]
        return Resume(position=value, inclusive=bool(row[2]))

    def is_recorded(self, event_id: str) -> bool:
        with _errors(f"state database {self.path}"):
            return self.db.execute("SELECT 1 FROM recorded WHERE event_id = ?", (event_id,)).fetchone() is not None

    def recorded_with_prefix(self, prefix: str) -> bool:
        """Is any event whose id starts with `prefix` recorded (the kills of one userspace kill)?"""
        with _errors(f"state database {self.path}"):
            return self.db.execute("SELECT 1 FROM recorded WHERE substr(event_id, 1, ?) = ? LIMIT 1",
                                   (len(prefix), prefix)).fetchone() is not None

    def check(self) -> None:
        """A cheap read (raises StateError, StateCorrupt for a corrupt file): for the main loop to
        find out while it is quiet, before the sinks' workers do (they stop on a raw error)."""
        with _errors(f"state database {self.path}"):
            self.db.execute("SELECT count(*) FROM position").fetchone()

    def mark_recorded(self, event_ids: Iterable[str]) -> None:
        """Ids known to be recorded elsewhere (found in the journal at start)."""
        now = time.time()
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO recorded VALUES (?, ?, ?)",
                                [(e, self.boot_id, now) for e in event_ids])

    def record(self, event_id: str, source: str, resume: Optional[Resume], sinks=(),
               document: Optional[dict] = None) -> None:
        """The kill is in the journal: remember it, queue it for each sink, and move the read
        position, in one transaction."""
        with self._transaction():
            self.db.execute("INSERT OR IGNORE INTO recorded VALUES (?, ?, ?)",
                            (event_id, self.boot_id, time.time()))
            if sinks and document is not None:
                outbox.enqueue(self.db, sinks, event_id, document)
            if resume is not None:
                self._save_position(source, resume)
            self.db.execute("DELETE FROM recorded WHERE rowid IN (SELECT rowid FROM recorded "
                            "ORDER BY recorded_at DESC LIMIT -1 OFFSET ?)", (MAX_RECORDED,))

    def oom_count(self) -> Optional[tuple]:
        """(counted, since_ns) saved in this boot, or None."""
        with _errors(f"state database {self.path}"):
            row = self.db.execute("SELECT counted, since_ns FROM oom_count WHERE boot_id = ?",
                                  (self.boot_id,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def save_oom_count(self, counted: int, since_ns: int) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM oom_count WHERE boot_id != ?", (self.boot_id,))
            self.db.execute("INSERT OR REPLACE INTO oom_count VALUES (?, ?, ?)", (self.boot_id, counted, since_ns))

    def save_position(self, source: str, resume: Resume) -> None:
        with self._transaction():
            self._save_position(source, resume)

    def _save_position(self, source: str, resume: Resume) -> None:
        self.db.execute("INSERT OR REPLACE INTO position VALUES (?, ?, ?, ?, ?)",
                        (source, self.boot_id, str(resume.position), int(resume.inclusive), time.time()))

    @contextlib.contextmanager
    def _transaction(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise state_error(f"state database {self.path}", e) from e

    def close(self) -> None:
        self.db.close()
