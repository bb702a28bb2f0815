"""Stage 5, outputs: where each event is written first, before the outbox: the journal
(journal.py) or, without journald, stdout as JSON lines (stdout.py)."""
from __future__ import annotations

from typing import Protocol

from oom_journal.enrich.event import OomEvent


class Writer(Protocol):
    name: str  # "journal" or "stdout"

    def describe(self) -> str:
        ...

    def write(self, event: OomEvent) -> None:
        """Writes the event; raises OSError when the output cannot take it now (retried)."""

    def recorded_event_ids(self, boot_id: str) -> set:
        """Event ids of this boot the output already holds, from root (a crash came between the
        write and the state commit): never written again."""
