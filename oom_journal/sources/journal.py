"""The kernel's messages as journald recorded them (_TRANSPORT=kernel), read with sd-journal.

Woken by the journal's inotify fd (sd_journal_get_fd), never by a sleeping poll; each wake-up is
followed by sd_journal_process() and reading every new entry.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Optional

from ..model import KernelLine
from . import Resume

log = logging.getLogger(__name__)

# journald's own "Missed %lu kernel messages" (systemd's catalog, SD_MESSAGE_JOURNAL_MISSED):
# journald fell behind /dev/kmsg and the kernel overwrote records before it read them.
MISSED_KERNEL_MESSAGES_ID = "e9bf28e6e834481bb6f48f548ad13606"
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _reader(path=None):
    from systemd import journal  # imported here: the kmsg-only path must work without it

    return journal.Reader(path=path) if path else journal.Reader()


def journald_collects_kernel_messages(path: Optional[str] = None) -> tuple:
    """(True/False, reason): does this boot's journal hold the kernel's messages?

    journald reads /dev/kmsg only where it may (ReadKMsg=, not in containers), so the test is
    whether this boot's journal has any _TRANSPORT=kernel entry: it always does once journald
    has read the kernel's boot messages.
    """
    if path is None and not os.path.exists(JOURNAL_SOCKET):
        return False, f"journald is not running ({JOURNAL_SOCKET} is missing)"
    try:
        reader = _reader(path)
    except ImportError:
        return False, "the systemd Python module is not installed (python3-systemd)"
    except OSError as e:
        return False, f"cannot open the journal: {e}"
    try:
        reader.this_boot()
        reader.add_match(_TRANSPORT="kernel")
        reader.seek_tail()
        if reader.get_previous():
            return True, "journald is recording this boot's kernel messages"
        return False, ("this boot's journal has no kernel messages (journald does not read "
                       "/dev/kmsg here, or this user may not read them)")
    finally:
        reader.close()


class JournalSource:
    name = "journal"

    def __init__(self, path: Optional[str] = None, reader_factory=_reader):
        self.path = path
        self._reader_factory = reader_factory
        self._reader = None
        self._skip_cursor: Optional[str] = None
        self.missed = 0  # kernel messages journald reported it missed

    def open(self, resume: Optional[Resume]) -> None:
        r = self._reader_factory(self.path)
        # (kernel messages OR journald's "missed kernel messages") AND this boot
        r.add_match(_TRANSPORT="kernel")
        r.add_disjunction()
        r.add_match(MESSAGE_ID=MISSED_KERNEL_MESSAGES_ID)
        r.add_conjunction()
        r.this_boot()
        if resume is not None:
            r.seek_cursor(str(resume.position))
            if not resume.inclusive:
                self._skip_cursor = str(resume.position)
        else:
            r.seek_head()
        r.fileno()  # creates the inotify watch now, so nothing written from here on is missed
        self._reader = r

    def fileno(self) -> int:
        return self._reader.fileno()

    def describe(self) -> str:
        return "kernel log from the journal"

    def read_available(self, limit: int = 4096) -> list:
        r = self._reader
        r.process()  # consume the inotify events (sd_journal_process), picks up new files
        lines = []
        while len(lines) < limit:
            entry = r.get_next()
            if not entry:
                break
            cursor = entry.get("__CURSOR")
            if self._skip_cursor is not None:
                skip, self._skip_cursor = cursor == self._skip_cursor, None
                if skip:
                    continue
            line = self._to_line(entry, cursor)
            if line is not None:
                lines.append(line)
        return lines

    def _to_line(self, entry: dict, cursor: str) -> Optional[KernelLine]:
        if entry.get("MESSAGE_ID") is not None and str(entry.get("MESSAGE_ID")).replace("-", "") == MISSED_KERNEL_MESSAGES_ID:
            self.missed += 1
            log.warning("journald reports it missed kernel messages (%s); an OOM kill among them "
                        "cannot be recorded", entry.get("MESSAGE"))
            return None
        # Records that userspace wrote into /dev/kmsg also arrive with _TRANSPORT=kernel; only
        # the kernel's own (facility kern) may become an OOM event.
        if int(entry.get("SYSLOG_FACILITY", 0)) != 0:
            return None
        message = entry.get("MESSAGE", "")
        if isinstance(message, bytes):  # not UTF-8: the converter left bytes
            message = message.decode("utf-8", "surrogateescape")
        ts = entry.get("_SOURCE_MONOTONIC_TIMESTAMP")
        if isinstance(ts, datetime.timedelta):
            ts = ts // datetime.timedelta(microseconds=1)
        elif ts is None:
            mono = entry.get("__MONOTONIC_TIMESTAMP")
            ts = mono[0] // datetime.timedelta(microseconds=1) if mono else 0
        return KernelLine(message=message, timestamp_us=int(ts), seq=None, position=cursor,
                          priority=int(entry.get("PRIORITY", 6)))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
