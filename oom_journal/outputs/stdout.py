"""Where each event is written first where there is no journald (a container): stdout, one
JSON event document a line, which container log collectors read."""
from __future__ import annotations

import sys

from oom_journal.enrich.event import OomEvent
from oom_journal.text import json_line


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
