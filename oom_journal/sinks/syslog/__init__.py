"""The Syslog sink: each event as ONE syslog record, sent over UDP, TCP or a unix socket.

The record is built by format.py (RFC 5424 or 3164), whose strings escape.py makes one line and
escaped, within the bounds of truncate.py (what rsyslog takes whole, measured); transport.py
sends it (udp, tcp with octet counting, unix datagram or stream) and says whether it arrived.

Outcomes ("should we retry?"; delivery/backoff.py decides when):
  sent (udp, unix datagram), or written and acknowledged (tcp, unix stream)      OK
  refused, unreachable, DNS failure, reset, EPIPE, timeout, no such socket path  RETRY
  connection closed by the server around the write, bytes unacknowledged          RETRY
  the deadline (timeout, 10 s) reached before a record was sent                   RETRY
  EMSGSIZE (the socket cannot carry a record of this size)                         FAILED
  a record that cannot fit its bound even with every value cut to nothing         FAILED
A malformed record cannot happen: the sink builds it. The sink never raises for the network.

probe(): tcp and unix connect (the connection is kept for deliver()); udp cannot be checked:
a connected UDP socket's send succeeds whether anyone listens or not.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import tzinfo
from typing import Optional

from oom_journal.sinks.base import FAILED, Delivery, Sink
from oom_journal.sinks.syslog.format import FACILITIES, format_rfc3164, format_rfc5424
from oom_journal.sinks.syslog.transport import CONNECT_TIMEOUT, Transport
from oom_journal.sinks.syslog.truncate import DATAGRAM_MAX, STREAM_MAX, UDP_PAYLOAD_MAX, RecordTooLarge

TIMEOUT = 10.0  # seconds: the most one deliver() or probe() blocks


class SyslogSink(Sink):
    name = "syslog"
    option = "--syslog-server"
    max_batch = 100

    def __init__(self, cfg, *, pid: Optional[int] = None, tz: Optional[tzinfo] = None,
                 timeout: float = TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT,
                 datagram_max: Optional[int] = None, stream_max: Optional[int] = None):
        self.server = cfg.syslog_server
        self.proto = getattr(cfg, "syslog_proto", None) or "udp"
        self.format = getattr(cfg, "syslog_format", None) or "rfc5424"
        self.facility_name = getattr(cfg, "syslog_facility", None) or "daemon"
        self.facility = FACILITIES[self.facility_name]
        self.pid = pid if pid is not None else os.getpid()  # PROCID: the sender, this daemon
        self.tz = tz  # rfc3164's local time zone; None: this machine's
        self.timeout = timeout
        # --syslog-max-size bounds every record (default 8096: what a default rsyslog takes
        # whole; a larger TCP frame would be split into a forged second record, truncate.py).
        configured = getattr(cfg, "syslog_max_size", None)
        self.datagram_max = datagram_max or min(configured or DATAGRAM_MAX, UDP_PAYLOAD_MAX)
        self.stream_max = stream_max or min(configured or STREAM_MAX, STREAM_MAX)
        self._lock = threading.Lock()  # deliver(), probe() and close(): one at a time on the transport
        self._transport = Transport(self.server, self.proto, timeout=timeout, connect_timeout=connect_timeout)

    def open(self) -> None:
        """Nothing to import (the standard library only); connects on first use."""

    def describe(self) -> str:
        # No secret in a syslog target; redact.mask is for URLs with credentials.
        return f"syslog {self.format} over {self.proto} to {self.server} (facility {self.facility_name})"

    def probe(self) -> Optional[str]:
        with self._lock:
            return self._transport.probe()

    def deliver(self, documents: list) -> list[Delivery]:
        deadline = time.monotonic() + self.timeout
        with self._lock:
            records: list = []
            results: list = [None] * len(documents)
            max_bytes = self.stream_max if self.proto == "tcp" else self.datagram_max
            for i, doc in enumerate(documents):
                try:
                    records.append((i, self.format_record(doc, max_bytes)))
                except RecordTooLarge as e:
                    results[i] = Delivery(FAILED, str(e))
            if records:
                for i, outcome in self._transport.send(records, deadline):
                    results[i] = outcome
        return results

    def close(self) -> None:
        with self._lock:
            self._transport.close()

    def format_record(self, doc: dict, max_bytes: Optional[int] = None) -> bytes:
        if max_bytes is None:
            max_bytes = self.stream_max if self.proto == "tcp" else self.datagram_max
        if self.format == "rfc3164":
            return format_rfc3164(doc, facility=self.facility, procid=self.pid, max_bytes=max_bytes, tz=self.tz)
        return format_rfc5424(doc, facility=self.facility, procid=self.pid, max_bytes=max_bytes)
