"""Reading sd-journal entries field by field: what the journal source and `oom-journal list`
share, and the names of journald's own that both match on."""
from __future__ import annotations

import os
from typing import Optional

from oom_journal.model import KernelLine

# journald's own "Missed %lu kernel messages" (systemd's catalog, SD_MESSAGE_JOURNAL_MISSED):
# journald fell behind /dev/kmsg and the kernel overwrote records before it read them.
MISSED_KERNEL_MESSAGES_ID = "e9bf28e6e834481bb6f48f548ad13606"
# journald's native socket (sd_journal_sendv writes here; its absence means no journald).
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def journald_available() -> bool:
    return os.path.exists(JOURNAL_SOCKET)


def read_boot_id(proc_root: str = "/proc") -> Optional[str]:
    """This boot's id in the journal's form (32 hex digits), or None where /proc has none."""
    try:
        with open(os.path.join(proc_root, "sys/kernel/random/boot_id")) as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return None


# The daemon's handles are python-systemd's C extension, systemd._reader._Reader (sd_journal_open,
# sd_journal_open_files), not systemd.journal.Reader: that module imports uuid, platform,
# traceback, datetime and systemd._journal (sd_journal_sendv, which we do not use: outputs/
# journal_socket.py), 0.7 MiB of the idle daemon's RSS (issue #18), for what the daemon uses of
# it: add_match() with keywords and this_boot(). `oom-journal list` (history/) converts fields
# and uses journal.Reader.
def open_reader(path: Optional[str] = None, files: Optional[list] = None):
    """A handle on the journal (sd_journal_open, LOCAL_ONLY as journal.Reader() opens it), on the
    directory `path` (sd_journal_open_directory) or on `files` (sd_journal_open_files); raises
    ImportError without python3-systemd, OSError if it cannot be opened."""
    cls = _reader_class()
    if files:
        return cls(0, None, list(files))
    if path:
        return cls(0, path)
    return cls(SD_JOURNAL_LOCAL_ONLY)


_READER_CLASS: Optional[type] = None


def _reader_class() -> type:
    global _READER_CLASS
    if _READER_CLASS is None:
        from systemd._reader import _Reader  # imported here: the kmsg-only path must work without it

        class Reader(_Reader):  # (no type hints: _Reader is Any to mypy)
            def add_match(self, *args: str, **kwargs: object) -> None:
                """FIELD=value matches, as journal.Reader.add_match (one sd_journal_add_match each)."""
                for arg in args:
                    super().add_match(arg)
                for key, value in kwargs.items():
                    super().add_match(key.encode() + b"=" + value if isinstance(value, bytes) else f"{key}={value}")

            def this_boot(self) -> None:
                """This boot's entries (as journal.Reader.this_boot; sd_id128_get_boot() reads BOOT_ID_FILE)."""
                with open(BOOT_ID_FILE) as f:
                    self.add_match(_BOOT_ID=f.read().strip().replace("-", ""))

        _READER_CLASS = Reader
    return _READER_CLASS


BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
SD_JOURNAL_LOCAL_ONLY = 1  # systemd/sd-journal.h


# Reading a field of the current entry without converting all of them: Reader.get_next() reads
# and converts every field of every entry in Python (~50 µs each, measured; reading this boot's
# 296,000 kernel lines at a first start took 6 s, during which the process cache's thread, which
# needs the interpreter's lock for each exec it reads, read 20 times slower and missed young
# victims), while sd_journal_get_data() of one field is ~1 µs. These are the _Reader (C
# extension) methods Reader.get_next() itself is built on, stable in python-systemd since 2013
# (231-235).
def step(r, forward: bool = True) -> bool:
    return bool(r._next(1) if forward else r._previous(1))


def field(r, name: str) -> Optional[bytes]:
    try:
        return r._get(name)
    except KeyError:
        return None


def int_field(r, name: str) -> Optional[int]:
    value = field(r, name)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def kernel_line_here(r, position: object = None) -> Optional[KernelLine]:
    """The current kernel entry as the parser takes it, from the four fields it needs; None for a
    record that userspace wrote into /dev/kmsg (it arrives with _TRANSPORT=kernel too: only the
    kernel's own, facility kern, may become an OOM event)."""
    if field(r, "SYSLOG_FACILITY") not in (None, b"0"):
        return None
    ts = int_field(r, "_SOURCE_MONOTONIC_TIMESTAMP")
    if ts is None:
        ts = int(r._get_monotonic()[0])
    return KernelLine(message=(field(r, "MESSAGE") or b"").decode("utf-8", "surrogateescape"),
                      timestamp_us=ts, position=position, priority=int_field(r, "PRIORITY") or 6)
