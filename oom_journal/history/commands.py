"""`oom-journal list` and `oom-journal show`: past OOM kills, read back from the journal.

What `coredumpctl list/info` is for crashes. A kill can be in the journal twice:
- our entry (MESSAGE_ID=5ce425e9fe7448d7b3e56b5a76b5911a, from root only: _UID=0), written by the daemon, with the
  command line; it is rebuilt into the same OomEvent the daemon had, so --json prints the same
  event document (schema 1) the sinks get;
- the kernel's own report (_TRANSPORT=kernel), which is all there is for kills that happened
  before oom-journal was installed or while it was not running.
Both carry the event id (boot id + kernel timestamp of the kill line), so a kill is shown once:
ours when there is one (it has the command line), else the kernel's, with no command line.

How the kernel's kills are found without parsing every kernel message of a big journal: the
kill line is the one line of a report printed at KERN_ERR (mm/oom_kill.c: pr_err("%s: Killed
process ...") in 5.1+, pr_err("Killed process ...") and pr_err("%s: Kill process ... or
sacrifice child") before), while the rest of a report (call trace, Mem-Info, task table, the
oom-kill: summary) is KERN_WARNING/INFO/DEFAULT. So the journal's own index answers
`_TRANSPORT=kernel PRIORITY=0..3` (journalctl -k -p err), and only for a kill that oom-journal
did not record are its report lines read, backwards from the kill line to "invoked oom-killer",
to learn its cgroup and trigger. Measured on a journal of 2.1 million entries over 5 boots (1.6
million kernel lines, 390 OOM kills of which oom-journal recorded half; written by
systemd-journal-remote from a generated export stream): feeding every kernel line to OomParser
took 14 s (Reader.get_next() converts every field; stepping through the kernel lines reading
MESSAGE alone still took 1.5 s); `list` took 0.7 s for all 390 kills, 0.2 s for one boot.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import glob
import json
import os
import re
import shutil
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Optional

from oom_journal.enrich.cgroup import CgroupInfo
from oom_journal.enrich.event import OomEvent
from oom_journal.enrich.host import read_boot_id
from oom_journal.text import human_size, json_line, printable
from oom_journal.model import MESSAGE_ID, HostInfo
from oom_journal.model import KernelKill, KernelLine
from oom_journal.parse.oom_report import OomParser
from oom_journal.sources.journal_fields import MISSED_KERNEL_MESSAGES_ID
from oom_journal.sources.journal_fields import field as _field
from oom_journal.sources.journal_fields import kernel_line_here as _line_here
from oom_journal.sources.journal_fields import step as _step

# The default journal directories sd_journal_open(SD_JOURNAL_LOCAL_ONLY) reads (sd-journal.c).
LOCAL_JOURNAL_DIRS = ("/run/log/journal", "/var/log/journal")
PERMISSION_HINT = "add your user to the systemd-journal (or adm) group"

# How far back from a kill line its report is read: the parser gives up on a report whose kill
# has not come 30 s after its first line (OomParser.burst_timeout_us), and a global OOM's task
# table has one line per process (a few thousand on a big host).
REPORT_MAX_SPAN_US = 30_000_000
REPORT_MAX_LINES = 20_000
# After the kill line: the oom_reaper's line for the victim comes within milliseconds.
REPORT_AFTER_MAX_LINES = 200
REPORT_AFTER_SPAN_US = 5_000_000
# Our entry and the kernel's line are written after the kill, never before it; a kill whose time
# is at a --since boundary is read from both sides of it, then filtered on its own time.
SINCE_MARGIN_S = 60.0
# Kernel lines reach the journal after the kill, but journald reads /dev/kmsg with a lag (at
# boot, the whole ring buffer at once, seconds later): candidates are read this far past --until.
UNTIL_MARGIN_S = 3600.0

# dump_stack()'s header names the running kernel: "CPU: 0 UID: 0 PID: 2045 Comm: python3 Not
# tainted 6.18.44 #1 ..." or "... Tainted: G        W  O      6.1.0-18-amd64 #1 Debian ...".
_RELEASE_RE = re.compile(r"Comm: .*(?:Not tainted|Tainted:[A-Z ]*?) +([^ #]+) #")
_EVENT_ID_RE = re.compile(r"^([0-9a-f]{32})-([0-9]{1,20})$")
_BOOT_ID_RE = re.compile(r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})([+-][0-9]+)?$")

# Fields kept as bytes: exact bytes matter (argv is NUL-separated; comms and cmdlines need not be
# UTF-8); python-systemd would otherwise decode what happens to be valid UTF-8 and not the rest.
_BYTES_FIELDS = ("MESSAGE", "OOM_ARGV", "OOM_CMDLINE", "OOM_COMM", "OOM_TRIGGER_COMM", "OOM_KERNEL_MESSAGE",
                 "OOM_CGROUP", "OOM_MEMCG", "OOM_CMDLINE_NOTE")
CONVERTERS = {name: bytes for name in _BYTES_FIELDS}
CONVERTERS.update({
    "__REALTIME_TIMESTAMP": int,  # µs since the epoch, not a datetime
    "__MONOTONIC_TIMESTAMP": lambda m: int(m[0]),  # µs since boot
    "_SOURCE_MONOTONIC_TIMESTAMP": int,
    "_BOOT_ID": lambda b: b.decode().replace("-", ""),
    "MESSAGE_ID": lambda b: b.decode().replace("-", ""),
})


class JournalAccessError(Exception):
    """The journal cannot be read; the text says why and what to do."""


class UsageError(Exception):
    """A bad argument (exit status 2, like argparse's own errors)."""


# ---------------------------------------------------------------------------------------------
# time and boot arguments


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


_UNIT_TYPES = ("service", "scope", "slice", "socket", "mount", "swap", "target", "timer", "path", "device",
               "automount")


def mangle_unit(unit: str) -> str:
    """'app' -> 'app.service', as journalctl -u does (unit_name_mangle); globs stay as they are."""
    if any(c in unit for c in "*?[") or ("." in unit and unit.rsplit(".", 1)[1] in _UNIT_TYPES):
        return unit
    return unit + ".service"


def unit_matches(pattern: str, event: OomEvent) -> bool:
    """A unit (or glob) names the victim's unit; a slice names every unit below it."""
    unit = event.cgroup.unit
    if unit and fnmatch.fnmatchcase(unit, pattern):
        return True
    if pattern.endswith(".slice") or pattern.endswith("*"):
        path = event.cgroup.path or event.kill.task_memcg or event.kill.oom_memcg or ""
        return any(fnmatch.fnmatchcase(part, pattern) for part in path.split("/") if part.endswith(".slice"))
    return False


# ---------------------------------------------------------------------------------------------
# the journal


def _first(entry: dict, key: str):
    value = entry.get(key)
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _text(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _int(value) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(_text(value))
    except ValueError:
        return None


def _kill_time(entry: dict, kernel_ts_us: int) -> float:
    """Wall-clock time of a kernel timestamp, from an entry of the same boot.

    The same conversion as event.kernel_time_to_realtime(), with the entry's own pair of clocks
    (journald stamps each entry with both) instead of "now": deterministic, and the same for
    our entry and for the kernel's kill line to within the clocks' drift.
    """
    realtime = _first(entry, "__REALTIME_TIMESTAMP")
    monotonic = _first(entry, "__MONOTONIC_TIMESTAMP")
    if realtime is None:
        return 0.0
    if monotonic is None:
        return realtime / 1e6
    return (realtime - (monotonic - kernel_ts_us)) / 1e6


def _kernel_line(entry: dict) -> Optional[KernelLine]:
    """A kernel entry as the parser takes it; None for lines userspace wrote to /dev/kmsg."""
    if _int(_first(entry, "SYSLOG_FACILITY")) not in (None, 0):
        return None
    message = _text(_first(entry, "MESSAGE")) or ""
    ts = _first(entry, "_SOURCE_MONOTONIC_TIMESTAMP")
    if ts is None:
        ts = _first(entry, "__MONOTONIC_TIMESTAMP") or 0
    return KernelLine(message=message, timestamp_us=int(ts), seq=None, position=_first(entry, "__CURSOR"),
                      priority=_int(_first(entry, "PRIORITY")) or 6)


def _entry_here(r) -> dict:
    """The current entry, as Reader.get_next() would have returned it."""
    entry = r._get_all()
    entry["__REALTIME_TIMESTAMP"] = r._get_realtime()
    entry["__MONOTONIC_TIMESTAMP"] = r._get_monotonic()
    entry["__CURSOR"] = r._get_cursor()
    return r._convert_entry(entry)


def event_from_entry(entry: dict) -> Optional[OomEvent]:
    """Our journal entry back into the OomEvent that wrote it (OomEvent.journal_fields(), reversed).

    None for an entry that is not a kill (no OOM_PID or OOM_KERNEL_TIMESTAMP_USEC).
    """
    def text(key):
        return _text(_first(entry, key))

    def num(key):
        return _int(_first(entry, key))

    pid, ts = num("OOM_PID"), num("OOM_KERNEL_TIMESTAMP_USEC")
    unseen = num("OOM_UNSEEN_KILLS")  # kills the second witness counted, victim unknown: no pid
    if unseen is not None and pid is None:
        pid = 0
    if pid is None or ts is None:
        return None
    glob_flag = num("OOM_GLOBAL")
    kill = KernelKill(
        reason=text("OOM_REASON") or "",
        pid=pid,
        comm=text("OOM_COMM") or "",
        timestamp_us=ts,
        seq=num("OOM_KERNEL_SEQNUM"),
        uid=num("OOM_UID"),
        total_vm_kb=num("OOM_TOTAL_VM_KB"),
        anon_rss_kb=num("OOM_ANON_RSS_KB"),
        file_rss_kb=num("OOM_FILE_RSS_KB"),
        shmem_rss_kb=num("OOM_SHMEM_RSS_KB"),
        pgtables_kb=num("OOM_PGTABLES_KB"),
        oom_score_adj=num("OOM_SCORE_ADJ"),
        constraint=text("OOM_CONSTRAINT"),
        global_oom=None if glob_flag is None else bool(glob_flag),
        oom_memcg=text("OOM_MEMCG"),
        # OOM_CGROUP is the kernel's task_memcg unless the daemon took it from /proc (ratelimit)
        task_memcg=text("OOM_CGROUP") if text("OOM_CGROUP_SOURCE") != "proc" else None,
        cpuset=text("OOM_CPUSET"),
        memcg_usage_kb=num("OOM_MEMCG_USAGE_KB"),
        memcg_limit_kb=num("OOM_MEMCG_LIMIT_KB"),
        trigger_comm=text("OOM_TRIGGER_COMM"),
        trigger_pid=num("OOM_TRIGGER_PID"),
        trigger_gfp_mask=text("OOM_TRIGGER_GFP_MASK"),
        trigger_order=num("OOM_TRIGGER_ORDER"),
        kill_message=text("OOM_KERNEL_MESSAGE") or "",
    )
    entry_boot = text("_BOOT_ID") or ""
    event_id = text("OOM_EVENT_ID") or f"{entry_boot}-{ts}"
    m = _EVENT_ID_RE.match(event_id)
    boot_id = m.group(1) if m else entry_boot
    argv_raw = _first(entry, "OOM_ARGV")
    argv = None
    if argv_raw is not None:
        argv = (argv_raw if isinstance(argv_raw, bytes) else str(argv_raw).encode("utf-8", "surrogateescape")).split(b"\0")
    elif _first(entry, "OOM_CMDLINE") is not None:  # OOM_ARGV lost: one argument, exact bytes
        raw = _first(entry, "OOM_CMDLINE")
        argv = [raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogateescape")]
    cgroup = CgroupInfo(path=text("OOM_CGROUP"), unit=text("OOM_UNIT"), slice=text("OOM_SLICE"),
                        container_id=text("OOM_CONTAINER_ID"), container_runtime=text("OOM_CONTAINER_RUNTIME"),
                        pod_uid=text("OOM_POD_UID"))
    host = HostInfo(hostname=text("_HOSTNAME") or "", boot_id=boot_id, kernel=text("OOM_KERNEL_RELEASE"))
    # The kill happened in the boot of the event id; our entry is normally of the same boot.
    when = _kill_time(entry, ts) if entry_boot == boot_id else (_first(entry, "__REALTIME_TIMESTAMP") or 0) / 1e6
    return OomEvent(kill=kill, host=host, time=when, argv=argv,
                    cmdline_source=text("OOM_CMDLINE_SOURCE") or ("not-found" if argv is None else "unknown"),
                    cmdline_note=text("OOM_CMDLINE_NOTE") or "", cgroup=cgroup, event_id=event_id,
                    cgroup_source=text("OOM_CGROUP_SOURCE"), kernel_report=text("OOM_KERNEL_REPORT"),
                    witness=text("OOM_WITNESS"), witness_note=text("OOM_WITNESS_NOTE"), unseen_kills=unseen)


def _default_reader_factory(directory: Optional[str], files: Optional[list]):
    from systemd import journal  # imported here: `oom-journal run --output stdout` works without it

    if files:
        return journal.Reader(files=list(files), converters=CONVERTERS)
    if directory:
        return journal.Reader(path=directory, converters=CONVERTERS)
    return journal.Reader(converters=CONVERTERS)


def _read_machine_id(etc_root: str = "/etc") -> Optional[str]:
    try:
        with open(os.path.join(etc_root, "machine-id")) as f:
            machine = f.read().strip()
    except OSError:
        return None
    return machine if re.fullmatch(r"[0-9a-f]{32}", machine) else None


_OOM_GROUP_END = " are going to be killed due to memory.oom.group set"


def _is_kill_line(message: str) -> bool:
    """'<reason>: Killed process N (...' (5.1+) or 'Killed process N (...' (before)."""
    return message.startswith("Killed process ") or ": Killed process " in message


class Journal:
    """The journal to read: the local one (default), a directory of journal files, or files.

    reader_factory(directory, files) returns a systemd.journal.Reader (or an object with its
    interface); it is the seam for the journal, like the daemon's sources.
    """

    def __init__(self, directory: Optional[str] = None, files: Optional[list] = None,
                 reader_factory: Callable = _default_reader_factory, proc_root: str = "/proc",
                 local_dirs: Iterable[str] = LOCAL_JOURNAL_DIRS, etc_root: str = "/etc"):
        self.directory = directory
        self.files = list(files) if files else None
        self.reader_factory = reader_factory
        self.local = not directory and not files
        self.current_boot = read_boot_id(proc_root) if self.local else None
        self.local_dirs = tuple(local_dirs)
        self.etc_root = etc_root
        self._boots: Optional[list] = None

    def describe(self) -> str:
        if self.files:
            return "the journal file" + ("s " if len(self.files) > 1 else " ") + ", ".join(self.files)
        if self.directory:
            return f"the journal in {self.directory}"
        return "the journal"

    def check_access(self) -> None:
        """Raises JournalAccessError when the journal files cannot be read.

        sd_journal_open() skips files it may not read without an error (journalctl says "No
        journal files were opened due to insufficient permissions" from sd-journal's private
        error list, which python-systemd does not expose): a user outside the systemd-journal
        group gets an empty journal, and "no OOM kills" would be a lie. So look first.
        """
        if self.files:
            for path in self.files:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as e:
                    raise JournalAccessError(self._access_message(path, e)) from e
            return
        roots = [self.directory] if self.directory else [d for d in self.local_dirs if os.path.isdir(d)]
        # sd_journal_open(SD_JOURNAL_LOCAL_ONLY) reads this machine's directory only.
        machine = None if self.directory else _read_machine_id(self.etc_root)
        if self.directory and not os.path.isdir(self.directory):
            try:
                os.listdir(self.directory)
            except OSError as e:
                raise JournalAccessError(self._access_message(self.directory, e)) from e
            raise JournalAccessError(f"cannot read the journal: {self.directory} is not a directory")
        for root in roots:
            for path in self._unreadable(root, machine):
                raise JournalAccessError(self._access_message(path, PermissionError(13, "Permission denied")))

    @staticmethod
    def _unreadable(root: str, machine: Optional[str]):
        """Journal directories and files below root that this user may not read: the files in
        it and in its machine-id directories (sd-journal's add_root_directory(): one level),
        or only in `machine`'s when given."""
        try:
            names = os.listdir(root)
        except OSError:
            yield root
            return
        for name in names:
            path = os.path.join(root, name)
            if name.endswith((".journal", ".journal~")):
                if not os.access(path, os.R_OK):
                    yield path
            elif re.fullmatch(r"[0-9a-f]{32}", name) and (machine is None or name == machine) and os.path.isdir(path):
                try:
                    subs = os.listdir(path)
                except OSError:
                    yield path
                    continue
                for sub in subs:
                    # user-UID.journal files are each user's own: only the system's matter here.
                    if sub.startswith("system") and sub.endswith((".journal", ".journal~")) \
                            and not os.access(os.path.join(path, sub), os.R_OK):
                        yield os.path.join(path, sub)

    def _access_message(self, path: str, error: OSError) -> str:
        text = f"cannot read the journal: {path}: {error.strerror or error}"
        if isinstance(error, PermissionError):
            text += f"; {PERMISSION_HINT}"
        return text

    def reader(self):
        try:
            r = self.reader_factory(self.directory, self.files)
        except ImportError as e:
            raise JournalAccessError(f"cannot read the journal: the systemd Python module is not installed "
                                     f"(apt-get install python3-systemd): {e}") from e
        except OSError as e:
            raise JournalAccessError(self._access_message(self.directory or ", ".join(self.files or []) or "journal", e)) from e
        try:
            r.data_threshold = 0  # the whole field: a command line can be longer than 64 KiB
        except AttributeError:
            pass
        return r

    def boots(self) -> list:
        """[(boot id, first entry's realtime µs)], oldest first, as journalctl --list-boots."""
        if self._boots is None:
            r = self.reader()
            try:
                found = []
                for boot in r.query_unique("_BOOT_ID"):
                    boot = str(boot).replace("-", "")
                    r.flush_matches()
                    r.add_match(_BOOT_ID=boot)
                    r.seek_head()
                    entry = r.get_next()
                    if entry:
                        found.append((boot, _first(entry, "__REALTIME_TIMESTAMP") or 0))
                self._boots = sorted(found, key=lambda b: b[1])
            finally:
                r.close()
        return self._boots

    def resolve_boot(self, spec: BootSpec) -> Optional[str]:
        """The boot id a -b argument names; None for 'all'. Raises UsageError if there is none."""
        if spec.all:
            return None
        if spec.boot_id is None and spec.offset == 0 and self.local and self.current_boot:
            return self.current_boot  # journalctl's shortcut for the local journal
        if spec.boot_id is not None and spec.offset == 0:
            return spec.boot_id
        ids = [b for b, _ in self.boots()]
        if not ids:
            raise UsageError(f"{self.describe()} has no boots")
        if spec.boot_id is not None:
            if spec.boot_id not in ids:
                raise UsageError(f"boot {spec.boot_id} is not in {self.describe()}")
            index = ids.index(spec.boot_id) + spec.offset
        elif spec.offset > 0:
            index = spec.offset - 1
        else:
            index = len(ids) - 1 + spec.offset
        if not 0 <= index < len(ids):
            raise UsageError(f"no boot with offset {spec.offset:+d} in {self.describe()} "
                             f"(it has {len(ids)}; see journalctl --list-boots)")
        return ids[index]


# ---------------------------------------------------------------------------------------------
# finding kills


@dataclass
class Kill:
    """One OOM kill as found in the journal."""

    event: OomEvent
    recorded: bool  # True: from oom-journal's entry; False: from the kernel's lines only
    entry: Optional[dict] = None  # our journal entry
    kill_cursor: Optional[str] = None  # the kernel's kill line, when the journal has it
    resolved: bool = False  # a kernel-only kill: its report has been read (cgroup, trigger)
    report: Optional[list] = None  # [KernelLine] from "invoked oom-killer" to the kill line
    report_after: Optional[list] = None  # the oom_reaper's line for the victim
    report_complete: bool = False  # the report's first line was found

    @property
    def event_id(self) -> str:
        return self.event.event_id

    @property
    def boot_id(self) -> str:
        return self.event.host.boot_id


@dataclass
class Query:
    since: Optional[float] = None  # seconds since the epoch
    until: Optional[float] = None
    boots: Optional[list] = None  # boot ids; None: all
    unit: Optional[str] = None  # mangled unit name or glob
    event_id: Optional[str] = None


@dataclass
class Findings:
    kills: list = field(default_factory=list)
    missed: list = field(default_factory=list)  # (boot id, time, MESSAGE) of journald's "Missed ..."


class History:
    def __init__(self, journal: Journal):
        self.journal = journal
        self._release: dict = {}  # boot id -> kernel release

    # -- the two kinds of records ------------------------------------------------------------
    def find(self, query: Query) -> Findings:
        """The kills in scope, oldest first, each once (ours where we have one)."""
        found = Findings()
        ours = self._our_kills(query)
        kernel = self._kernel_kills(query, found)
        merged: dict = {}
        for kill in kernel:
            merged.setdefault(kill.event_id, kill)
        for kill in ours:
            previous = merged.get(kill.event_id)
            if previous is not None and previous.recorded:
                # Written twice (two daemons at once, each recording every kill of the boot):
                # keep the one that has the command line.
                if previous.event.argv or not kill.event.argv:
                    continue
            if previous is not None:
                kill.kill_cursor = previous.kill_cursor
            merged[kill.event_id] = kill
        # A kill recorded from its exit (enrich.witness: its kill line was not read then) whose
        # kill line the journal has after all: the same kill, shown once, as recorded.
        from_exit = {(k.event.host.boot_id, k.event.kill.pid): k.event.kill.timestamp_us
                     for k in ours if k.event.witness == "exit"}
        kills = []
        for kill in merged.values():
            exit_us = from_exit.get((kill.event.host.boot_id, kill.event.kill.pid))
            if (not kill.recorded and exit_us is not None
                    and -1_000_000 <= exit_us - kill.event.kill.timestamp_us <= 60_000_000):
                continue
            t = kill.event.time
            if query.since is not None and t < query.since:
                continue
            if query.until is not None and t > query.until:
                continue
            if query.event_id is not None and kill.event_id != query.event_id:
                continue
            kills.append(kill)
        if query.unit is not None:
            for kill in kills:
                if not kill.recorded:
                    self.resolve(kill)
            kills = [k for k in kills if unit_matches(query.unit, k.event)]
        kills.sort(key=lambda k: (k.event.time, k.boot_id, k.event.kill.timestamp_us))
        found.kills = kills
        return found

    def _add_boots(self, r, boots: Optional[list]) -> None:
        if boots:
            r.add_conjunction()
            for boot in boots:
                r.add_match(_BOOT_ID=boot)

    def _our_kills(self, query: Query) -> list:
        r = self.journal.reader()
        try:
            # Root's entries only (_UID=0, set by journald from the sender's credentials): any
            # user can send one with our MESSAGE_ID and OOM_* fields (`logger --journald`), and
            # it must not be shown as a kill. journalctl -u and coredumpctl trust only root too.
            r.add_match(MESSAGE_ID=MESSAGE_ID, _UID="0")
            if query.event_id:
                r.add_match(OOM_EVENT_ID=query.event_id)
            self._add_boots(r, query.boots)
            # Our entry is written after the kill (maybe much later: kills while the daemon was
            # down are recorded when it starts), so only --since can skip entries.
            if query.since is not None:
                r.seek_realtime(max(0.0, query.since - SINCE_MARGIN_S))
            else:
                r.seek_head()
            kills = []
            while True:
                entry = r.get_next()
                if not entry:
                    break
                event = event_from_entry(entry)
                if event is None or event.event_id.startswith("test-"):
                    continue
                if query.boots and event.host.boot_id not in query.boots:
                    continue
                kills.append(Kill(event=event, recorded=True, entry=entry))
            return kills
        finally:
            r.close()

    def _kernel_kills(self, query: Query, found: Findings) -> list:
        """Kills from the kernel's kill lines (KERN_ERR: see the module docstring)."""
        r = self.journal.reader()
        try:
            r.add_match(_TRANSPORT="kernel")
            for priority in range(4):
                r.add_match(PRIORITY=str(priority))
            if query.event_id:
                m = _EVENT_ID_RE.match(query.event_id)
                if not m:
                    return []
                r.add_match(_SOURCE_MONOTONIC_TIMESTAMP=m.group(2))
            r.add_disjunction()
            r.add_match(MESSAGE_ID=MISSED_KERNEL_MESSAGES_ID, _TRANSPORT="driver")  # journald's own, not a user's
            self._add_boots(r, query.boots)
            if query.since is not None:
                r.seek_realtime(max(0.0, query.since - SINCE_MARGIN_S))
            else:
                r.seek_head()
            stop_after = None if query.until is None else (query.until + UNTIL_MARGIN_S) * 1e6
            parsers: dict = {}
            kills = []
            while _step(r):
                if stop_after is not None and r._get_realtime() > stop_after:
                    break
                if _field(r, "_TRANSPORT") == b"kernel":
                    # Err-level kernel lines that are no kill line (disk errors, ...) are skipped
                    # on one field: "Killed process " is in every kill line, "ill process " in
                    # the select line before 5.1 ("Kill process", "kill process" in 2.6).
                    message = _field(r, "MESSAGE") or b""
                    if b"illed process " not in message and b"ill process " not in message:
                        continue
                entry = _entry_here(r)
                boot = _first(entry, "_BOOT_ID") or ""
                if _first(entry, "MESSAGE_ID") == MISSED_KERNEL_MESSAGES_ID:
                    when = (_first(entry, "__REALTIME_TIMESTAMP") or 0) / 1e6
                    if (query.since is None or when >= query.since) and (query.until is None or when <= query.until):
                        found.missed.append((boot, when, _text(_first(entry, "MESSAGE")) or ""))
                    continue
                line = _kernel_line(entry)
                if line is None:
                    continue
                # The err-level lines of each boot in order: the two-line kill of kernels before
                # 5.1 ("Kill process ... or sacrifice child" + "Killed process") is assembled.
                parser = parsers.get(boot)
                if parser is None:
                    parser = parsers[boot] = OomParser()
                for kernel_kill in parser.feed(line):
                    host = HostInfo(hostname=_text(_first(entry, "_HOSTNAME")) or "", boot_id=boot, kernel=None)
                    event = OomEvent.build(kernel_kill, host, lookup=None,
                                           event_time=_kill_time(entry, kernel_kill.timestamp_us))
                    kills.append(Kill(event=event, recorded=False, kill_cursor=line.position))
            return kills
        finally:
            r.close()

    # -- a kill's report -----------------------------------------------------------------------
    def _kernel_reader_at(self, kill: Kill):
        """A reader of the kill's boot's kernel lines, on the kill line; None if it is gone."""
        r = self.journal.reader()
        r.add_match(_TRANSPORT="kernel")
        r.add_match(_BOOT_ID=kill.boot_id)
        r.seek_cursor(kill.kill_cursor)
        if not _step(r) or not r.test_cursor(kill.kill_cursor):
            r.close()
            return None
        return r

    def read_report(self, kill: Kill) -> None:
        """The kernel's report of the kill: its lines from "invoked oom-killer" to the kill line,
        read backwards from the kill line (bounded: REPORT_MAX_LINES, REPORT_MAX_SPAN_US).

        The kernel prints the report (dump_header() and the oom-kill: summary) for at most 10
        kills in 5 s (mm/oom_kill.c: __ratelimit(&oom_rs), DEFAULT_RATELIMIT_BURST/_INTERVAL);
        past that, a kill is its kill line alone. So when the walk back meets another kill line
        before an opening line, the report before it is that kill's, not this one's, unless a
        memory.oom.group line says this kill is one of the same report's group kills.
        """
        if kill.report is not None:
            return
        kill.report = []
        if kill.kill_cursor is None:
            return
        r = self._kernel_reader_at(kill)
        if r is None:
            return
        try:
            target = kill.event.kill.timestamp_us
            line = _line_here(r)
            before = [line] if line is not None else []
            previous_kill = None  # index in `before` of the nearest earlier kill line
            group = False
            for _ in range(REPORT_MAX_LINES):
                if not _step(r, forward=False):
                    break
                line = _line_here(r)
                if line is None:
                    continue
                if target - line.timestamp_us > REPORT_MAX_SPAN_US:
                    break
                before.append(line)
                message = line.message
                if " invoked oom-killer: " in message:
                    kill.report_complete = True
                    break
                if previous_kill is None and _is_kill_line(message):
                    previous_kill = len(before) - 1
                elif message.endswith(_OOM_GROUP_END) and message.startswith("Tasks in "):
                    group = True
            if previous_kill is not None and not group:
                before = before[:previous_kill]
                kill.report_complete = False
            kill.report = before[::-1]
        finally:
            r.close()

    def read_report_after(self, kill: Kill) -> None:
        """The oom_reaper's line for the victim, if it comes soon after the kill line."""
        if kill.report_after is not None:
            return
        kill.report_after = []
        if kill.kill_cursor is None:
            return
        r = self._kernel_reader_at(kill)
        if r is None:
            return
        try:
            target, pid = kill.event.kill.timestamp_us, kill.event.kill.pid
            for _ in range(REPORT_AFTER_MAX_LINES):
                if not _step(r):
                    break
                line = _line_here(r)
                if line is None:
                    continue
                if line.timestamp_us - target > REPORT_AFTER_SPAN_US or " invoked oom-killer: " in line.message:
                    break
                # "oom_reaper: reaped process %d (%s), ..." / "oom_reaper: unable to reap pid:%d (%s)"
                if line.message.startswith("oom_reaper: ") and (
                        f" process {pid} (" in line.message or f" pid:{pid} (" in line.message):
                    kill.report_after.append(line)
                    break
        finally:
            r.close()

    def resolve(self, kill: Kill) -> None:
        """A kernel-only kill: its cgroup, trigger and kernel release, from its whole report."""
        if kill.recorded or kill.resolved:
            return
        kill.resolved = True
        self.read_report(kill)
        old = kill.event
        parser = OomParser()
        best = None
        for line in kill.report:
            for kernel_kill in parser.feed(line):
                if kernel_kill.timestamp_us == old.kill.timestamp_us and kernel_kill.pid == old.kill.pid:
                    best = kernel_kill
        host = HostInfo(hostname=old.host.hostname, boot_id=old.host.boot_id,
                        kernel=self._kernel_release(kill.boot_id, kill.report))
        event = OomEvent.build(best or old.kill, host, lookup=None, event_time=old.time)
        event.event_id = old.event_id
        event.cmdline_note = "oom-journal did not record this kill; found in the kernel's log"
        kill.event = event

    def _kernel_release(self, boot_id: str, report: list) -> Optional[str]:
        for line in report:
            m = _RELEASE_RE.search(line.message)
            if m and line.message.startswith("CPU: "):
                return m.group(1)
        if boot_id not in self._release:
            release = None
            r = self.journal.reader()
            try:
                # The kernel's first line of each boot: "Linux version 6.18.44 (...) #1 SMP ..."
                r.add_match(_TRANSPORT="kernel")
                r.add_match(_BOOT_ID=boot_id)
                r.seek_head()
                entry = r.get_next()
                message = _text(_first(entry, "MESSAGE")) if entry else None
                if message and message.startswith("Linux version "):
                    release = message.split(" ")[2]
            finally:
                r.close()
            if release is None and self.journal.local and boot_id == self.journal.current_boot:
                release = os.uname().release
            self._release[boot_id] = release
        return self._release[boot_id]


# ---------------------------------------------------------------------------------------------
# output


class Output:
    """stdout/stderr, the terminal's width and whether to color."""

    def __init__(self, stdout=None, stderr=None, environ=None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.environ = os.environ if environ is None else environ
        try:
            self.tty = self.stdout.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.color = self.tty and "NO_COLOR" not in self.environ and self.environ.get("TERM") != "dumb"
        encoding = (getattr(self.stdout, "encoding", None) or "utf-8").lower().replace("-", "")
        self.ellipsis = "…" if encoding == "utf8" else "..."

    def width(self) -> Optional[int]:
        """Columns to fit in; None: do not shorten (not a terminal, and no COLUMNS, as systemctl)."""
        if not self.tty and not self.environ.get("COLUMNS"):
            return None
        if self.environ.get("COLUMNS", "").isdigit():
            return max(40, int(self.environ["COLUMNS"]))
        return max(40, shutil.get_terminal_size().columns)

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.color else text

    def out(self, text: str = "") -> None:
        _write(self.stdout, text + "\n")

    def err(self, text: str) -> None:
        _write(self.stderr, text + "\n")


def _write(stream, text: str) -> None:
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))


def display_width(text: str) -> int:
    return sum(_char_width(c) for c in text)


def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def ellipsize(text: str, width: int, ellipsis: str = "…") -> str:
    if display_width(text) <= width:
        return text
    room = max(0, width - display_width(ellipsis))
    out, used = [], 0
    for c in text:
        w = _char_width(c)
        if used + w > room:
            break
        out.append(c)
        used += w
    return "".join(out) + ellipsis


def _pad(text: str, width: int, right: bool = False) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def format_time(t: float, precise: bool = False) -> str:
    value = datetime.fromtimestamp(t).astimezone()
    text = value.strftime("%a %Y-%m-%d %H:%M:%S")
    if precise:
        text += f".{value.microsecond:06d}"
    return text + " " + (value.strftime("%Z") or value.strftime("%z"))


def owner(event: OomEvent) -> str:
    return printable(event.owner) if event.owner else "-"


UNIT_MAX_WIDTH = 40
SHOW_OTHERS_MAX = 10
COMM_MAX_WIDTH = 24
CMDLINE_MIN_WIDTH = 16


def table_lines(kills: list, out: Output, full: bool = False, legend: bool = True) -> list:
    headers = ("TIME", "PID", "UID", "UNIT", "COMM", "ANON-RSS", "CMDLINE")
    right = (False, True, True, False, False, True, False)
    rows = []
    for kill in kills:
        e = kill.event
        cmdline = printable(e.cmdline) if e.cmdline is not None else "-"
        if e.unseen_kills is not None:
            cmdline = f"[lost] {e.unseen_kills} kill(s) the kernel counted, victim unknown"
        elif e.kernel_report is not None:
            cmdline = "[lost] " + cmdline  # recorded from the second witness: its kill line was not read
        rows.append([format_time(e.time), "-" if e.unseen_kills is not None else str(e.kill.pid), "-" if e.kill.uid is None else str(e.kill.uid),
                     ellipsize(owner(e), UNIT_MAX_WIDTH, out.ellipsis),
                     ellipsize(printable(e.kill.comm), COMM_MAX_WIDTH, out.ellipsis),
                     human_size(e.kill.anon_rss_kb) if e.kill.anon_rss_kb is not None else "-", cmdline])
    widths = [max([display_width(h)] + [display_width(r[i]) for r in rows]) for i, h in enumerate(headers[:-1])]
    total = out.width()
    if total is not None and not full:
        room = max(CMDLINE_MIN_WIDTH, total - sum(widths) - len(widths))
        for r in rows:
            r[-1] = ellipsize(r[-1], room, out.ellipsis)
    lines = []
    if legend:
        header = " ".join(_pad(h, widths[i], right[i]) for i, h in enumerate(headers[:-1])) + " " + headers[-1]
        lines.append(out.bold(header))
    for r in rows:
        lines.append(" ".join(_pad(v, widths[i], right[i]) for i, v in enumerate(r[:-1])) + " " + r[-1])
    return lines


def show_lines(kill: Kill, out: Output, local: bool, current_boot: Optional[str]) -> list:
    e, k = kill.event, kill.event.kill
    rows: list = []

    def add(label, value):
        if value is None or value == "":
            return
        rows.append((label, str(value)))

    add("Event ID", e.event_id)
    add("Time", format_time(e.time, precise=True))
    add("Boot", e.host.boot_id + (" (this boot)" if local and e.host.boot_id == current_boot else ""))
    add("Hostname", printable(e.host.hostname) if e.host.hostname else None)
    add("Kernel", e.host.kernel)
    add("Reason", k.reason)
    add("PID", f"{k.pid} ({printable(k.comm)})")
    if k.uid is not None:
        add("UID", f"{k.uid}" + (f" ({_user_name(k.uid)})" if local and _user_name(k.uid) else ""))
    add("Unit", printable(e.cgroup.unit) if e.cgroup.unit else None)
    add("Slice", printable(e.cgroup.slice) if e.cgroup.slice else None)
    if e.cgroup.container_id:
        add("Container", f"{e.cgroup.container_id} ({e.cgroup.container_runtime or 'unknown runtime'})")
    add("Pod UID", e.cgroup.pod_uid)
    add("Command line", printable(e.cmdline) if e.cmdline is not None else "- (unknown)")
    source = e.cmdline_source + (f" ({e.cmdline_note})" if e.cmdline_note else "")
    add("Cmdline source", source)
    if e.argv:
        add("Argv", f"{len(e.argv)} argument" + ("s" if len(e.argv) != 1 else ""))
        for i, arg in enumerate(e.argv):
            rows.append(("", f"[{i}] " + printable(arg.decode("utf-8", "surrogateescape"))))
    add("Cgroup", printable(k.task_memcg) if k.task_memcg else None)
    if k.global_oom:
        add("OOM scope", "the whole machine (global OOM)")
    elif k.oom_memcg:
        add("OOM cgroup", printable(k.oom_memcg) + " (its limit was reached)")
    add("Constraint", (k.constraint or "") + (f" (cpuset {printable(k.cpuset)})" if k.cpuset and k.constraint else "") or None)
    sizes = [(name, value) for name, value in (("anon-rss", k.anon_rss_kb), ("file-rss", k.file_rss_kb),
                                              ("shmem-rss", k.shmem_rss_kb), ("total-vm", k.total_vm_kb),
                                              ("page tables", k.pgtables_kb)) if value is not None]
    if sizes:
        add("Memory", ", ".join(f"{name} {human_size(value)}" for name, value in sizes))
    add("OOM score adj", k.oom_score_adj)
    if k.memcg_usage_kb is not None:
        add("Cgroup memory", f"usage {human_size(k.memcg_usage_kb)}, limit {human_size(k.memcg_limit_kb)}")
    if k.trigger_comm is not None:
        trigger = printable(k.trigger_comm)
        if k.trigger_pid is not None:
            trigger += f", pid {k.trigger_pid}"
        details = [f"gfp_mask={k.trigger_gfp_mask}" if k.trigger_gfp_mask else None,
                   f"order={k.trigger_order}" if k.trigger_order is not None else None]
        add("Trigger", ", ".join([trigger] + [d for d in details if d]))
    if kill.recorded:
        written = _first(kill.entry or {}, "__REALTIME_TIMESTAMP")
        add("Recorded", "by oom-journal" + (f" at {format_time(written / 1e6)}" if written else ""))
    else:
        add("Recorded", "only in the kernel's log: oom-journal did not record this kill (not installed "
                        "or not running), so its command line is unknown")
    if e.kernel_report is not None:
        add("Kernel report", f"{e.kernel_report}: recorded from the second witness ({e.witness})"
            + (f"; {printable(e.witness_note)}" if e.witness_note else ""))
    add("Message", printable(e.message()))
    add("Kill line", printable(k.kill_message) if k.kill_message else None)
    label_width = max(len(label) for label, _ in rows)
    lines = [f"{out.bold(_pad(label + (':' if label else ' '), label_width + 1, right=True))} {value}"
             for label, value in rows]
    lines.append("")
    report = kill.report or []
    if not report:
        lines.append(out.bold("Kernel report:") + " not in the journal (journald did not record the kernel's "
                     "messages, or they were rotated away)")
        return lines
    first, last = report[0], report[-1]
    note = "" if kill.report_complete else (
        " (no \"invoked oom-killer\" line before it: the kernel prints the report of at most 10 kills"
        " in 5 s, or the report's lines were lost)")
    count = len(report) + len(kill.report_after or [])
    lines.append(out.bold("Kernel report:") + f" {count} line{'s' if count != 1 else ''}"
                 f" [{first.timestamp_us / 1e6:.6f}] to [{last.timestamp_us / 1e6:.6f}]{note}")
    for line in report + (kill.report_after or []):
        lines.append(f"[{line.timestamp_us // 1_000_000:>6}.{line.timestamp_us % 1_000_000:06d}] {printable(line.message)}")
    return lines


def _user_name(uid: int) -> Optional[str]:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# the commands


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-S", "--since", metavar="TIME", help="kills at or after TIME (" + TIME_FORMS + ")")
    parser.add_argument("-U", "--until", metavar="TIME", help="kills at or before TIME")
    parser.add_argument("-u", "--unit", metavar="UNIT",
                        help="kills of processes of this systemd unit (a glob; a slice: every unit in it)")
    parser.add_argument("-b", "--boot", metavar="ID", nargs="?", const="0",
                        help="kills of one boot: this boot (no ID, or 0), -1 the one before, 1 the first, "
                             "a boot ID[±offset] (journalctl --list-boots), 'all'; default: every boot")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-D", "--directory", metavar="DIR", help="read the journal files in DIR (copied from another machine)")
    where.add_argument("--file", metavar="FILE", action="append",
                       help="read this journal file (repeatable; a glob)")
    parser.add_argument("--json", action="store_true",
                        help="print the event documents (JSON, schema 1, the sinks' format) instead")


def build_list_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oom-journal list",
        description="List the OOM kills in the journal, newest last: those oom-journal recorded (with the "
                    "victim's command line) and those only the kernel's log has (command line '-').")
    _common_arguments(parser)
    parser.add_argument("-n", "--lines", metavar="N", type=int, help="only the newest N kills")
    parser.add_argument("-l", "--full", action="store_true", help="do not shorten command lines to the terminal's width")
    parser.add_argument("--no-legend", action="store_true", help="no header line")
    return parser


def build_show_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oom-journal show",
        description="Show everything about one OOM kill: its fields, the full command line, the trigger, "
                    "the cgroup, and the kernel's own report. A PID or COMM that matches several kills "
                    "shows the newest and lists the others.")
    parser.add_argument("what", metavar="ID|PID|COMM", help="an event id (as list --json prints it), a pid, or a process name")
    _common_arguments(parser)
    return parser


