"""journald's native protocol on a socket of our own, never blocking (systemd.journal-fields(7),
"Native Journal Protocol" in systemd's docs/JOURNAL_NATIVE_PROTOCOL.md).

Why not python-systemd's journal.sendv(): its extension does not release the interpreter's lock
(`nm -D _journal.cpython-311-*.so` has no PyEval_SaveThread; _reader's has), and
sd_journal_sendv() sends on a blocking socket. While journald is stopped or busy, its socket's
queue is full after net.unix.max_dgram_qlen datagrams (10 here, from every process on the
machine), and sendv() then waits, holding the lock: the process cache's thread cannot read a
young victim's command line at its exec (tests/test_lost_kills.py measured 2 ticks of a 1 ms
loop in 1.5 s, instead of ~1,400). Here the socket is non-blocking: a full queue is EAGAIN, an
OSError the daemon retries later, and the lock is free meanwhile (socket calls release it).

One datagram per entry: each field `KEY=value\\n`, or, when the value holds a newline or is
binary, `KEY\\n` + its length as 64-bit little-endian + the value + `\\n`. An entry larger than
a datagram may be (EMSGSIZE) goes in a sealed memfd passed with SCM_RIGHTS, as sd_journal_sendv
does.
"""
from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
from typing import Optional

from oom_journal.sources.journal_fields import JOURNAL_SOCKET

# sd-journal asks for an 8 MiB send buffer (SNDBUF_SIZE in journal-send.c); as root FORCE
# passes net.core.wmem_max. A larger entry goes through a memfd.
SNDBUF_SIZE = 8 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def encode(lines) -> bytes:
    """`KEY=value` lines (bytes) as one native-protocol datagram."""
    out = []
    for line in lines:
        key, sep, value = line.partition(b"=")
        if not sep:
            raise ValueError(f"not KEY=value: {line[:40]!r}")
        if b"\n" in value:
            out.append(key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            out.append(line + b"\n")
    return b"".join(out)


class JournalSocket:
    """Sends entries to journald; send() raises OSError (EAGAIN while journald's queue is full,
    ENOENT/ECONNREFUSED while it is not running) and never blocks."""

    def __init__(self, path: str = JOURNAL_SOCKET):
        self.path = path
        self._sock: Optional[socket.socket] = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            s.setblocking(False)
            for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, option, SNDBUF_SIZE)
                    break
                except OSError:
                    continue
            self._sock = s
        return self._sock

    def send(self, *lines: bytes) -> None:
        data = encode(lines)
        s = self._socket()
        try:
            s.sendto(data, self.path)
            return
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
        self._send_memfd(s, data)

    def _send_memfd(self, s: socket.socket, data: bytes) -> None:
        fd = os.memfd_create("oom-journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            # journald takes only a sealed memfd: the sender cannot change it while it is read.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            s.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
