"""The terminal encoder of `list` and `show`: the table, the show page, and the streams they go to.
Every text that other people chose (comm, command line, cgroup, unit, kernel lines) passes
through oom_journal.text.printable(): nothing shown can move the cursor or start a line."""
from __future__ import annotations

import os
import shutil
import sys
import unicodedata
from datetime import datetime
from typing import Optional

from oom_journal.enrich.event import OomEvent
from oom_journal.history.entries import entry_value
from oom_journal.history.query import Findings, Kill
from oom_journal.text import human_size, printable


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
COMM_MAX_WIDTH = 24
CMDLINE_MIN_WIDTH = 16


def table_lines(kills: list, out: Output, full: bool = False, legend: bool = True) -> list:
    headers = ("TIME", "KILLER", "PID", "UID", "UNIT", "COMM", "ANON-RSS", "CMDLINE")
    right = (False, False, True, True, False, False, True, False)
    rows = []
    for kill in kills:
        e = kill.event
        cmdline = printable(e.cmdline) if e.cmdline is not None else "-"
        if e.unseen_kills is not None and e.kill.killer != "kernel":
            cmdline = f"[unseen] {e.unseen_kills} process(es) {e.kill.killer} killed, victim unknown"
        elif e.unseen_kills is not None:
            cmdline = f"[lost] {e.unseen_kills} kill(s) the kernel counted, victim unknown"
        elif e.is_completion:
            cmdline = "[lost, completed] " + cmdline  # and the kernel's report came later (history.query.completed)
        elif e.kernel_report is not None:
            cmdline = "[lost] " + cmdline  # recorded from the second witness: its kill line was not read
        pid = "-" if e.unseen_kills is not None else str(e.kill.pid)
        rows.append([format_time(e.time), e.kill.killer, pid, "-" if e.kill.uid is None else str(e.kill.uid),
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


SHOW_OTHERS_MAX = 10


def others_lines(kills: list, kind: str, what: str) -> list:
    """For `show`, when a PID or COMM matched several kills (the newest is shown): the others."""
    others = kills[:-1][::-1]  # newest first
    lines = [f"{len(kills)} OOM kills with {kind} {printable(what)}; showing the newest. The others:"]
    for other in others[:SHOW_OTHERS_MAX]:
        lines.append(f"  {other.event_id}  {format_time(other.event.time)}  pid {other.event.kill.pid}"
                     f"  {printable(other.event.kill.comm)}")
    if len(others) > SHOW_OTHERS_MAX:
        lines.append(f"  ... and {len(others) - SHOW_OTHERS_MAX} older (oom-journal list)")
    return lines


def missed_lines(findings: Findings) -> list:
    """journald's own "Missed N kernel messages" in scope: kills among them cannot be listed."""
    return [f"warning: {format_time(when)}, boot {boot}: {printable(message.strip())}: kills among them cannot be listed"
            for boot, when, message in findings.missed]


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
    add("Killer", k.killer)
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
        written = entry_value(kill.entry or {}, "__REALTIME_TIMESTAMP")
        add("Recorded", "by oom-journal" + (f" at {format_time(written / 1e6)}" if written else ""))
    else:
        add("Recorded", "only in the kernel's log: oom-journal did not record this kill (not installed "
                        "or not running), so its command line is unknown")
    if e.is_completion:
        add("Kernel report", f"late: recorded first from the second witness ({e.witness}), its kill line not read "
                             "then; the kernel's report came later and completes it (a second entry, same event id)")
    elif e.kernel_report is not None:
        add("Kernel report", f"{e.kernel_report}: recorded from the second witness ({e.witness})"
            + (f"; {printable(e.witness_note)}" if e.witness_note else ""))
    if e.completes and e.completes != e.event_id:
        add("Completes", f"{e.completes}: this kill was counted there before its kill line came, victim unknown")
    add("Message", printable(e.message()))
    add("Kill line", printable(k.kill_message) if k.kill_message else None)
    add("Killer line", printable(k.killer_message) if k.killer_message else None)
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
