"""journalctl's time and boot arguments, as `oom-journal list/show` take them: --since/--until
(parse_time: a subset of systemd.time(7), see TIME_FORMS) and -b (parse_boot: [ID][±offset], an
offset alone, or 'all'). Plain values: which boot an offset names is the journal's to say
(history.journal.Journal.resolve_boot)."""
from __future__ import annotations

import re
import time
from oom_journal.records import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

_BOOT_ID_RE = re.compile(r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})([+-][0-9]+)?$")


_SPAN_UNITS = {
    "usec": 1e-6, "us": 1e-6, "µs": 1e-6, "μs": 1e-6,
    "msec": 1e-3, "ms": 1e-3,
    "seconds": 1, "second": 1, "sec": 1, "s": 1,
    "minutes": 60, "minute": 60, "min": 60, "m": 60,
    "hours": 3600, "hour": 3600, "hr": 3600, "h": 3600,
    "days": 86400, "day": 86400, "d": 86400,
    "weeks": 604800, "week": 604800, "w": 604800,
    "months": 2629800, "month": 2629800, "M": 2629800,  # 30.44 days, as systemd.time(7)
    "years": 31557600, "year": 31557600, "y": 31557600,  # 365.25 days
}
_SPAN_PART_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Zµμ]*)")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DATE_TIME_RE = re.compile(
    r"^(?:(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})(?:[ T]|$))?"
    r"(?P<time>[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
    r"\s*(?P<tz>UTC|utc|Z|[+-][0-9]{2}:?[0-9]{2})?$"
)

TIME_FORMS = ('"2026-11-21 04:00[:00]", "2026-11-21", "04:00" (today), an optional "UTC" or '
              '"+01:00" after the time, "now", "today", "yesterday", "tomorrow", "-1h", "+30min", '
              '"1 hour ago", "2d 3h ago", "@<seconds since the epoch>"')


def _parse_span(text: str) -> float:
    """'1h 30min', '2 days', '90' (seconds): the time span syntax of systemd.time(7)."""
    text = text.strip()
    if not text:
        raise ValueError("empty time span")
    total, pos = 0.0, 0
    while pos < len(text):
        m = _SPAN_PART_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"not a time span: {text!r}")
        number, unit = float(m.group(1)), m.group(2)
        if unit not in _SPAN_UNITS and unit.lower() in _SPAN_UNITS and unit != "M":
            unit = unit.lower()
        if unit and unit not in _SPAN_UNITS:
            raise ValueError(f"unknown time unit {unit!r}")
        total += number * _SPAN_UNITS.get(unit, 1)
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
    return total


def _local_midnight(now: float, days: int = 0) -> float:
    day = datetime.fromtimestamp(now).astimezone().date() + timedelta(days=days)
    return datetime(day.year, day.month, day.day).astimezone().timestamp()


def parse_time(text: str, now: Optional[float] = None) -> float:
    """Seconds since the epoch of what journalctl --since/--until would take for `text`.

    A subset of systemd.time(7): see TIME_FORMS. Times without a zone are local time.
    """
    now = time.time() if now is None else now
    t = text.strip()
    low = t.lower()
    if low == "now":
        return now
    days = {"today": 0, "yesterday": -1, "tomorrow": 1}.get(low)
    if days is not None:
        return _local_midnight(now, days)
    if t.startswith("@"):
        try:
            return float(t[1:])
        except ValueError:
            raise ValueError(f"invalid time {text!r}: expected @<seconds since the epoch>") from None
    try:
        if t[:1] in "+-" and t[1:].strip()[:1].isdigit():
            return now + (1 if t[0] == "+" else -1) * _parse_span(t[1:])
        for suffix, sign in ((" ago", -1), (" left", 1)):
            if low.endswith(suffix):
                return now + sign * _parse_span(t[: -len(suffix)])
    except ValueError as e:
        raise ValueError(f"invalid time {text!r}: {e}") from None
    # Absolute: [weekday] [YYYY-MM-DD][ HH:MM[:SS[.ffffff]]] [UTC|Z|±HH:MM]
    weekday = None
    first, _, rest = t.partition(" ")
    if first[:3].lower() in _WEEKDAYS and first.isalpha() and len(first) >= 3:
        weekday, t = _WEEKDAYS.index(first[:3].lower()), rest.strip()
    m = _DATE_TIME_RE.match(t)
    if not m or not (m.group("date") or m.group("time")):
        raise ValueError(f"invalid time {text!r}; accepted: {TIME_FORMS}")
    date_s, time_s, tz_s = m.group("date"), m.group("time") or "00:00:00", m.group("tz")
    if date_s is None:
        date_s = datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%d")
    if time_s.count(":") == 1:
        time_s += ":00"
    try:
        value = datetime.fromisoformat(f"{date_s}T{time_s}")
    except ValueError as e:
        raise ValueError(f"invalid time {text!r}: {e}") from None
    if tz_s in ("UTC", "utc", "Z"):
        value = value.replace(tzinfo=timezone.utc)
    elif tz_s:
        offset = timedelta(hours=int(tz_s[1:3]), minutes=int(tz_s[-2:]))
        value = value.replace(tzinfo=timezone(offset if tz_s[0] == "+" else -offset))
    else:
        value = value.astimezone()  # naive: local time
    if weekday is not None and value.weekday() != weekday:
        raise ValueError(f"invalid time {text!r}: {date_s} is not a {first}")
    return value.timestamp()


@dataclass(frozen=True)
class BootSpec:
    """journalctl's -b argument: [ID][±offset], an offset alone, or 'all'."""

    boot_id: Optional[str] = None
    offset: int = 0
    all: bool = False


def parse_boot(text: Optional[str]) -> BootSpec:
    text = (text or "").strip()
    if text in ("", "0"):
        return BootSpec()
    if text == "all":
        return BootSpec(all=True)
    if re.fullmatch(r"[+-]?[0-9]{1,9}", text):
        return BootSpec(offset=int(text))
    m = _BOOT_ID_RE.match(text)
    if m:
        return BootSpec(boot_id=m.group(1).replace("-", "").lower(), offset=int(m.group(2) or 0))
    raise ValueError(f"invalid boot {text!r}: expected a boot ID (journalctl --list-boots), "
                     "an offset (0 this boot, -1 the one before, 1 the first), ID±offset, or 'all'")
