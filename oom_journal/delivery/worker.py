"""Delivery from the outbox to the sinks: one worker thread per sink.

Detection never waits on a sink: the main loop only inserts outbox rows. Each worker takes its
sink's due rows, calls sink.deliver(), and settles each row by the sink's verdict: delivered
rows are deleted, RETRY rows wait (backoff.py: capped exponential backoff with jitter, or the server's
Retry-After), FAILED rows are set aside and reported. A slow or dead sink only delays itself.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from oom_journal.delivery.backoff import backoff
from oom_journal.store.outbox import SinkQueue
from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery

log = logging.getLogger(__name__)

BOUNDS_EVERY = 60.0  # seconds between enforcing the outbox's size and age bounds


class SinkWorker:
    def __init__(self, sink, state_path: str, max_events: int, max_age: float, max_bytes: Optional[int] = None,
                 clock=time.time, counters: Optional[dict] = None):
        self.sink = sink
        self.state_path = state_path
        self.max_events = max_events
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._new_rows = False
        self._thread: Optional[threading.Thread] = None
        self.state = "starting"  # ok | retrying | failing
        self.last_error = ""
        self.delivered = 0
        self.failed = 0
        self._counts = {"waiting": 0, "failed": 0, "dropped": 0}
        # delivered / retried / failed / dropped since the daemon started: a dict the daemon keeps
        # per sink name, so that a reload (new workers) goes on counting (app/metrics.py).
        self.counters = counters if counters is not None else {}

    @property
    def name(self) -> str:
        return self.sink.name

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New rows are in the outbox: the bounds are enforced before the next delivery."""
        self._new_rows = True
        self._wake.set()

    def request_stop(self) -> None:
        """Asks the worker to stop after the delivery in progress (bounded by the sink's own
        timeout); returns at once, so that several workers stop at the same time. The worker
        closes its sink when it ends. What was not delivered stays in the outbox."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            self.sink.close()

    def join(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for the worker to end; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive()

    def stop(self, timeout: float = 12.0) -> None:
        self.request_stop()
        if not self.join(timeout):
            log.warning("the %s sink did not stop within %.0f s; its undelivered events stay in the outbox",
                        self.name, timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def backlog(self) -> int:
        """Events waiting in the outbox for this sink, as last counted."""
        return int(self._counts.get("waiting", 0))

    def _count(self, key: str, n: int) -> None:
        if n:
            self.counters[key] = self.counters.get(key, 0) + n

    def summary(self) -> str:
        c = self._counts
        text = f"{self.name}: {self.state}"
        if c["waiting"]:
            text += f", {c['waiting']} waiting"
        if c["failed"]:
            text += f", {c['failed']} failed"
        if c["dropped"]:
            text += f", {c['dropped']} dropped"
        return text

    def _run(self) -> None:
        try:
            queue = SinkQueue(self.state_path, self.name, self.max_events, self.max_age, self.max_bytes)
        except Exception:  # the state database cannot be opened: the watchdog sees alive() = False
            log.exception("the %s sink's worker cannot open the outbox", self.name)
            self.state = "stopped"
            self.sink.close()
            return
        try:
            next_bounds = 0.0
            while not self._stop.is_set():
                now = self.clock()
                # At once when rows came (a burst of kills must not fill the disk for a minute
                # before the bounds apply), else once a minute (the age bound moves with time).
                if now >= next_bounds or self._new_rows:
                    self._new_rows = False
                    self._enforce_bounds(queue, now)
                    next_bounds = now + BOUNDS_EVERY
                hold = self._hold_off()
                if hold > 0:
                    due_at = queue.next_due()
                    if due_at is not None and due_at <= now:
                        # The sink cannot send yet (Slack: one message a second): wait before
                        # taking (leasing) the rows, so the next round takes those that come
                        # meanwhile too (one message for them all).
                        self._counts = queue.counts()  # STATUS and the backlog gauge: they wait
                        self._stop.wait(min(hold, BOUNDS_EVERY))
                        continue
                rows = queue.due(self.sink.max_batch, now)
                if rows:
                    self._deliver(queue, rows)
                    self._counts = queue.counts()
                    continue
                self._counts = queue.counts()
                if self.state == "starting":
                    self.state = "ok"
                nxt = queue.next_due()
                timeout = min(BOUNDS_EVERY, max(0.0, nxt - self.clock())) if nxt is not None else BOUNDS_EVERY
                self._wake.wait(timeout)
                self._wake.clear()
        except Exception:  # a bug here must not kill the daemon; the watchdog sees alive() = False
            log.exception("the %s sink's worker stopped", self.name)
            self.state = "stopped"
        finally:
            queue.close()
            self.sink.close()

    def _hold_off(self) -> float:
        hold_off = getattr(self.sink, "hold_off", None)  # optional: only pacing sinks have it
        try:
            return float(hold_off()) if hold_off is not None else 0.0
        except Exception:  # advice only: deliver() paces itself all the same
            return 0.0

    def _enforce_bounds(self, queue: SinkQueue, now: float) -> None:
        dropped = queue.enforce_bounds(now)
        self._count("dropped", sum(dropped.values()))
        bounds = {"age": f"older than {self.max_age:.0f} s", "events": f"beyond {self.max_events} events",
                  "bytes": f"beyond {self.max_bytes} bytes"}
        for reason, n in dropped.items():
            if n:
                log.warning("the %s sink's outbox was over its bounds: dropped the %d oldest undelivered events "
                            "(%s)", self.name, n, bounds[reason])

    def _deliver(self, queue: SinkQueue, rows) -> None:
        try:
            results = self.sink.deliver([r.document for r in rows])
            if len(results) != len(rows):
                raise RuntimeError(f"{len(results)} outcomes for {len(rows)} documents")
        except Exception as e:  # a sink must not raise; if it does, nothing was confirmed
            log.error("the %s sink failed unexpectedly: %s", self.name, type(e).__name__)
            log.debug("the %s sink's failure", self.name, exc_info=True)
            results = [Delivery(RETRY, f"internal error: {type(e).__name__}")] * len(rows)
        now = self.clock()
        delivered, retry, failed = [], [], []
        for row, result in zip(rows, results, strict=True):
            if result.outcome == OK:
                delivered.append(row.id)
            elif result.outcome == FAILED:
                failed.append((row.id, result.error))
                log.error("the %s sink rejected event %s for good: %s", self.name, row.event_id, result.error)
            else:
                retry.append((row.id, now + backoff(row.attempts + 1, result.retry_after), result.error))
        queue.settle(delivered, retry, failed)
        self.delivered += len(delivered)
        self.failed += len(failed)
        self._count("delivered", len(delivered))
        self._count("retried", len(retry))
        self._count("failed", len(failed))
        if retry:
            if self.state != "retrying" or retry[0][2] != self.last_error:
                log.warning("the %s sink could not deliver %d events, will retry: %s", self.name, len(retry), retry[0][2])
            self.state, self.last_error = "retrying", retry[0][2]
        else:
            if self.state == "retrying":
                log.info("the %s sink delivers again", self.name)
            self.state = "ok"
