"""Hostile text in a syslog record: one line, escaped PARAM-VALUEs, valid PARAM-NAMEs, the BOM.

comm, cmdline, argv, unit, cgroup come from the victim. Every string the record carries is passed
through event.printable() first: control and other non-printable characters (newline, CR, NUL,
ESC, tab, DEL, C1, U+2028, bidi overrides, ...) become `\\xNN` / `\\uNNNN`, the form the journal's
MESSAGE and the document's invalid-UTF-8 bytes already use, so one rule reads all of
oom-journal's output. A record therefore never holds a byte below 0x20 or 0x7f: it cannot be
split into two lines, nor carry a second record, by a receiver that splits on newlines. Then,
inside a PARAM-VALUE, `"`, `\\` and `]` are escaped with a backslash (RFC 5424 §6.3.3), so the
wire shows a newline as `\\\\x0a` and rsyslog's mmpstrucdata gives back `\\x0a`. PARAM-NAMEs are
ours, and are still made valid (1-32 PRINTUSASCII, no `=`, space, `]`, `"`).

The BOM (RFC 5424 §6.4): a MSG encoded in UTF-8 MUST start with the BOM; a MSG of ASCII only is
valid MSG-ANY and the same bytes in every charset. So the BOM is sent only when the message holds
a non-ASCII character (a non-ASCII comm or cmdline): rsyslog keeps the BOM in %msg% (checked with
8.2302: its three bytes land in the file), and ordinary records stay clean.
"""
from __future__ import annotations

import re

from oom_journal.text import printable

BOM = "\ufeff".encode()
# What may need event.printable(): everything but printable ASCII (fast path for the rest).
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_SD_SPECIAL = re.compile(r'["\\\]]')
_NAME_BAD = re.compile(r'[^\x21-\x7e]|[="\]]')


def one_line(text: str) -> str:
    """event.printable(), fast for the printable-ASCII bulk of a long command line."""
    return _NOT_PRINTABLE_ASCII.sub(lambda m: printable(m.group()), text)


def sd_escape(text: str) -> str:
    """A PARAM-VALUE: one line, then `"`, `\\` and `]` escaped (RFC 5424 §6.3.3)."""
    return _SD_SPECIAL.sub(lambda m: "\\" + m.group(), one_line(text))


def sd_name(name: str) -> str:
    """A valid PARAM-NAME: 1*32 PRINTUSASCII except `=`, SP, `]`, `"` (RFC 5424 §6.3.3)."""
    return _NAME_BAD.sub("_", name)[:32] or "_"


def msg_bytes(message: str) -> bytes:
    """The MSG: one line, UTF-8, with the BOM only if it is not all ASCII."""
    encoded = one_line(message).encode()
    return BOM + encoded if not message.isascii() else encoded
