"""The outbox on a real SQLite file: leases (one worker per row), bounds in bytes, upgrades of a
database written by an earlier version, rows of sinks no longer configured."""
import json
import os
import sqlite3
import subprocess
import threading
import time

from oom_journal.store import outbox
from oom_journal.delivery.worker import SinkWorker
from oom_journal.store.outbox import LEASE_SECONDS, SinkQueue
from oom_journal.sinks.base import OK, RETRY, Delivery, Sink
from oom_journal.model import Resume
from oom_journal.store.state import StateStore


def queue_events(state, n, sinks=("s",), start=0, **extra):
    for i in range(start, start + n):
        state.record(f"b-{i}", "kmsg", Resume(i, False), sinks=list(sinks), document={"event_id": f"b-{i}", **extra})


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_two_queues_of_one_sink_never_get_the_same_row(tmp_path):
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 10)
    now = time.time()
    a, b = SinkQueue(state.path, "s", 100, 3600), SinkQueue(state.path, "s", 100, 3600)
    first = a.due(6, now)
    second = b.due(6, now)
    assert [r.event_id for r in first] == [f"b-{i}" for i in range(6)]
    assert [r.event_id for r in second] == [f"b-{i}" for i in range(6, 10)]
    assert a.due(10, now) == [] and b.due(10, now) == []
    # A retry releases the lease: the row is anyone's when it is due again.
    a.settle(retry=[(first[0].id, now, "down")])
    assert [r.event_id for r in b.due(10, now)] == ["b-0"]


def test_queues_in_threads_deliver_each_row_once(tmp_path):
    """Two workers' queues (own connections, own threads) racing for 200 rows."""
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 200)
    got = {0: [], 1: []}
    ready = threading.Barrier(2)

    def drain(n):
        q = SinkQueue(state.path, "s", 1000, 3600)
        ready.wait()
        while True:
            rows = q.due(3, time.time())
            if not rows:
                break
            got[n].extend(r.event_id for r in rows)
            time.sleep(0.002)  # "delivering": the other thread takes its turn
            q.settle(delivered=[r.id for r in rows])
        q.close()

    threads = [threading.Thread(target=drain, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    both = got[0] + got[1]
    assert sorted(both) == sorted(f"b-{i}" for i in range(200)) and len(set(both)) == 200
    assert got[0] and got[1], "one thread took every row: no race was tested"


def test_an_expired_lease_comes_back_and_the_late_worker_does_not_undo_the_new_one(tmp_path):
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 1)
    now = time.time()
    stuck, fresh = SinkQueue(state.path, "s", 100, 3600), SinkQueue(state.path, "s", 100, 3600)
    (row,) = stuck.due(10, now)
    assert fresh.due(10, now + LEASE_SECONDS - 1) == []
    assert fresh.next_due() == now + LEASE_SECONDS  # it waits for the lease, not for nothing
    (again,) = fresh.due(10, now + LEASE_SECONDS + 1)
    assert again.event_id == row.event_id
    # The stuck worker's late verdict (retry) leaves the row to the one that holds it now.
    stuck.settle(retry=[(row.id, now + 999, "late")])
    owner, attempts = state.db.execute("SELECT lease_owner, attempts FROM outbox").fetchone()
    assert owner == fresh.owner and attempts == 0
    fresh.settle(delivered=[again.id])
    assert state.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_a_lease_of_a_process_that_is_gone_is_released_at_once(tmp_path):
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 2)
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid belongs to no process now
    state.db.execute("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE event_id = 'b-0'",
                     (f"{gone.pid}:dead", time.time() + 3600))
    state.db.execute("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE event_id = 'b-1'",
                     (f"{os.getppid()}:alive", time.time() + 3600))
    q = SinkQueue(state.path, "s", 100, 3600)
    assert [r.event_id for r in q.due(10, time.time())] == ["b-0"]  # the live process keeps b-1


