"""`oom-journal list` and `oom-journal show`: their arguments, and what each does with them
(the past kills themselves: query.py; how they are shown: render.py)."""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import sys
import time
from oom_journal.records import dataclass
from typing import Callable, Optional

from oom_journal.enrich.event import EVENT_ID_RE
from oom_journal.history.journal import Journal, JournalAccessError, UsageError, default_reader_factory
from oom_journal.history.query import Findings, History, Query, mangle_unit
from oom_journal.history.render import Output, missed_lines, others_lines, show_lines, table_lines
from oom_journal.history.timespec import TIME_FORMS, BootSpec, parse_boot, parse_time
from oom_journal.model import KILLERS
from oom_journal.text import json_line, printable


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
    parser.add_argument("--killer", metavar="NAME", choices=KILLERS,
                        help="only the kills of this killer: " + ", ".join(KILLERS))
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


def main_list(argv: list, *, stdout=None, stderr=None, environ=None,
              reader_factory: Callable = default_reader_factory, now: Optional[float] = None,
              proc_root: str = "/proc") -> int:
    """`oom-journal list`: 0 (also when no kill is found), 1 when the journal cannot be read, 2 on bad usage."""
    return _run("list", build_list_parser(), _list, argv, Output(stdout, stderr, environ), reader_factory, now,
                proc_root)


def main_show(argv: list, *, stdout=None, stderr=None, environ=None,
              reader_factory: Callable = default_reader_factory, now: Optional[float] = None,
              proc_root: str = "/proc") -> int:
    """`oom-journal show ID|PID|COMM`: 0, 1 when no kill matches or the journal cannot be read, 2 on bad usage."""
    return _run("show", build_show_parser(), _show, argv, Output(stdout, stderr, environ), reader_factory, now,
                proc_root)


def _run(name: str, parser: argparse.ArgumentParser, command: Callable, argv: list, out: Output,
         reader_factory: Callable, now: Optional[float], proc_root: str) -> int:
    """What `list` and `show` share around command(args, out, open_journal): the arguments parsed
    onto the command's streams; open_journal() (called when the command has checked its own
    arguments) checks the time and boot arguments, opens the journal they name, checks that it
    can be read and returns it with the Query; UsageError is exit status 2 and JournalAccessError
    1, each said on stderr; a closed pipe is fine."""
    def open_journal(args) -> tuple:
        filters = _filters(args, time.time() if now is None else now)
        journal = _journal_from(args, reader_factory, proc_root)
        journal.check_access()
        return journal, _query(filters, journal)

    def run() -> int:
        args, status = _parse(parser, argv, out)
        if args is None:
            return status
        try:
            return command(args, out, lambda: open_journal(args))
        except UsageError as e:
            out.err(f"oom-journal {name}: {e}")
            return 2
        except JournalAccessError as e:
            out.err(f"oom-journal: {e}")
            return 1

    try:
        return run()
    except BrokenPipeError:
        # `oom-journal list | head`: the reader has what it wanted; no traceback, status 0.
        if out.stdout is sys.stdout:
            # Python flushes stdout again at exit; point it at /dev/null so that fails quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 0


def _list(args, out: Output, open_journal: Callable) -> int:
    if args.lines is not None and args.lines < 0:
        raise UsageError("-n: must not be negative")
    journal, query = open_journal()
    history = History(journal)
    findings = history.find(query)
    kills = findings.kills
    if args.killer is not None:
        kills = [k for k in kills if k.event.kill.killer == args.killer]
    if args.lines is not None:
        kills = kills[len(kills) - args.lines:] if args.lines else []
    for kill in kills:
        history.resolve(kill)
    _say(out.err, missed_lines(findings))
    if args.json:
        out.out(json_line([k.event.document() for k in kills], indent=2))
    if not kills:
        out.err(f"No OOM kills found in {journal.describe()}{_scope(args)}.")
        return 0
    if not args.json:
        _say(out.out, table_lines(kills, out, full=args.full, legend=not args.no_legend))
    return 0


def _show(args, out: Output, open_journal: Callable) -> int:
    what = args.what.strip()
    journal, query = open_journal()
    m = EVENT_ID_RE.match(what.lower())
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
        # the ids of the kills without a kill line of their own (a userspace killer's, the second
        # witness's: `<boot>-<killer>-<µs>-<pid>`, `<boot>-lost-...`) are matched whole
        by_id = [k for k in kills if k.event_id == what.lower()]
        by_pid = [k for k in kills if what.isdigit() and k.event.kill.pid == int(what)]
        if by_id:
            kills = by_id
        elif by_pid:
            kills, kind = by_pid, "pid"
        else:
            kills, kind = [k for k in kills if k.event.kill.comm == what or printable(k.event.kill.comm) == what], "name"
    if not kills:
        _say(out.err, missed_lines(findings))  # it may be among them
        out.err(f"oom-journal show: no OOM kill with {kind if m or not what.isdigit() else 'pid or name'} "
                f"{what!r} in {journal.describe()}{_scope(args)}; see oom-journal list")
        return 1
    chosen = kills[-1]
    history.resolve(chosen)
    history.read_report(chosen)
    history.read_report_after(chosen)
    if len(kills) > 1:
        _say(out.err, others_lines(kills, kind, what))
    if args.json:
        out.out(json_line(chosen.event.document(), indent=2))
        return 0
    _say(out.out, show_lines(chosen, out, journal.local, journal.current_boot))
    return 0


def _say(write: Callable, lines: list) -> None:
    for line in lines:
        write(line)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"list": main_list, "show": main_show}
    if not argv or argv[0] not in commands:
        print("usage: python -m oom_journal.history list|show [OPTIONS]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
