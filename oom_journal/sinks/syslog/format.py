"""The syslog encoder: an event document as one RFC 5424 or RFC 3164 record.

Formats
  rfc5424 (default): `<PRI>1 TIMESTAMP HOSTNAME oom-journal PROCID OOM_KILL [oom@32473 ...] MSG`
    PRI        facility (--syslog-facility) * 8 + 3 (err: an OOM kill is an error, as in the journal)
    TIMESTAMP  the event's `time` (the kill line's), RFC 3339 with microseconds and offset
    HOSTNAME   the event's hostname (the machine of the kill, not of a relay)
    PROCID     this daemon's pid: the sender, as journald's _PID; the victim's pid is the `pid` param
    MSGID      OOM_KILL; OOM_KILL_COMPLETED for a completion (`completes` = its own event_id: the
               kernel's late report of a kill recorded before, whose first record had OOM_KILL)
    SD         one element, SD-ID `oom@32473`, with every field of the event document as a
               PARAM (nested `trigger` as trigger.comm, ...; null fields left out, as in the
               journal), except `message` (it is the MSG) and `argv` when `cmdline.split(" ")`
               gives it back; when it does not (an argument holds a space), argv.0 ... argv.N-1.
    MSG        the document's human `message`; with a BOM only if it is not all ASCII (escape.py).
  rfc3164: `<PRI>Mmm dd hh:mm:ss HOSTNAME oom-journal[PROCID]: MSG`, the event's time in this
    machine's local time zone (RFC 3164 has no zone), English month names whatever the locale.
Every string is made one line and escaped first (escape.py); a record over its bound is
shortened (truncate.py).

The SD-ID's enterprise number. RFC 5424 §7.2.2: an SD-ID we define is `name@<private enterprise
number>`, the number IANA assigned to whoever defines the name. oom-journal has none yet
(registering one is a free IANA form, an organisation's act, not a code change). Every other
number belongs, or may later belong, to some organisation whose own `oom@N` element would then
collide with ours. 32473 is the one number that never names a real organisation: RFC 5612 reserves
it for documentation, so it can collide with nothing in production, and it reads as "not a real
PEN" to anyone who looks. It lives in the one constant PEN: once oom-journal has its own, change
PEN (a format change: collectors that match on `oom@32473` must follow).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone, tzinfo
from typing import Optional

from oom_journal.model import SYSLOG_IDENTIFIER
from oom_journal.sinks.syslog.escape import msg_bytes, one_line, sd_escape, sd_name
from oom_journal.sinks.syslog.truncate import SD_MAX, RecordTooLarge, cut, fit_rfc5424

# Private enterprise number of the SD-ID: RFC 5612's documentation number, see the docstring.
PEN = 32473
SD_ID = f"oom@{PEN}"
APP_NAME = SYSLOG_IDENTIFIER  # "oom-journal", as the journal's SYSLOG_IDENTIFIER
MSGID = "OOM_KILL"
# A completion (enrich/witness.py: the kernel's report of a kill recorded before, under the same
# event_id): a MSGID of its own, so that a collector counting OOM_KILL records counts the kill once.
MSGID_COMPLETION = "OOM_KILL_COMPLETED"
SEVERITY = 3  # err, as the journal entry's PRIORITY
# RFC 5424 §6.2.1 table 1 (Linux <syslog.h> agrees: LOG_AUTHPRIV 10, LOG_FTP 11, LOG_LOCAL0 16).
FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
              "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
              **{f"local{i}": 16 + i for i in range(8)}}
TRUNCATED_PARAM = "truncated"  # the SD param that names what was cut (truncate.py)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HOST_BAD = re.compile(r"[^\x21-\x7e]")


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



def format_rfc5424(doc: dict, *, facility: int, procid: int, max_bytes: int, sd_max: int = SD_MAX) -> bytes:
    """One RFC 5424 record for an event document: at most max_bytes octets, its STRUCTURED-DATA
    at most sd_max (RecordTooLarge if even every value cut to nothing is too much)."""
    when = _event_time(doc)
    timestamp = when.isoformat(timespec="microseconds") if when else "-"
    completion = bool(doc.get("completes")) and doc.get("completes") == doc.get("event_id")
    msgid = MSGID_COMPLETION if completion else MSGID
    header = f"<{facility * 8 + SEVERITY}>1 {timestamp} {_hostname(doc)} {APP_NAME} {procid} {msgid} ".encode()

    def render(params: list, truncated: list, message: str) -> tuple:
        all_params = params + ([[TRUNCATED_PARAM, ",".join(truncated)]] if truncated else [])
        sd = ("[" + SD_ID + "".join(f' {name}="{sd_escape(value)}"' for name, value in all_params) + "]").encode()
        return header + sd + (b" " + msg_bytes(message) if message else b""), sd

    return fit_rfc5424(render, sd_params(doc), one_line(str(doc.get("message") or "")), max_bytes=max_bytes,
                       sd_max=sd_max)


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
        shortened = cut(message, max_bytes - len(header) - 3, one_line)
        record = header + (shortened + "…").encode()
        if len(record) > max_bytes:
            raise RecordTooLarge(f"the rfc3164 header alone is over the bound of {max_bytes}")
    return record

