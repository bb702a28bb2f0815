"""/dev/kmsg: the kernel's log buffer, one record per read(2).

Record format (Documentation/ABI/testing/dev-kmsg):
    PRIORITY,SEQNUM,TIMESTAMP_US,FLAGS[,...];MESSAGE\\n
     KEY=VALUE\\n            <- continuation (dictionary) lines start with a space
Reads return exactly one record. EPIPE: the reader was overrun and records were overwritten;
the next read continues from the oldest record still there. EINVAL: the buffer was too small.
Non-printable bytes and '\\' in MESSAGE are escaped as \\xNN by the kernel.
"""
from __future__ import annotations

import errno
import logging
import os
import re
from typing import Optional

from oom_journal.model import KernelLine
from oom_journal.model import Resume

log = logging.getLogger(__name__)

# The kernel's record limit is 1024 bytes of text plus the dictionary (CONSOLE_EXT_LOG_MAX =
# 8192 in kernel/printk/printk.c); a larger buffer costs nothing.
READ_SIZE = 16384
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
LOG_KERN = 0


def parse_record(record: bytes) -> Optional[KernelLine]:
    """One /dev/kmsg record to a KernelLine; None for records that are not the kernel's own.

    Records written into /dev/kmsg by userspace (facility != kern, e.g. systemd's early boot
    messages) are dropped: only the kernel's own words may become an OOM event.
    """
    header, sep, rest = record.partition(b";")
    if not sep:
        return None
    fields = header.split(b",")
    try:
        prio_fac, seq, ts = int(fields[0]), int(fields[1]), int(fields[2])
    except (ValueError, IndexError):
        return None
    if prio_fac >> 3 != LOG_KERN:
        return None
    message = rest.split(b"\n", 1)[0]  # continuation lines (SUBSYSTEM=, DEVICE=) follow
    message = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), message)
    return KernelLine(message=message.decode("utf-8", "surrogateescape"), timestamp_us=ts,
                      seq=seq, position=seq, priority=prio_fac & 7)


class KmsgSource:
    name = "kmsg"

    def __init__(self, path: str = "/dev/kmsg"):
        self.path = path
        self._fd: Optional[int] = None
        self._resume_seq: Optional[int] = None  # skip records below this
        self._next_seq: Optional[int] = None  # the sequence number we expect next
        self.lost = 0  # records the kernel overwrote before we read them

    def open(self, resume: Optional[Resume]) -> None:
        # O_NONBLOCK: read() returns EAGAIN at the end instead of waiting; poll() wakes us.
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if resume is not None:
            self._resume_seq = int(str(resume.position)) + (0 if resume.inclusive else 1)
            self._next_seq = self._resume_seq

    def fileno(self) -> int:
        assert self._fd is not None
        return self._fd

    def describe(self) -> str:
        return f"kernel log from {self.path}"

    def wake_at(self) -> Optional[float]:
        return None  # every record makes the fd readable: nothing to retry

    def read_available(self, limit: int = 4096) -> list:
        """Records available now, at most `limit` (so the caller stays responsive)."""
        assert self._fd is not None, "read_available() before open()"
        lines: list = []
        while len(lines) < limit:
            try:
                record = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:
                    # Overrun: the sequence gap on the next record says how many were lost.
                    continue
                raise
            if not record:
                break
            line = self._account(record)
            if line is not None:
                lines.append(line)
        return lines

    def _account(self, record: bytes) -> Optional[KernelLine]:
        try:
            seq = int(record.split(b",", 2)[1])
        except (ValueError, IndexError):
            log.warning("unreadable /dev/kmsg record: %r", record[:80])
            return None
        if self._resume_seq is not None and seq < self._resume_seq:
            return None  # recorded before the restart
        if self._next_seq is not None and seq > self._next_seq:
            gap = seq - self._next_seq
            self.lost += gap
            log.warning("%d kernel messages were lost before oom-journal read them (/dev/kmsg overrun: "
                        "sequence %d follows %d); an OOM kill among them cannot be recorded",
                        gap, seq, self._next_seq - 1)
        self._next_seq = seq + 1
        self._resume_seq = None
        return parse_record(record)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
