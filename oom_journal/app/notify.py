"""systemd's service notification protocol (sd_notify(3)), through sdnotify.

Without $NOTIFY_SOCKET (run by hand, in a container) every call does nothing.

The datagram is newline-separated VARIABLE=value assignments, and systemd acts on every line it
understands: MAINPID=, STOPPING=1, READY=1, FDSTORE=1, ... from a root service even when the pid
is outside its cgroup (src/core/service.c, service_notify_message). A STATUS= text that quotes a
process name such as "\\nMAINPID=4242\\n" would therefore hand systemd a second assignment
(reproduced: the unit's main pid became 4242, the watchdog then killed it). encode() is the only
way text reaches the socket: every value is made one printable line.
"""
from __future__ import annotations

import os
import re

from oom_journal.text import printable

_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
# STATUS= is shown by `systemctl status`; systemd keeps what it is sent, so a long one is cut
# here rather than by a reader (a few hundred characters is what a terminal line shows).
MAX_VALUE_CHARS = 2048


def encode(*assignments: str) -> bytes:
    """'VARIABLE=value' assignments as one notification datagram: each value on one line, with
    control characters (newline, CR, NUL, ESC, ...) and bytes that were not UTF-8 as visible
    escapes, so no value can add an assignment or steer a terminal."""
    lines = []
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not _VARIABLE.match(name):
            raise ValueError(f"not a VARIABLE=value assignment: {printable(assignment)[:80]}")
        value = printable(value)
        if len(value) > MAX_VALUE_CHARS:
            value = value[:MAX_VALUE_CHARS - 1] + "…"
        lines.append(f"{name}={value}")
    return "\n".join(lines).encode("utf-8")


class Notifier:
    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = None
        if self.enabled:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
            # Never block the daemon on its supervisor: a full socket queue drops a STATUS
            # update (sdnotify swallows the error) instead of stopping the kernel log reader.
            # (A socket that could not be connected is None: sdnotify then sends nothing.)
            if self._notifier.socket is not None:
                self._notifier.socket.setblocking(False)
        self.watchdog_interval = self._watchdog_interval(environ)

    @staticmethod
    def _watchdog_interval(environ):
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises."""
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    def notify(self, *assignments: str) -> None:
        data = encode(*assignments)  # also without a socket: a bad assignment is a bug, found in tests
        if self._notifier is not None:
            # sdnotify sends str as UTF-8 (SystemdNotifier.notify: state.encode()); the text is
            # already escaped, so decoding our own UTF-8 back is exact.
            self._notifier.notify(data.decode("utf-8"))
