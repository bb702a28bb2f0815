"""Stage 1, kernel log sources: each yields KernelLine records in the kernel's order, woken by an fd.

journal.py reads journald's copy of the kernel log, kmsg.py reads /dev/kmsg; journal_fields.py
holds the sd-journal helpers they share with `oom-journal list`. Positions are persisted by the
state store only after what they cover is recorded (app/daemon.py).
"""
from __future__ import annotations

from typing import Optional, Protocol

from oom_journal.model import KernelLine, Resume


class Source(Protocol):
    name: str  # "journal" or "kmsg": the key of its read position in the state database

    def open(self, resume: Optional[Resume]) -> None:
        """Starts reading at `resume` (None: this boot's log from its start)."""

    def fileno(self) -> int:
        """An fd that is readable when lines may be waiting (the daemon's select() waits on it)."""

    def read_available(self, limit: int = ...) -> list[KernelLine]:
        """The lines available now, at most `limit`; never blocks. The journal source's list also
        holds KillerLine records (the userspace OOM killers' entries, sources/killers.py)."""

    def wake_at(self) -> Optional[float]:
        """time.monotonic() at which to read again though fileno() stayed quiet, or None."""

    def describe(self) -> str:
        ...

    def close(self) -> None:
        ...
