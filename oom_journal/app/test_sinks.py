"""`oom-journal test-sinks`: a clearly marked event, sent to each configured sink at once."""
from __future__ import annotations

import time
import uuid

from oom_journal.app.log import setup_logging
from oom_journal.enrich.event import OomEvent
from oom_journal.enrich.host import read_host_info
from oom_journal.model import HostInfo, KernelKill
from oom_journal.sinks import configured_sinks
from oom_journal.sinks.base import OK, SinkUnavailable


class TestEvent(OomEvent):
    """No process was killed: the message says so, and the document carries "test": true (README,
    "Event document"), so a consumer can tell it from a kill."""

    __test__ = False  # not a pytest test class, whatever its name

    @classmethod
    def make(cls, host: HostInfo) -> "TestEvent":
        kill = KernelKill(reason="oom-journal test event", pid=0, comm="oom-journal",
                          timestamp_us=int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6),
                          kill_message="(none: a test event from oom-journal test-sinks)")
        return cls(kill=kill, host=host, time=time.time(), argv=[b"oom-journal", b"test-sinks"],
                   cmdline_source="test", event_id=f"test-{uuid.uuid4().hex}")

    def message(self) -> str:
        return (f"oom-journal test event from {self.host.hostname}: no process was killed; "
                f"this checks that OOM kill reports reach this destination")

    def document(self) -> dict:
        return dict(super().document(), test=True)


def test_sinks(cfg) -> int:
    """What a user runs right after configuring a sink: does it accept an event?"""
    setup_logging("error" if cfg.log_level != "debug" else "debug")
    sinks = configured_sinks(cfg)
    if not sinks:
        print("no sinks are configured (see oom-journal.conf(5): syslog-server, elasticsearch-server, "
              "kafka-brokers, slack-webhook)")
        return 0
    event = TestEvent.make(read_host_info(cfg.proc_root))
    print(f"sending test event {event.event_id}")
    failures = 0
    for sink in sinks:
        try:
            sink.open()
        except SinkUnavailable as e:
            print(f"{sink.name}: FAILED: {e}")
            failures += 1
            continue
        try:
            (result,) = sink.deliver([event.document()])
        finally:
            sink.close()
        if result.outcome == OK:
            print(f"{sink.name} ({sink.describe()}): accepted")
        else:
            failures += 1
            kind = "FAILED" if result.outcome != "retry" else "FAILED (temporary: the daemon would retry)"
            print(f"{sink.name} ({sink.describe()}): {kind}: {result.error}")
    return 1 if failures else 0
