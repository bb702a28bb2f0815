"""Text that other people chose (a process name, an argv, a cgroup, a server's answer), made safe
for each place it goes. A leaf module: it imports nothing of oom-journal's.

- printable(): one line a person reads (a terminal, STATUS=, a log line): every character that is
  not printable (C0/C1 controls, ESC, DEL, U+2028, bidi overrides, bytes that were not UTF-8) as
  a visible \\xNN / \\uNNNN escape. Nothing it returns can move a cursor or start a new line.
- json_text() / json_line(): JSON (sinks, stdout): lossless where JSON can be (bytes that are not
  UTF-8 become the four characters \\xNN), and one line that no JSON-lines reader splits.
- journal_bytes(): the journal keeps the exact bytes.
"""
from __future__ import annotations

import json
import re
from typing import Optional


def printable(text: str) -> str:
    """Control characters (newline, ESC, ...) as \\xNN, for text a person reads in one line."""
    return "".join(c if (c.isprintable() or c == " ") and not (0xDC80 <= ord(c) <= 0xDCFF)
                   else _escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a surrogate-escaped byte that was not UTF-8
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"  # never ambiguous with a following digit


def journal_bytes(text: Optional[str]):
    """A str that may hold surrogate-escaped bytes, back to its exact bytes (for the journal)."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def json_text(text: Optional[str]) -> Optional[str]:
    """For JSON: bytes that are not UTF-8 become the four characters \\xNN (JSON has no bytes)."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Characters that json.dumps(ensure_ascii=False) leaves raw but that a reader may take for a line
# end (Python's str.splitlines() splits at U+0085, U+2028, U+2029; JavaScript before ES2019 rejects
# the last two in a string), or that reorder what a terminal shows around them (the bidirectional
# overrides and isolates: "Trojan Source", CVE-2021-42574). JSON's \\uNNNN form is the same string.
_JSON_ESCAPED = "\x85\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_JSON_TABLE = str.maketrans({c: f"\\u{ord(c):04x}" for c in _JSON_ESCAPED})


def json_line(document, *, compact: bool = False, indent: Optional[int] = None) -> str:
    """The one JSON encoding of a document: every string as given (control characters as JSON
    escapes), on ONE line unless indent is asked for, with nothing a JSON-lines reader would split
    or a terminal would reorder. A lone surrogate that slipped past json_text() becomes its \\uXXXX
    escape (ASCII, valid JSON), never invalid UTF-8."""
    separators = (",", ":") if compact else None
    text = json.dumps(document, ensure_ascii=False, separators=separators, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A byte that was not UTF-8 (surrogate-escaped) as the text \\xNN, as json_text() does;
        # any other lone surrogate as its JSON escape. Never invalid UTF-8 (Elasticsearch would
        # refuse the whole request, Kafka consumers would fail to decode).
        text = _SURROGATE.sub(lambda m: ("\\\\x%02x" % (ord(m.group()) & 0xFF)) if 0xDC80 <= ord(m.group()) <= 0xDCFF
                              else "\\u%04x" % ord(m.group()), text)
    return text.translate(_JSON_TABLE)


_SURROGATE = re.compile("[\ud800-\udfff]")


def human_size(kb: Optional[int]) -> str:
    if kb is None:
        return "?"
    value, unit = float(kb), "KiB"
    for next_unit in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.0f} {unit}" if unit == "KiB" else f"{value:.1f} {unit}"
