"""Size: every syslog record has a bound, and a record over it is shortened, never cut by the receiver.

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
      fields' 1 KB) goes whole in the SD, and a longer one (up to the kernel's 2 MiB;
      MAX_ARG_STRLEN alone is 128 KiB per argument) is cut there; the journal has it whole.
      With records over 8 KiB, THE RECEIVER MUST ACCEPT THEM: rsyslog needs
      `global(maxMessageSize="128k")` or more (it keeps maxMessageSize minus 96 octets). A default
      rsyslog (8096) cuts a longer TCP frame AND PARSES THE REST AS A SECOND RECORD (measured), and
      that rest is, past 8 KiB, the victim's command line: a receiver left at its default lets a
      hostile command line forge a record over TCP. Over UDP it cannot: a datagram is cut, once.
  unix stream: DATAGRAM_MAX too: a local syslog daemon has its own limit (rsyslog imuxsock 8k),
      and on this machine the journal already holds the whole command line.

A record over its bounds is shortened in this order, until it fits (fit_rfc5424()): the argv.N
params are dropped; the `cmdline` param is cut; the message is cut (ending in "…"; for the
record's bound only, it is not in the SD); then the longest other values. A cut falls between
characters, never inside an escape, so the record stays valid, and the SD param `truncated`
names what was cut (e.g. "argv,cmdline"). rfc3164 cuts its message. The journal keeps
everything whole.
"""
from __future__ import annotations

from typing import Callable

from oom_journal.sinks.syslog.escape import BOM, msg_bytes, one_line, sd_escape

DATAGRAM_MAX = 8096  # octets; rsyslog's default limit, measured (above)
STREAM_MAX = 200000  # octets; rsyslog imtcp's default MaxFrameSize; see above
UDP_PAYLOAD_MAX = 65507  # octets: an IPv4 UDP datagram's largest payload
SD_MAX = 65535  # octets of STRUCTURED-DATA: rsyslog keeps its length in a uint16_t; see above

ELLIPSIS = "…".encode()


class RecordTooLarge(Exception):
    """Even with every value cut to nothing, the record is over its bound."""


def cut(text: str, budget: int, escape: Callable[[str], str]) -> str:
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


def fit_rfc5424(render: Callable[[list, list, str], tuple], params: list, message: str, *, max_bytes: int,
                sd_max: int) -> bytes:
    """The record within both bounds: at most max_bytes octets, its STRUCTURED-DATA at most sd_max,
    shortened in the order above (RecordTooLarge if even every value cut to nothing is too much).

    render(params, truncated, message) gives (record, sd) for [name, text] params (cut here, in
    place), the names of what was cut, and the message (one line already)."""
    truncated: list = []
    record = sd = b""

    def rerender():
        nonlocal record, sd
        record, sd = render(params, truncated, message)

    def sd_excess() -> int:  # octets too many, for a cut in the SD (counts against both bounds)
        return max(len(record) - max_bytes, len(sd) - sd_max)

    def mark(what: str):
        if what not in truncated:
            truncated.append(what)
            rerender()

    rerender()
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
            param[1] = cut(param[1], len(sd_escape(param[1]).encode()) - excess, sd_escape)
            rerender()

    def cut_message():
        nonlocal message
        while len(record) > max_bytes and message:
            mark("message")
            excess = len(record) - max_bytes
            if excess <= 0:
                return
            size = len(msg_bytes(message))
            # a cut message ends in "…", so it is not ASCII: it has the BOM (3 + 3 octets)
            shortened = cut(message.rstrip("…"), size - excess - len(BOM) - len(ELLIPSIS), one_line)
            message = shortened + "…" if shortened else ""
            rerender()

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
