"""The Syslog sink: each event as ONE syslog record, sent over UDP, TCP or a unix socket.

Formats
  rfc5424 (default): `<PRI>1 TIMESTAMP HOSTNAME oom-journal PROCID OOM_KILL [oom@32473 ...] MSG`
    PRI        facility (--syslog-facility) * 8 + 3 (err: an OOM kill is an error, as in the journal)
    TIMESTAMP  the event's `time` (the kill line's), RFC 3339 with microseconds and offset
    HOSTNAME   the event's hostname (the machine of the kill, not of a relay)
    PROCID     this daemon's pid: the sender, as journald's _PID; the victim's pid is the `pid` param
    MSGID      OOM_KILL
    SD         one element, SD-ID `oom@32473`, with every field of the event document as a
               PARAM (nested `trigger` as trigger.comm, ...; null fields left out, as in the
               journal), except `message` (it is the MSG) and `argv` when `cmdline.split(" ")`
               gives it back; when it does not (an argument holds a space), argv.0 ... argv.N-1.
    MSG        the document's human `message`; with a BOM only if it is not all ASCII (below).
  rfc3164: `<PRI>Mmm dd hh:mm:ss HOSTNAME oom-journal[PROCID]: MSG`, the event's time in this
    machine's local time zone (RFC 3164 has no zone), English month names whatever the locale.

The SD-ID's enterprise number. RFC 5424 §7.2.2: an SD-ID we define is `name@<private enterprise
number>`, the number IANA assigned to whoever defines the name. oom-journal has none yet
(registering one is a free IANA form, an organisation's act, not a code change). Every other
number belongs, or may later belong, to some organisation whose own `oom@N` element would then
collide with ours. 32473 is the one number that never names a real organisation: RFC 5612 reserves
it for documentation, so it can collide with nothing in production, and it reads as "not a real
PEN" to anyone who looks. It lives in the one constant PEN: once oom-journal has its own, change
PEN (a format change: collectors that match on `oom@32473` must follow).

Hostile text. comm, cmdline, argv, unit, cgroup come from the victim. Every string the record
carries is passed through event.printable() first: control and other non-printable characters
(newline, CR, NUL, ESC, tab, DEL, C1, U+2028, bidi overrides, ...) become `\\xNN` / `\\uNNNN`,
the form the journal's MESSAGE and the document's invalid-UTF-8 bytes already use, so one rule
reads all of oom-journal's output. A record therefore never holds a byte below 0x20 or 0x7f: it
cannot be split into two lines, nor carry a second record, by a receiver that splits on newlines.
Then, inside a PARAM-VALUE, `"`, `\\` and `]` are escaped with a backslash (RFC 5424 §6.3.3), so
the wire shows a newline as `\\\\x0a` and rsyslog's mmpstrucdata gives back `\\x0a`. PARAM-NAMEs are
ours, and are still made valid (1-32 PRINTUSASCII, no `=`, space, `]`, `"`).

The BOM (RFC 5424 §6.4): a MSG encoded in UTF-8 MUST start with the BOM; a MSG of ASCII only is
valid MSG-ANY and the same bytes in every charset. So the BOM is sent only when the message holds
a non-ASCII character (a non-ASCII comm or cmdline): rsyslog keeps the BOM in %msg% (checked with
8.2302: its three bytes land in the file), and ordinary records stay clean.

Size. Every record has a bound, and a record over it is shortened, never cut by the receiver:
  datagrams (udp, unix datagram)  DATAGRAM_MAX = 8096 octets of syslog message. RFC 5426 §3.2:
      receivers MUST take 480 (IPv4) / 1180 (IPv6) octets, SHOULD take 2048, and larger is
      "encouraged"; an event's fields alone are about 1 KiB and its message up to 2 KiB of command
      line, so 2048 would cut nearly every record. 8096 is what the most common receiver takes
      by default: rsyslog 8.2302 (Debian 12), maxMessageSize 8k, keeps a datagram of 8096 octets
      whole and cuts one of 8097 (measured), and a cut record loses its SD and its end. Over a
      network with 1500-octet MTU such a datagram is sent in 6 IP fragments (UDP is lossy anyway).
  streams (tcp)  STREAM_MAX = 200000 octets: the largest octet-counted frame rsyslog's imtcp
      accepts by default (its MaxFrameSize; a frame of 200001 is a "framing error" after which
      imtcp falls back to newline framing, measured with 8.2302).
  structured data, any transport: SD_MAX = 65535 octets. rsyslog keeps the length of
      STRUCTURED-DATA in a uint16_t (runtime/msg.h, lenStrucData): an SD of 130687 octets came
      out as its first 65151 (the length modulo 65536) and mmpstrucdata parsed nothing (measured,
      8.2302). So over TCP a command line of up to about 64 KB (once escaped, less the other
      fields' 1 KB) goes whole in the SD, and a longer one (up to the kernel's 2 MiB; MAX_ARG_STRLEN alone is 128 KiB per
      argument) is cut there; the journal has it whole.
      With records over 8 KiB, THE RECEIVER MUST ACCEPT THEM: rsyslog needs
      `global(maxMessageSize="128k")` or more (it keeps maxMessageSize minus 96 octets). A default
      rsyslog (8096) cuts a longer TCP frame AND PARSES THE REST AS A SECOND RECORD (measured), and
      that rest is, past 8 KiB, the victim's command line: a receiver left at its default lets a
      hostile command line forge a record over TCP. Over UDP it cannot: a datagram is cut, once.
  unix stream: DATAGRAM_MAX too: a local syslog daemon has its own limit (rsyslog imuxsock 8k),
      and on this machine the journal already holds the whole command line.
  A record over its bounds is shortened in this order, until it fits: the argv.N params are
  dropped; the `cmdline` param is cut; the message is cut (ending in "…"; for the record's
  bound only, it is not in the SD); then the longest other values. A cut falls between
  characters, never inside an escape, so the record stays valid, and the SD param `truncated`
  names what was cut (e.g. "argv,cmdline"). rfc3164 cuts its message. The journal keeps
  everything whole.

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
  - after writing, the sink waits (within the deadline) until the server's TCP has acknowledged
    every byte (SIOCOUTQ, write_seq - snd_una in tcp_ioctl(), reaches 0; on a unix stream:
    until the reader has read them), then checks the connection again;
  - a write error (EPIPE, ECONNRESET, a timeout), bytes still unacknowledged at the deadline, or
    a connection found closed after writing makes EVERY record written on that connection in
    this call RETRY: one may have arrived (a duplicate later; the event_id param tells), none is
    reported OK while lost. A server whose machine vanishes after acknowledging is beyond what
    plain TCP syslog can tell (RELP could); SIOCOUTQ at least catches one that stops answering.
A connection reused from an earlier call that fails during a batch (the server went away between
the check and the write) is replaced once, and the whole batch goes again on the new one.

Outcomes ("should we retry?"; delivery/backoff.py decides when):
  sent (udp, unix datagram), or written and acknowledged (tcp, unix stream)      OK
  refused, unreachable, DNS failure, reset, EPIPE, timeout, no such socket path  RETRY
  connection closed by the server around the write, bytes unacknowledged          RETRY
  the deadline (timeout, 10 s) reached before a record was sent                   RETRY
  EMSGSIZE (the socket cannot carry a record of this size)                         FAILED
  a record that cannot fit its bound even with every value cut to nothing         FAILED
A malformed record cannot happen: the sink builds it. The sink never raises for the network.

probe(): tcp and unix connect (the connection is kept for deliver()); udp cannot be checked:
a connected UDP socket's send succeeds whether anyone listens or not.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import select
import socket
import struct
import termios
import threading
import time
from datetime import datetime, timezone, tzinfo
from typing import Callable, Optional

from oom_journal.model import SYSLOG_IDENTIFIER
from oom_journal.text import printable
from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery, Sink

log = logging.getLogger(__name__)

# Private enterprise number of the SD-ID: RFC 5612's documentation number, see the docstring.
PEN = 32473
SD_ID = f"oom@{PEN}"
APP_NAME = SYSLOG_IDENTIFIER  # "oom-journal", as the journal's SYSLOG_IDENTIFIER
MSGID = "OOM_KILL"
SEVERITY = 3  # err, as the journal entry's PRIORITY
# RFC 5424 §6.2.1 table 1 (Linux <syslog.h> agrees: LOG_AUTHPRIV 10, LOG_FTP 11, LOG_LOCAL0 16).
FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
              "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
              **{f"local{i}": 16 + i for i in range(8)}}

DATAGRAM_MAX = 8096  # octets; rsyslog's default limit, measured (docstring)
STREAM_MAX = 200000  # octets; rsyslog imtcp's default MaxFrameSize; see the docstring
UDP_PAYLOAD_MAX = 65507  # octets: an IPv4 UDP datagram's largest payload
SD_MAX = 65535  # octets of STRUCTURED-DATA: rsyslog keeps its length in a uint16_t; see the docstring
CONNECT_TIMEOUT = 5.0  # seconds, for one connect (within the deliver deadline)
TIMEOUT = 10.0  # seconds: the most one deliver() or probe() blocks

TRUNCATED_PARAM = "truncated"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_BOM = "\ufeff".encode()
_ELLIPSIS = "…".encode()
# What may need event.printable(): everything but printable ASCII (fast path for the rest).
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_SD_SPECIAL = re.compile(r'["\\\]]')
_NAME_BAD = re.compile(r'[^\x21-\x7e]|[="\]]')
_HOST_BAD = re.compile(r"[^\x21-\x7e]")


class RecordTooLarge(Exception):
    """Even with every value cut to nothing, the record is over its bound."""


# --- rendering ------------------------------------------------------------------------------
def one_line(text: str) -> str:
    """event.printable(), fast for the printable-ASCII bulk of a long command line."""
    return _NOT_PRINTABLE_ASCII.sub(lambda m: printable(m.group()), text)


def sd_escape(text: str) -> str:
    """A PARAM-VALUE: one line, then `"`, `\\` and `]` escaped (RFC 5424 §6.3.3)."""
    return _SD_SPECIAL.sub(lambda m: "\\" + m.group(), one_line(text))


def sd_name(name: str) -> str:
    """A valid PARAM-NAME: 1*32 PRINTUSASCII except `=`, SP, `]`, `"` (RFC 5424 §6.3.3)."""
    return _NAME_BAD.sub("_", name)[:32] or "_"


def _hostname(doc: dict) -> str:
    """HOSTNAME: 1*255 PRINTUSASCII, or the NILVALUE."""
    return _HOST_BAD.sub("_", str(doc.get("hostname") or ""))[:255] or "-"


def _event_time(doc: dict) -> Optional[datetime]:
    try:
        when = datetime.fromisoformat(str(doc.get("time")))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sd_params(doc: dict) -> list:
    """(name, text) of every field of the document for the SD element, in document order."""
    params = []

    def add(name, value):
        if value is None:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}.{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                add(f"{name}.{i}", item)
        else:
            params.append([sd_name(name), _text(value)])

    cmdline, argv = doc.get("cmdline"), doc.get("argv")
    for key, value in doc.items():
        if key == "message":
            continue  # it is the MSG
        if key == "argv" and isinstance(cmdline, str) and isinstance(argv, list) and cmdline.split(" ") == argv:
            continue  # cmdline.split(" ") gives it back: no need to send the command line twice
        add(str(key), value)
    return params


def _cut(text: str, budget: int, escape: Callable[[str], str]) -> str:
    """The longest prefix of text whose escaped UTF-8 form fits in budget octets. The cut falls
    between characters, so never inside an escape (`\\]`, `\\\\x0a`) or a UTF-8 sequence."""
    if budget <= 0:
        return ""
    head = text[:budget]  # every character takes at least one octet
    if len(escape(head).encode()) <= budget:
        return head
    used = 0
    for i, c in enumerate(head):
        used += len(escape(c).encode())
        if used > budget:
            return head[:i]
    return head


def _msg_bytes(message: str) -> bytes:
    encoded = one_line(message).encode()
    return _BOM + encoded if not message.isascii() else encoded


def format_rfc5424(doc: dict, *, facility: int, procid: int, max_bytes: int, sd_max: int = SD_MAX) -> bytes:
    """One RFC 5424 record for an event document: at most max_bytes octets, its STRUCTURED-DATA
    at most sd_max (RecordTooLarge if even every value cut to nothing is too much)."""
    when = _event_time(doc)
    timestamp = when.isoformat(timespec="microseconds") if when else "-"
    header = f"<{facility * 8 + SEVERITY}>1 {timestamp} {_hostname(doc)} {APP_NAME} {procid} {MSGID} ".encode()
    params = sd_params(doc)
    message = one_line(str(doc.get("message") or ""))
    truncated: list = []
    record = sd = b""

    def render():
        nonlocal record, sd
        all_params = params + ([[TRUNCATED_PARAM, ",".join(truncated)]] if truncated else [])
        sd = ("[" + SD_ID + "".join(f' {name}="{sd_escape(value)}"' for name, value in all_params) + "]").encode()
        record = header + sd + (b" " + _msg_bytes(message) if message else b"")

    def sd_excess() -> int:  # octets too many, for a cut in the SD (counts against both bounds)
        return max(len(record) - max_bytes, len(sd) - sd_max)

    def mark(what: str):
        if what not in truncated:
            truncated.append(what)
            render()

    render()
    if sd_excess() <= 0:
        return record
    # 1. argv.N: the command line is also in `cmdline`.
    if any(name.startswith("argv.") for name, _ in params):
        params[:] = [p for p in params if not p[0].startswith("argv.")]
        mark("argv")

    def cut_param(param: list):
        """Cuts one SD value until both bounds hold, or it is empty."""
        while sd_excess() > 0 and param[1]:
            mark(param[0])  # the `truncated` param may grow: measure after
            excess = sd_excess()
            if excess <= 0:
                return
            param[1] = _cut(param[1], len(sd_escape(param[1]).encode()) - excess, sd_escape)
            render()

    def cut_message():
        nonlocal message
        while len(record) > max_bytes and message:
            mark("message")
            excess = len(record) - max_bytes
            if excess <= 0:
                return
            size = len(_msg_bytes(message))
            # a cut message ends in "…", so it is not ASCII: it has the BOM (3 + 3 octets)
            cut = _cut(message.rstrip("…"), size - excess - len(_BOM) - len(_ELLIPSIS), one_line)
            message = cut + "…" if cut else ""
            render()

    # 2. the full command line, 3. the human message (only the record's bound: it is not in the
    # SD), 4. the longest other values. Each cut strictly shortens, so each loop ends.
    for param in params:
        if param[0] == "cmdline":
            cut_param(param)
    cut_message()
    for param in sorted(params, key=lambda p: len(p[1]), reverse=True):
        if sd_excess() <= 0:
            break
        cut_param(param)
    if len(record) > max_bytes or len(sd) > sd_max:
        raise RecordTooLarge(f"the record is {len(record)} octets (structured data {len(sd)}) with "
                             f"every value cut, over the bound of {max_bytes} ({sd_max})")
    return record


def format_rfc3164(doc: dict, *, facility: int, procid: int, max_bytes: int,
                   tz: Optional[tzinfo] = None) -> bytes:
    """One RFC 3164 record: `<PRI>Mmm dd hh:mm:ss HOSTNAME oom-journal[PROCID]: MSG`."""
    when = _event_time(doc) or datetime.now(timezone.utc)
    local = when.astimezone(tz)  # tz None: this machine's zone
    stamp = f"{_MONTHS[local.month - 1]} {local.day:2d} {local:%H:%M:%S}"
    header = f"<{facility * 8 + SEVERITY}>{stamp} {_hostname(doc)} {APP_NAME}[{procid}]: ".encode()
    message = one_line(str(doc.get("message") or ""))
    record = header + message.encode()
    if len(record) > max_bytes:
        cut = _cut(message, max_bytes - len(header) - 3, one_line)
        record = header + (cut + "…").encode()
        if len(record) > max_bytes:
            raise RecordTooLarge(f"the rfc3164 header alone is over the bound of {max_bytes}")
    return record


# --- the sink -------------------------------------------------------------------------------
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


class SyslogSink(Sink):
    name = "syslog"
    option = "--syslog-server"
    max_batch = 100

    def __init__(self, cfg, *, pid: Optional[int] = None, tz: Optional[tzinfo] = None,
                 timeout: float = TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT,
                 datagram_max: Optional[int] = None, stream_max: Optional[int] = None):
        self.server = cfg.syslog_server
        self.proto = getattr(cfg, "syslog_proto", None) or "udp"
        self.format = getattr(cfg, "syslog_format", None) or "rfc5424"
        self.facility_name = getattr(cfg, "syslog_facility", None) or "daemon"
        self.facility = FACILITIES[self.facility_name]
        self.pid = pid if pid is not None else os.getpid()  # PROCID: the sender, this daemon
        self.tz = tz  # rfc3164's local time zone; None: this machine's
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        # --syslog-max-size bounds every record (default 8096: what a default rsyslog takes
        # whole; a larger TCP frame would be split into a forged second record, see above).
        configured = getattr(cfg, "syslog_max_size", None)
        self.datagram_max = datagram_max or min(configured or DATAGRAM_MAX, UDP_PAYLOAD_MAX)
        self.stream_max = stream_max or min(configured or STREAM_MAX, STREAM_MAX)
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._stream = self.proto == "tcp"  # unix: decided by the socket at the path
        if self.proto == "unix":
            self.address = self.server
        else:
            host, _, port = self.server.rpartition(":")
            self.host, self.port = host.strip("[]"), int(port)
            kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
            self._resolver = _Resolver(self.host, self.port, kind)

    # --- Sink ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Nothing to import (the standard library only); connects on first use."""

    def describe(self) -> str:
        # No secret in a syslog target; redact.mask is for URLs with credentials.
        return f"syslog {self.format} over {self.proto} to {self.server} (facility {self.facility_name})"

    def probe(self) -> Optional[str]:
        if self.proto == "udp":
            try:
                with self._lock:
                    self._resolver.resolve(self.timeout)
            except OSError as e:
                return f"udp {self.server}: {_error_text(e)}"
            return "UDP: not checkable (a datagram gets no answer)"
        with self._lock:
            try:
                self._connection(time.monotonic() + self.timeout)
            except OSError as e:
                return f"{self.proto} {self.server}: {_error_text(e)}"
        return None

    def deliver(self, documents: list) -> list:
        deadline = time.monotonic() + self.timeout
        with self._lock:
            records: list = []
            results: list = [None] * len(documents)
            max_bytes = self.stream_max if self.proto == "tcp" else self.datagram_max
            for i, doc in enumerate(documents):
                try:
                    records.append((i, self.format_record(doc, max_bytes)))
                except RecordTooLarge as e:
                    results[i] = Delivery(FAILED, str(e))
            if records:
                send = self._send_stream if self._is_stream() else self._send_datagrams
                for i, outcome in send(records, deadline):
                    results[i] = outcome
        return results

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- records ------------------------------------------------------------------------------
    def format_record(self, doc: dict, max_bytes: Optional[int] = None) -> bytes:
        if max_bytes is None:
            max_bytes = self.stream_max if self.proto == "tcp" else self.datagram_max
        if self.format == "rfc3164":
            return format_rfc3164(doc, facility=self.facility, procid=self.pid, max_bytes=max_bytes, tz=self.tz)
        return format_rfc5424(doc, facility=self.facility, procid=self.pid, max_bytes=max_bytes)

    def _frame(self, record: bytes) -> bytes:
        if self.proto == "tcp":
            return b"%d %s" % (len(record), record)  # RFC 6587 §3.4.1 octet counting
        return record + b"\0"  # unix stream: as glibc's syslog(3)

    # --- connections --------------------------------------------------------------------------
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
        out = []
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
        out = []
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
                for i, record in pending:
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
