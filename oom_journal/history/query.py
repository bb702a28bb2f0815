"""The kills in the journal, each once (History.find), and a kill's whole kernel report.

A kill can be in the journal twice:
- our entry (MESSAGE_ID=5ce425e9fe7448d7b3e56b5a76b5911a, from root only: _UID=0), written by the daemon, with the
  command line; it is rebuilt into the same OomEvent the daemon had, so --json prints the same
  event document (schema 1) the sinks get;
- the kernel's own report (_TRANSPORT=kernel), which is all there is for kills that happened
  before oom-journal was installed or while it was not running.
Both carry the event id (boot id + kernel timestamp and pid of the kill line), so a kill is shown once:
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

import contextlib
import fnmatch
import os
import re
from oom_journal.records import dataclass, field
from typing import Optional

from oom_journal.enrich.event import EVENT_ID_RE, KERNEL_REPORT_LATE, OomEvent
from oom_journal.history.entries import (decode_value, entry_here, entry_value, event_from_entry, kernel_line,
                                         kill_time)
from oom_journal.history.journal import Journal
from oom_journal.model import MESSAGE_ID, HostInfo
from oom_journal.parse.oom_report import OomParser
from oom_journal.sources.journal_fields import MISSED_KERNEL_MESSAGES_ID
from oom_journal.sources.journal_fields import field as _field
from oom_journal.sources.journal_fields import kernel_line_here as _line_here
from oom_journal.sources.journal_fields import step as _step

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


_OOM_GROUP_END = " are going to be killed due to memory.oom.group set"


def _is_kill_line(message: str) -> bool:
    """'<reason>: Killed process N (...' (5.1+) or 'Killed process N (...' (before)."""
    return message.startswith("Killed process ") or ": Killed process " in message


def _kernel_lines(r, forward: bool, steps: int):
    """The kernel's lines met in `steps` steps of r from where it is, each as the parser takes it
    (the records userspace wrote into /dev/kmsg are steps too, but not yielded)."""
    for _ in range(steps):
        if not _step(r, forward=forward):
            return
        line = _line_here(r)
        if line is not None:
            yield line


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


def id_matches(event_id: str, asked: str) -> bool:
    """Whether a kill's event id is the one asked for; a kill line's id asked without its pid
    (`<boot>-<µs>`, as 0.1.0 wrote them at first) is every kill line of that microsecond."""
    if event_id == asked:
        return True
    m = EVENT_ID_RE.match(asked)
    return bool(m and m.group(3) is None and event_id.startswith(asked + "-") and EVENT_ID_RE.match(event_id))


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


def completed(first: Kill, late: Kill) -> Kill:
    """One row of an event recorded from the second witness and completed later (two entries of
    ours, one event id): the completion's kernel report, the first entry's time and command line
    (the completion copies them when the daemon still had them; an entry of a daemon restarted in
    between may lack them)."""
    event = late.event
    event.time = first.event.time
    event.completes_time = first.event.time
    if first.event.argv and not event.argv:
        event.argv, event.cmdline_source, event.cmdline_note = (first.event.argv, first.event.cmdline_source,
                                                                first.event.cmdline_note)
    if event.witness is None:
        event.witness = first.event.witness
    return Kill(event=event, recorded=True, entry=first.entry, kill_cursor=first.kill_cursor or late.kill_cursor)


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
            if previous is not None and previous.recorded and (kill.event.is_completion or previous.event.is_completion):
                merged[kill.event_id] = (completed(previous, kill) if kill.event.is_completion
                                         else completed(kill, previous))
                continue
            if previous is not None and previous.recorded:
                # Written twice (two daemons at once, each recording every kill of the boot):
                # keep the one that has the command line, and the unseen entry either names.
                if previous.event.argv or not kill.event.argv:
                    previous.event.completes = previous.event.completes or kill.event.completes
                    continue
                kill.event.completes = kill.event.completes or previous.event.completes
            if previous is not None:
                kill.kill_cursor = previous.kill_cursor
            merged[kill.event_id] = kill
        # A kill recorded from its exit (enrich.witness: its kill line was not read then) whose
        # kill line the journal has after all: the same kill, shown once, as recorded. The line's
        # kernel entry is left out; an entry of ours for the line under its own id (a second daemon
        # that did not know the exit's entry yet) completes that row, as the daemon's `late` does.
        from_exit = {(k.event.host.boot_id, k.event.kill.pid): k for k in merged.values()
                     if k.recorded and k.event.witness == "exit" and "-lost-" in k.event_id}
        for kill in list(merged.values()):
            lost = from_exit.get((kill.event.host.boot_id, kill.event.kill.pid))
            if lost is None or lost is kill or kill.event_id not in merged:
                continue
            exit_us = lost.event_id.rsplit("-", 1)[-1]
            if not (exit_us.isdigit() and -1_000_000 <= int(exit_us) - kill.event.kill.timestamp_us <= 60_000_000):
                continue
            del merged[kill.event_id]
            current = merged[lost.event_id]
            # The kernel's lines of the kill are the report `show` prints under the row.
            current.kill_cursor = current.kill_cursor or kill.kill_cursor
            if kill.recorded and not current.event.is_completion:
                kill.event.event_id = kill.event.completes = lost.event_id
                kill.event.kernel_report, kill.event.witness = KERNEL_REPORT_LATE, "exit"
                merged[lost.event_id] = completed(current, kill)
        # Kill lines that came after an `unseen` entry had counted their kill (OOM_COMPLETES names
        # it): that entry stands for so many kills fewer; one that all were named is not shown.
        for kill in list(merged.values()):
            target = merged.get(kill.event.completes or "")
            if target is None or target is kill or target.event.unseen_kills is None:
                continue
            target.event.unseen_kills -= 1
            if target.event.unseen_kills <= 0 and query.event_id != target.event_id:
                del merged[target.event_id]
        kills = []
        for kill in merged.values():
            t = kill.event.time
            if query.since is not None and t < query.since:
                continue
            if query.until is not None and t > query.until:
                continue
            if query.event_id is not None and not id_matches(kill.event_id, query.event_id):
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
            m = EVENT_ID_RE.match(query.event_id or "")
            if query.event_id and not (m and m.group(3) is None):  # a pid-less id: filtered after
                r.add_match(OOM_EVENT_ID=query.event_id)
                if m:  # and the same kill's entry as 0.1.0 wrote its id at first, without the pid
                    r.add_match(OOM_EVENT_ID=f"{m.group(1)}-{m.group(2)}")
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
                m = EVENT_ID_RE.match(query.event_id)
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
                entry = entry_here(r)
                boot = entry_value(entry, "_BOOT_ID") or ""
                if entry_value(entry, "MESSAGE_ID") == MISSED_KERNEL_MESSAGES_ID:
                    when = (entry_value(entry, "__REALTIME_TIMESTAMP") or 0) / 1e6
                    if (query.since is None or when >= query.since) and (query.until is None or when <= query.until):
                        found.missed.append((boot, when, decode_value(entry_value(entry, "MESSAGE")) or ""))
                    continue
                line = kernel_line(entry)
                if line is None:
                    continue
                # The err-level lines of each boot in order: the two-line kill of kernels before
                # 5.1 ("Kill process ... or sacrifice child" + "Killed process") is assembled.
                parser = parsers.get(boot)
                if parser is None:
                    parser = parsers[boot] = OomParser()
                for kernel_kill in parser.feed(line):
                    host = HostInfo(hostname=decode_value(entry_value(entry, "_HOSTNAME")) or "", boot_id=boot, kernel=None)
                    event = OomEvent.build(kernel_kill, host, lookup=None,
                                           event_time=kill_time(entry, kernel_kill.timestamp_us))
                    kills.append(Kill(event=event, recorded=False, kill_cursor=str(line.position)))
            return kills
        finally:
            r.close()

    # -- a kill's report -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _reader_at_kill_line(self, kill: Kill):
        """A reader of the kill's boot's kernel lines, on the kill line (closed after); None if the
        journal does not have it (any more)."""
        if kill.kill_cursor is None:
            yield None
            return
        r = self.journal.reader()
        try:
            r.add_match(_TRANSPORT="kernel")
            r.add_match(_BOOT_ID=kill.boot_id)
            r.seek_cursor(kill.kill_cursor)
            yield r if _step(r) and r.test_cursor(kill.kill_cursor) else None
        finally:
            r.close()

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
        with self._reader_at_kill_line(kill) as r:
            if r is None:
                return
            target = kill.event.kill.timestamp_us
            line = _line_here(r)
            before = [line] if line is not None else []
            previous_kill = None  # index in `before` of the nearest earlier kill line
            group = False
            for line in _kernel_lines(r, forward=False, steps=REPORT_MAX_LINES):
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

    def read_report_after(self, kill: Kill) -> None:
        """The oom_reaper's line for the victim, if it comes soon after the kill line."""
        if kill.report_after is not None:
            return
        kill.report_after = []
        with self._reader_at_kill_line(kill) as r:
            if r is None:
                return
            target, pid = kill.event.kill.timestamp_us, kill.event.kill.pid
            for line in _kernel_lines(r, forward=True, steps=REPORT_AFTER_MAX_LINES):
                if line.timestamp_us - target > REPORT_AFTER_SPAN_US or " invoked oom-killer: " in line.message:
                    break
                # "oom_reaper: reaped process %d (%s), ..." / "oom_reaper: unable to reap pid:%d (%s)"
                if line.message.startswith("oom_reaper: ") and (
                        f" process {pid} (" in line.message or f" pid:{pid} (" in line.message):
                    kill.report_after.append(line)
                    break

    def resolve(self, kill: Kill) -> None:
        """A kernel-only kill: its cgroup, trigger and kernel release, from its whole report."""
        if kill.recorded or kill.resolved:
            return
        kill.resolved = True
        self.read_report(kill)
        old = kill.event
        parser = OomParser()
        best = None
        report = kill.report or []  # read_report() just set it (empty when the journal has none)
        for line in report:
            for kernel_kill in parser.feed(line):
                if kernel_kill.timestamp_us == old.kill.timestamp_us and kernel_kill.pid == old.kill.pid:
                    best = kernel_kill
        host = HostInfo(hostname=old.host.hostname, boot_id=old.host.boot_id,
                        kernel=self._kernel_release(kill.boot_id, report))
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
                message = decode_value(entry_value(entry, "MESSAGE")) if entry else None
                if message and message.startswith("Linux version "):
                    release = message.split(" ")[2]
            finally:
                r.close()
            if release is None and self.journal.local and boot_id == self.journal.current_boot:
                release = os.uname().release
            self._release[boot_id] = release
        return self._release[boot_id]