_TIME_OPTIONS = {"-S": "--since", "--since": "--since", "-U": "--until", "--until": "--until"}


def _join_relative_times(argv: list) -> list:
    """`--since -1h` as journalctl takes it: argparse would read "-1h" as an option."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _TIME_OPTIONS and i + 1 < len(argv) and re.match(r"-[0-9.]", argv[i + 1]):
            out.append(f"{_TIME_OPTIONS[arg]}={argv[i + 1]}")
            i += 2
            continue
        if arg == "--":
            out.extend(argv[i:])
            break
        out.append(arg)
        i += 1
    return out


def _parse(parser: argparse.ArgumentParser, argv: list, out: Output):
    """argparse, onto the command's streams, returning an exit status instead of raising SystemExit."""
    try:
        with contextlib.redirect_stdout(out.stdout), contextlib.redirect_stderr(out.stderr):
            return parser.parse_args(_join_relative_times(list(argv))), None
    except SystemExit as e:
        return None, (e.code if isinstance(e.code, int) else 2)


def _journal_from(args, reader_factory, proc_root) -> Journal:
    files = None
    if args.file:
        files = []
        for pattern in args.file:
            matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
            files.extend(matched or [pattern])
    return Journal(directory=args.directory, files=files, reader_factory=reader_factory, proc_root=proc_root)


