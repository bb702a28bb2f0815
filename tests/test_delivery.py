"""The outbox and the per-sink workers: retry, set aside, bounds, survival across restarts.

The sink here is a small recording sink written for this test: the unit under test is the
shared delivery machinery. The real sinks are tested against real servers (test_sink_*.py) and
end to end with the daemon (test_sinks_e2e.py).
"""
import threading
import time

from oom_journal.delivery import backoff as delivery
from oom_journal.delivery.backoff import backoff
from oom_journal.delivery.worker import SinkWorker
from oom_journal.store.outbox import SinkQueue
from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery, Sink
from oom_journal.model import Resume
from oom_journal.store.state import StateStore


class RecordingSink(Sink):
    name = "recording"
    max_batch = 10

    def __init__(self, outcomes=()):
        self.outcomes = list(outcomes)  # consumed one per document; then OK
        self.received = []
        self.calls = threading.Event()

    def describe(self):
        return "a list"

    def deliver(self, documents):
        results = []
        for d in documents:
            outcome = self.outcomes.pop(0) if self.outcomes else Delivery(OK)
            if outcome.outcome == OK:
                self.received.append(d["event_id"])
            results.append(outcome)
        self.calls.set()
        return results


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def queue_events(state, n, sink="recording"):
    for i in range(n):
        state.record(f"b-{i}", "kmsg", Resume(i, False), sinks=[sink], document={"event_id": f"b-{i}"})


def test_backoff_is_capped_exponential_with_jitter_and_honours_retry_after():
    assert [backoff(a, rand=lambda: 0.0) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff(a, rand=lambda: 1.0) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff(50, rand=lambda: 1.0) == delivery.BACKOFF_CAP
    assert backoff(1, retry_after=7.5, rand=lambda: 0.0) == 7.5


def test_retry_then_delivered_once_and_failed_set_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "BACKOFF_BASE", 0.01)
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 3)
    sink = RecordingSink([Delivery(RETRY, "down"), Delivery(FAILED, "mapping error"), Delivery(OK),
                          Delivery(RETRY, "down again")])
    w = SinkWorker(sink, state.path, max_events=100, max_age=3600)
    w.start()
    wait(lambda: sorted(sink.received) == ["b-0", "b-2"])
    wait(lambda: w.summary() == "recording: ok, 1 failed")
    w.stop()
    assert sink.received.count("b-0") == 1
    q = SinkQueue(state.path, "recording", 100, 3600)
    assert q.counts() == {"waiting": 0, "failed": 1, "dropped": 0}
    err = q.db.execute("SELECT event_id, last_error FROM outbox WHERE failed = 1").fetchall()
    assert err == [("b-1", "mapping error")]


def test_undelivered_events_survive_a_restart(tmp_path):
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 2)
    state.close()
    # A new process: a new store and worker over the same directory deliver what was left.
    state = StateStore(str(tmp_path), "b")
    sink = RecordingSink()
    w = SinkWorker(sink, state.path, max_events=100, max_age=3600)
    w.start()
    wait(lambda: sorted(sink.received) == ["b-0", "b-1"])
    w.stop()


def test_bounds_drop_the_oldest_and_count_them(tmp_path):
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 5)
    sink = RecordingSink([Delivery(RETRY, "down")] * 100)
    w = SinkWorker(sink, state.path, max_events=3, max_age=3600)
    w.start()
    wait(lambda: "2 dropped" in w.summary())
    w.stop()
    q = SinkQueue(state.path, "recording", 3, 3600)
    ids = [r[0] for r in q.db.execute("SELECT event_id FROM outbox ORDER BY id")]
    assert ids == ["b-2", "b-3", "b-4"]
    assert q.counts()["dropped"] == 2


def test_age_bound(tmp_path):
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 2)
    q = SinkQueue(state.path, "recording", 100, max_age=60)
    assert q.enforce_bounds(time.time() + 120) == {"age": 2, "events": 0, "bytes": 0}
    assert q.counts() == {"waiting": 0, "failed": 0, "dropped": 2}


def test_a_sink_that_raises_is_retried_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "BACKOFF_BASE", 0.01)
    state = StateStore(str(tmp_path), "b")
    queue_events(state, 1)

    class Broken(RecordingSink):
        def deliver(self, documents):
            if not self.calls.is_set():
                self.calls.set()
                raise ConnectionError("boom")
            return super().deliver(documents)

    sink = Broken()
    w = SinkWorker(sink, state.path, max_events=100, max_age=3600)
    w.start()
    wait(lambda: sink.received == ["b-0"])
    assert w.alive()
    w.stop()
