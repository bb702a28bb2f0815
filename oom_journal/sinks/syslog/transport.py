"""The way to one syslog server: UDP, TCP with octet counting, or a unix socket.

Transports
  udp   one datagram per record, on a connected socket (re-resolved after an error).
  tcp   octet counting, RFC 6587 §3.4.1: `LEN SP SYSLOG-MSG`, one persistent connection.
  unix  a datagram socket (/dev/log), or, if the path is a stream socket (EPROTOTYPE), a stream
        with each record ended by NUL, as glibc's syslog(3) does on a stream /dev/log.

Plain TCP syslog has no acknowledgements, so a record written to a connection the server has
already closed is lost without an error (rsyslog's author measured it: "On the (un)reliability of
plain tcp syslog", 2008). To never report OK for a record that may be lost:
  - before a batch, the connection is checked (poll + MSG_PEEK): a server that has gone away
    (rsyslog stopped or restarted sends FIN) is seen as EOF, and a new connection is made;
  - after writing, the transport waits (within the deadline) until the server's TCP has acknowledged
    every byte (SIOCOUTQ, write_seq - snd_una in tcp_ioctl(), reaches 0; on a unix stream:
    until the reader has read them), then checks the connection again;
  - a write error (EPIPE, ECONNRESET, a timeout), bytes still unacknowledged at the deadline, or
    a connection found closed after writing makes EVERY record written on that connection in
    this call RETRY: one may have arrived (a duplicate later; the event_id param tells), none is
    reported OK while lost. A server whose machine vanishes after acknowledging is beyond what
    plain TCP syslog can tell (RELP could); SIOCOUTQ at least catches one that stops answering.
A connection reused from an earlier call that fails during a batch (the server went away between
the check and the write) is replaced once, and the whole batch goes again on the new one.

The outcomes of sending ("should we retry?"): the table in sinks/syslog/__init__.py.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import termios
import threading
import time
from typing import Optional

from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds, for one connect (within the deliver deadline)


class Transport:
    """Records to one server (--syslog-server, --syslog-proto), one connection or socket kept
    between calls. Not thread-safe: the sink calls it under its lock."""

    def __init__(self, server: str, proto: str, *, timeout: float, connect_timeout: float = CONNECT_TIMEOUT):
        self.server = server
        self.proto = proto
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._sock: Optional[socket.socket] = None
        self._stream = self.proto == "tcp"  # unix: decided by the socket at the path
        if self.proto == "unix":
            self.address = self.server
        else:
            host, _, port = self.server.rpartition(":")
            self.host, self.port = host.strip("[]"), int(port)
            kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
            self._resolver = _Resolver(self.host, self.port, kind)

    def probe(self) -> Optional[str]:
        """tcp and unix connect (the connection is kept for send()); udp only resolves the name."""
        if self.proto == "udp":
            try:
                self._resolver.resolve(self.timeout)
            except OSError as e:
                return f"udp {self.server}: {_error_text(e)}"
            return "UDP: not checkable (a datagram gets no answer)"
        try:
            self._connection(time.monotonic() + self.timeout)
        except OSError as e:
            return f"{self.proto} {self.server}: {_error_text(e)}"
        return None

    def send(self, records: list, deadline: float) -> list:
        """(position, Delivery) for each (position, record); never raises for the network."""
        send = self._send_stream if self._is_stream() else self._send_datagrams
        return send(records, deadline)

    def close(self) -> None:
        self._drop()

    def _frame(self, record: bytes) -> bytes:
        if self.proto == "tcp":
            return b"%d %s" % (len(record), record)  # RFC 6587 §3.4.1 octet counting
        return record + b"\0"  # unix stream: as glibc's syslog(3)

    # --- connections ---------------------------------------------------------------------------
    def _is_stream(self) -> bool:
        if self.proto == "unix" and self._sock is None:
            try:  # learn the kind of socket at the path; a failure shows in the send
                self._connection(time.monotonic() + min(self.connect_timeout, self.timeout))
            except OSError:
                pass
        return self._stream

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _connection(self, deadline: float) -> tuple:
        """(the open connection, checked, or a new one; whether it is new). Raises OSError."""
        if self._sock is not None:
            if self._sock.type != socket.SOCK_STREAM:
                return self._sock, False  # a datagram socket has no connection to lose
            gone = _closed_by_peer(self._sock)
            if gone is None:
                return self._sock, False
            log.info("syslog %s: the connection was closed (%s); reconnecting", self.server, gone)
            self._drop()
        if self.proto == "unix":
            timeout = max(0.001, min(self.connect_timeout, deadline - time.monotonic()))
            self._sock = self._connect_unix(timeout)
        else:
            self._sock = self._connect_inet(deadline)
        return self._sock, True

    def _connect_inet(self, deadline: float) -> socket.socket:
        """Each address of the name in turn (IPv6 and IPv4), as socket.create_connection does,
        within the deadline and CONNECT_TIMEOUT each."""
        error: Optional[OSError] = None
        for family, kind, proto, _, addr in self._resolver.resolve(deadline - time.monotonic()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise error or socket.timeout("timed out")
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(min(self.connect_timeout, remaining))
                sock.connect(addr)  # for UDP: no packet, it only fixes the peer
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error or OSError(errno.EADDRNOTAVAIL, "the name has no address")

    def _connect_unix(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.address)
            self._stream = False
            return sock
        except OSError as e:
            sock.close()
            if e.errno != errno.EPROTOTYPE:
                raise
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a stream /dev/log
        sock.settimeout(timeout)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self._stream = True
        return sock

    # --- sending ------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.proto} {self.server}"

    def _send_datagrams(self, records: list, deadline: float) -> list:
        out: list = []
        reconnected = False
        for n, (i, record) in enumerate(records):
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"{self._where()}: timed out"
                    return out + [(j, Delivery(RETRY, reason)) for j, _ in records[n:]]
                fresh = True
                try:
                    sock, fresh = self._connection(deadline)
                    if sock.type == socket.SOCK_STREAM:  # the unix path became a stream socket
                        self._drop()
                        raise OSError(errno.EPROTOTYPE, "the socket changed from datagram to stream")
                    sock.settimeout(remaining)
                    sent = sock.send(record)
                    if sent != len(record):  # a datagram goes whole or not at all
                        raise OSError(errno.EMSGSIZE, "datagram cut short")
                    out.append((i, Delivery(OK)))
                    break
                except OSError as e:
                    reason = f"{self._where()}: {_error_text(e)}"
                    if e.errno == errno.EMSGSIZE:
                        out.append((i, Delivery(FAILED, reason)))
                        break
                    self._drop()
                    # A unix socket reused from an earlier call may point at a syslog daemon
                    # that has since restarted (ECONNREFUSED): connect again, once. Not for UDP:
                    # its ECONNREFUSED reports an earlier datagram refused (ICMP); the server is down.
                    if self.proto == "unix" and not fresh and not reconnected:
                        reconnected = True
                        continue
                    log.debug("syslog %s: %s", self.server, reason)
                    return out + [(j, Delivery(RETRY, reason)) for j, _ in records[n:]]
        return out

    def _send_stream(self, records: list, deadline: float) -> list:
        pending = list(records)
        out: list = []
        attempts = 0
        while pending:
            attempts += 1
            try:
                sock, fresh = self._connection(deadline)
                if sock.type != socket.SOCK_STREAM:  # the unix path became a datagram socket
                    self._drop()
                    raise OSError(errno.EPROTOTYPE, "the socket changed from stream to datagram")
            except OSError as e:
                self._drop()
                reason = f"{self._where()}: {_error_text(e)}"
                return out + [(i, Delivery(RETRY, reason)) for i, _ in pending]
            written = 0
            try:
                for _i, record in pending:
                    _send_all(sock, self._frame(record), deadline)
                    written += 1
                _wait_acknowledged(sock, deadline)
                gone = _closed_by_peer(sock)
                if gone is not None:
                    raise _Gone(f"the server closed the connection ({gone})")
            except (OSError, _Gone) as e:
                self._drop()
                reason = f"{self._where()}: {_error_text(e)}"
                timed_out = isinstance(e, socket.timeout) or time.monotonic() >= deadline
                # Reused from an earlier call and it failed: the server may have restarted
                # between our check and our write; the records go again on a new connection once.
                if not fresh and attempts == 1 and not timed_out:
                    log.info("syslog %s: %s; sending %d record(s) again on a new connection",
                             self.server, reason, len(pending))
                    continue
                log.debug("syslog %s: %s (%d record(s) written)", self.server, reason, written)
                return out + [(i, Delivery(RETRY, reason)) for i, _ in pending]
            out += [(i, Delivery(OK)) for i, _ in pending]
            pending = []
        return out



class _Resolver:
    """getaddrinfo() bounded in time. glibc's has no timeout of its own: per resolv.conf(5), 5 s
    per try, 2 tries, per name server, per address family, which can hold deliver() well past its
    bound. So a name is looked up in a helper thread, waited for until the deadline; a lookup
    still running then is not started again but waited for by the next call (one at a time)."""

    def __init__(self, host: str, port: int, kind: int):
        self.query = (host, port, 0, kind)
        self._thread: Optional[threading.Thread] = None
        self._box: dict = {}

    def resolve(self, timeout: float) -> list:
        try:  # an IP address needs no lookup
            return socket.getaddrinfo(*self.query, 0, socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        if self._thread is None:
            box: dict = {}

            def lookup():
                try:
                    box["addresses"] = socket.getaddrinfo(*self.query)
                except OSError as e:
                    box["error"] = e

            self._thread, self._box = threading.Thread(target=lookup, name="syslog-resolve", daemon=True), box
            self._thread.start()
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            raise socket.timeout("timed out looking up the name")
        self._thread, box = None, self._box
        if "error" in box:
            raise box["error"]
        return box["addresses"]


class _Gone(Exception):
    """The connection is no longer usable (closed by the server, reset, or stuck)."""


def _error_text(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return str(e) or "timed out"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the name: {e.strerror or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]  # "Connection refused" -> "connection refused"
    return str(e) or type(e).__name__


def _closed_by_peer(sock: socket.socket) -> Optional[str]:
    """None if the connection looks open; else why not (EOF, reset, an error pending).

    A server that closes its end sends FIN; our end then reads EOF. Without this check the next
    write succeeds locally and the data is lost (the server answers it with RST)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLRDHUP)
        if not poller.poll(0):
            return None
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            return os.strerror(error).lower()
        data = sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        return _error_text(e)
    if not data:
        return "closed by the server"
    # A syslog server does not talk over this connection (RFC 6587); what it sent is discarded
    # so that it does not look like news the next time.
    try:
        sock.recv(len(data), socket.MSG_DONTWAIT)
    except OSError:
        pass
    return None


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """sendall() bounded by the deadline (sendall's timeout is per call to send)."""
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(remaining)
        sent = sock.send(view)
        view = view[sent:]


def _unacknowledged(sock: socket.socket) -> int:
    """Octets written but not yet acknowledged by the peer's TCP: SIOCOUTQ (= TIOCOUTQ) is
    write_seq - snd_una in the kernel's tcp_ioctl() (tcp(7) calls it "unsent"; SIOCOUTQNSD is
    the unsent part). On a unix stream: not yet read by the peer (unix(7))."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


def _wait_acknowledged(sock: socket.socket, deadline: float) -> None:
    """Waits until nothing written is unacknowledged; raises socket.timeout at the deadline, and
    _Gone as soon as the server closes or resets the connection (the count then stays as it was:
    tcp_ioctl() reports write_seq - snd_una whatever the state, so only the check can tell)."""
    delay = 0.0005
    while True:
        try:
            if _unacknowledged(sock) <= 0:
                return
        except OSError:
            return  # cannot tell on this socket: the checks around it are all there is
        gone = _closed_by_peer(sock)
        if gone is not None:
            raise _Gone(f"the server closed the connection ({gone})")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out waiting for the server to acknowledge")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