@dataclass
class _Filters:
    since: Optional[float]
    until: Optional[float]
    boot: Optional[BootSpec]
    unit: Optional[str]


def _filters(args, now: float) -> _Filters:
    """The arguments that need no journal, checked before it is opened."""
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
        boot = parse_boot(args.boot) if args.boot is not None else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    if since is not None and until is not None and since > until:
        raise UsageError("--since is after --until")
    return _Filters(since, until, boot, mangle_unit(args.unit) if args.unit else None)


def _query(filters: _Filters, journal: Journal) -> Query:
    boots = None
    if filters.boot is not None:
        boot = journal.resolve_boot(filters.boot)
        boots = [boot] if boot else None
    return Query(since=filters.since, until=filters.until, boots=boots, unit=filters.unit)


def _scope(args) -> str:
    parts = []
    if args.boot is not None:
        parts.append(f"boot {args.boot}" if args.boot not in ("0", "") else "this boot")
    if args.since:
        parts.append(f"since {args.since}")
    if args.until:
        parts.append(f"until {args.until}")
    if args.unit:
        parts.append(f"unit {mangle_unit(args.unit)}")
    return (" (" + ", ".join(parts) + ")") if parts else ""


def _report_missed(findings: Findings, out: Output) -> None:
    for boot, when, message in findings.missed:
        out.err(f"warning: {format_time(when)}, boot {boot}: {message.strip()}: kills among them cannot be listed")