# The outbox table as the first version created it (no size, no lease).
OLD_SCHEMA = """
CREATE TABLE position (source TEXT PRIMARY KEY, boot_id TEXT NOT NULL, value TEXT NOT NULL,
                       inclusive INTEGER NOT NULL, saved_at REAL NOT NULL);
CREATE TABLE recorded (event_id TEXT PRIMARY KEY, boot_id TEXT NOT NULL, recorded_at REAL NOT NULL);
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sink            TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    document        TEXT NOT NULL,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    failed          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sink, event_id)
);
CREATE INDEX outbox_due ON outbox (sink, failed, next_attempt_at);
CREATE TABLE outbox_dropped (sink TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


class RecordingSink(Sink):
    name = "s"
    max_batch = 10

    def __init__(self, outcome=OK):
        self.outcome = outcome
        self.received = []
        self.closed = threading.Event()

    def describe(self):
        return "a list"

    def deliver(self, documents):
        if self.outcome == OK:
            self.received.extend(d["event_id"] for d in documents)
        return [Delivery(self.outcome, "down" if self.outcome != OK else "")] * len(documents)

    def close(self):
        self.closed.set()


def test_a_database_of_the_first_version_is_upgraded_and_its_rows_delivered(tmp_path):
    path = tmp_path / StateStore.FILENAME
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    doc = json.dumps({"event_id": "b-old", "cmdline": "ü" * 10})
    old.execute("INSERT INTO recorded VALUES ('b-old', 'b', 1.0)")
    old.execute("INSERT INTO outbox (sink, event_id, document, created_at, next_attempt_at) VALUES "
                "('s', 'b-old', ?, ?, ?)", (doc, time.time(), time.time()))
    old.commit()
    old.close()

    state = StateStore(str(tmp_path), "b")
    columns = {r[1] for r in state.db.execute("PRAGMA table_info(outbox)")}
    assert {"size", "lease_owner", "lease_until"} <= columns
    assert state.is_recorded("b-old")
    queue_events(state, 1, start=1)
    q = SinkQueue(state.path, "s", 100, 3600, max_bytes=1 << 20)
    sizes = dict(state.db.execute("SELECT event_id, size FROM outbox"))
    assert sizes["b-old"] is None and sizes["b-1"] == len(json.dumps({"event_id": "b-1"}))
    assert q.stored_bytes() == len(doc.encode()) + sizes["b-1"]  # an old row counts by its document
    q.close()
    sink = RecordingSink()
    w = SinkWorker(sink, state.path, max_events=100, max_age=3600, max_bytes=1 << 20)
    w.start()
    wait(lambda: sink.received == ["b-old", "b-1"])
    w.stop()
    assert sink.closed.is_set()  # the worker closes its sink when it ends
    assert state.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_the_byte_bound_drops_the_oldest_while_the_sink_is_down(tmp_path):
    """Events with 100 KB command lines (capped to 32 KiB for sinks: about 66 KB stored each)
    against a 1 MiB bound (the least outbox-max-bytes takes)."""
    state = StateStore(str(tmp_path), "b")
    big = "x" * 100_000
    queue_events(state, 40, cmdline=big, argv=[big])
    sink = RecordingSink(RETRY)  # down
    w = SinkWorker(sink, state.path, max_events=10_000, max_age=3600, max_bytes=1 << 20)
    w.start()
    wait(lambda: "dropped" in w.summary())
    w.stop()
    rows = state.db.execute("SELECT event_id, LENGTH(CAST(document AS BLOB)), document FROM outbox "
                            "ORDER BY id").fetchall()
    stored = sum(r[1] for r in rows)
    assert stored <= 1 << 20 and stored + rows[0][1] > 1 << 20  # as many as fit, not fewer
    kept = len(rows)
    assert [r[0] for r in rows] == [f"b-{i}" for i in range(40 - kept, 40)]  # the newest
    assert all(json.loads(r[2])["cmdline_truncated"] for r in rows)
    assert state.db.execute("SELECT count FROM outbox_dropped WHERE sink = 's'").fetchone()[0] == 40 - kept
    assert w.summary() == f"s: retrying, {kept} waiting, {40 - kept} dropped"


def test_rows_of_sinks_no_longer_configured_are_dropped_and_counted(tmp_path):
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 3, sinks=("kafka", "slack"))
    assert outbox.drop_other_sinks(state.db, ["slack"]) == {"kafka": 3}
    assert dict(state.db.execute("SELECT sink, COUNT(*) FROM outbox GROUP BY sink")) == {"slack": 3}
    assert dict(state.db.execute("SELECT sink, count FROM outbox_dropped")) == {"kafka": 3}
    assert outbox.drop_other_sinks(state.db, []) == {"slack": 3}
    assert state.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
