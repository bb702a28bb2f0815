"""Where each event is written first: the systemd journal, or stdout as JSON where there is none."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable, Optional

from .event import OomEvent
from .text import json_line

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _sendv(*lines):
    from systemd import journal  # lazily: the stdout output works without python3-systemd

    journal.sendv(*lines)


def _line(key: str, value) -> bytes:
    if isinstance(value, bytes):
        return key.encode() + b"=" + value
    # Text may carry surrogate-escaped bytes (a comm that was not UTF-8): write the exact bytes.
    return key.encode() + b"=" + str(value).encode("utf-8", "surrogateescape")


class JournalWriter:
    """Writes one structured entry per event through journald's native protocol (sd_journal_sendv)."""

    name = "journal"

    def __init__(self, send: Callable = _sendv, reader_factory: Optional[Callable] = None):
        self._send = send
        self._reader_factory = reader_factory

    def describe(self) -> str:
        return "the journal"

    def write(self, event: OomEvent) -> None:
        """Raises OSError when journald cannot take it (not running, restarting)."""
        self._send(*[_line(k, v) for k, v in event.journal_fields().items()])

    def recorded_event_ids(self, boot_id: str) -> set:
        """OOM_EVENT_IDs this boot's journal already holds: written before a crash that came
        between the journal write and the state commit, or by an earlier installation."""
        try:
            if self._reader_factory:
                reader = self._reader_factory()
            else:
                from systemd import journal

                reader = journal.Reader()
        except (ImportError, OSError) as e:
            log.warning("cannot read the journal to find kills recorded before: %s", e)
            return set()
        try:
            # sd_journal_query_unique() ignores matches (sd_journal_query_unique(3)), and reads
            # only the field's data objects, not every entry; event ids start with the boot id.
            prefix = boot_id + "-"
            return {str(v) for v in reader.query_unique("OOM_EVENT_ID") if str(v).startswith(prefix)}
        finally:
            reader.close()


class JsonLinesWriter:
    """One JSON event document per line on stdout: for containers and hosts with no journald."""

    name = "stdout"

    def __init__(self, stream=None):
        self._stream = stream or sys.stdout

    def describe(self) -> str:
        return "stdout (JSON lines)"

    def write(self, event: OomEvent) -> None:
        self._stream.write(json_line(event.document()) + "\n")
        self._stream.flush()

    def recorded_event_ids(self, boot_id: str) -> set:
        return set()


def journald_available() -> bool:
    return os.path.exists(JOURNAL_SOCKET)
