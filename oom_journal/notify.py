"""systemd's service notification protocol (sd_notify(3)), through sdnotify.

Without $NOTIFY_SOCKET (run by hand, in a container) every call does nothing.
"""
from __future__ import annotations

import os


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
        if self._notifier is not None:
            self._notifier.notify("\n".join(assignments))