def main_list(argv: list, *, stdout=None, stderr=None, environ=None,
              reader_factory: Callable = _default_reader_factory, now: Optional[float] = None,
              proc_root: str = "/proc") -> int:
    """`oom-journal list`: 0 (also when no kill is found), 1 when the journal cannot be read, 2 on bad usage."""
    out = Output(stdout, stderr, environ)
    return _closed_pipe_is_fine(out, _list, argv, out, reader_factory, now, proc_root)


def _list(argv: list, out: Output, reader_factory: Callable, now: Optional[float], proc_root: str) -> int:
    args, status = _parse(build_list_parser(), argv, out)
    if args is None:
        return status
    if args.lines is not None and args.lines < 0:
        out.err("oom-journal list: -n: must not be negative")
        return 2
    try:
        filters = _filters(args, time.time() if now is None else now)
        journal = _journal_from(args, reader_factory, proc_root)
        journal.check_access()
        query = _query(filters, journal)
        history = History(journal)
        findings = history.find(query)
        kills = findings.kills
        if args.lines is not None:
            kills = kills[len(kills) - args.lines:] if args.lines else []
        for kill in kills:
            history.resolve(kill)
    except UsageError as e:
        out.err(f"oom-journal list: {e}")
        return 2
    except JournalAccessError as e:
        out.err(f"oom-journal: {e}")
        return 1
    _report_missed(findings, out)
    if args.json:
        out.out(json_line([k.event.document() for k in kills], indent=2))
    if not kills:
        out.err(f"No OOM kills found in {journal.describe()}{_scope(args)}.")
        return 0
    if not args.json:
        for line in table_lines(kills, out, full=args.full, legend=not args.no_legend):
            out.out(line)
    return 0


def main_show(argv: list, *, stdout=None, stderr=None, environ=None,
              reader_factory: Callable = _default_reader_factory, now: Optional[float] = None,
              proc_root: str = "/proc") -> int:
    """`oom-journal show ID|PID|COMM`: 0, 1 when no kill matches or the journal cannot be read, 2 on bad usage."""
    out = Output(stdout, stderr, environ)
    return _closed_pipe_is_fine(out, _show, argv, out, reader_factory, now, proc_root)


def _show(argv: list, out: Output, reader_factory: Callable, now: Optional[float], proc_root: str) -> int:
    args, status = _parse(build_show_parser(), argv, out)
    if args is None:
        return status
    what = args.what.strip()
    try:
        filters = _filters(args, time.time() if now is None else now)
        journal = _journal_from(args, reader_factory, proc_root)
        journal.check_access()
        query = _query(filters, journal)
        m = _EVENT_ID_RE.match(what.lower())
        if m:
            query.event_id = what.lower()
            if query.boots is None:
                query.boots = [m.group(1)]
            elif m.group(1) not in query.boots:
                query.boots = []
        history = History(journal)
        findings = history.find(query) if query.boots != [] else Findings()
        kills = findings.kills
        kind = "event id"
        if not m:
            by_pid = [k for k in kills if what.isdigit() and k.event.kill.pid == int(what)]
            if by_pid:
                kills, kind = by_pid, "pid"
            else:
                kills, kind = [k for k in kills if k.event.kill.comm == what or printable(k.event.kill.comm) == what], "name"
        if not kills:
            _report_missed(findings, out)  # it may be among them
            out.err(f"oom-journal show: no OOM kill with {kind if m or not what.isdigit() else 'pid or name'} "
                    f"{what!r} in {journal.describe()}{_scope(args)}; see oom-journal list")
            return 1
        chosen = kills[-1]
        history.resolve(chosen)
        history.read_report(chosen)
        history.read_report_after(chosen)
    except UsageError as e:
        out.err(f"oom-journal show: {e}")
        return 2
    except JournalAccessError as e:
        out.err(f"oom-journal: {e}")
        return 1
    if len(kills) > 1:
        others = kills[:-1][::-1]  # newest first
        out.err(f"{len(kills)} OOM kills with {kind} {printable(what)}; showing the newest. The others:")
        for other in others[:SHOW_OTHERS_MAX]:
            out.err(f"  {other.event_id}  {format_time(other.event.time)}  pid {other.event.kill.pid}"
                    f"  {printable(other.event.kill.comm)}")
        if len(others) > SHOW_OTHERS_MAX:
            out.err(f"  ... and {len(others) - SHOW_OTHERS_MAX} older (oom-journal list)")
    if args.json:
        out.out(json_line(chosen.event.document(), indent=2))
        return 0
    for line in show_lines(chosen, out, journal.local, journal.current_boot):
        out.out(line)
    return 0


def _closed_pipe_is_fine(out: Output, command: Callable, *args) -> int:
    """`oom-journal list | head`: the reader has what it wanted; no traceback, status 0."""
    try:
        return command(*args)
    except BrokenPipeError:
        if out.stdout is sys.stdout:
            # Python flushes stdout again at exit; point it at /dev/null so that fails quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 0


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"list": main_list, "show": main_show}
    if not argv or argv[0] not in commands:
        print("usage: python -m oom_journal.history list|show [OPTIONS]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
