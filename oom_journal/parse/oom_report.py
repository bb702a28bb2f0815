"""Assemble the kernel's OOM-killer reports (KernelLine in) into kills (KernelKill out).

The kernel does not print one record per kill: it prints a burst of lines (mm/oom_kill.c
dump_header() and oom_kill_process(), mm/memcontrol.c mem_cgroup_print_oom_*()), and the
shape of that burst changed several times between 3.x and 6.x (see shared/KERNEL-FORMATS.md):

    <comm> invoked oom-killer: gfp_mask=..., order=N, oom_score_adj=N      opens the burst
    <comm> cpuset=<cg> mems_allowed=<list>                                  before 5.0
    CPU: 1 PID: 2045 Comm: <comm> ...     (6.x: CPU: 0 UID: 0 PID: 2045 Comm: ...)
    Task in <cg> killed as a result of limit of <cg>                        memcg, before 5.0
    memory: usage NkB, limit NkB, failcnt N                                 memcg
    oom-kill:constraint=...,task_memcg=<cg>,task=<comm>,pid=N,uid=N         5.0 and later
    <reason>: Kill process N (<comm>) score N or sacrifice child            up to 5.0, then
    Killed process N (<comm>) total-vm:NkB, anon-rss:NkB, file-rss:NkB...   the kill
    <reason>: Killed process N (<comm>) total-vm:NkB, ...                   5.1 and later

Lines of other bursts and of unrelated subsystems can come in between, several bursts can
be open at once (3.x memcg OOMs of different hierarchies were not serialised by oom_lock),
lines can be lost (a reader overrun, a daemon started mid-report), and every <comm> is
chosen by whoever runs the process (prctl(PR_SET_NAME)), so it may hold '(', ')', spaces or
a fake ') total-vm:1kB'. The parser therefore anchors every comm on the kernel's own text
around it: the last ') total-vm:' of a kill line, everything before ' invoked oom-killer: '.

Most kernel messages of a busy machine are not about OOM: feed() rejects them with a few
startswith()/'in' tests before any regular expression runs.
"""
from __future__ import annotations

import logging
import re
from oom_journal.records import dataclass
from typing import Optional

from oom_journal.model import KernelKill, KernelLine

log = logging.getLogger(__name__)

REASON_GLOBAL = "Out of memory"
REASON_MEMCG = "Memory cgroup out of memory"
# A kill line alone whose reason the kernel printed on another line (up to 5.0, "<reason>: Kill
# process ... or sacrifice child") that was not read: not guessed.
REASON_UNKNOWN = "unknown"

# Python refuses int() of more than 4300 digits (sys.int_info.str_digits_check_threshold);
# no kernel number is longer than 20 digits (u64), so longer runs are garbage, not numbers.
_MAX_DIGITS = 20

# dump_stack()'s header: "CPU: 1 PID: 2045 Comm: python3 Not tainted ..." (lib/dump_stack.c);
# 6.12 and later add the UID: "CPU: 0 UID: 0 PID: 2045 Comm: python3 ...".
_DUMP_STACK_RE = re.compile(r"CPU: [0-9]+ (?:UID: [0-9]+ )?PID: ([0-9]{1,10}) Comm: ")
_INVOKED_GFP_RE = re.compile(r"gfp_mask=([^,\s]*)")
_INVOKED_ORDER_RE = re.compile(r"(?:^|[ ,])order=(-?[0-9]{1,11})")
_INVOKED_ADJ_RE = re.compile(r"(?:^|[ ,])oom_score_adj=(-?[0-9]{1,11})")
_PID_THEN_PAREN_RE = re.compile(r"([0-9]{1,10}) \(")
# The kill line's pid and where its comm starts. RHEL 6's 2.6.32 (and kernels built from it)
# print the uid BEFORE the comm: "Killed process 8120, UID 0, (java) total-vm:..." (fixture
# v2.6.32-rhel6-*); RHEL 7's 3.10 after it (_KILL_SIZES_RE).
_KILL_PID_RE = re.compile(r"([0-9]{1,10})(?:, UID ([0-9]{1,10}),)? \(")
# What makes a line a kill line whatever follows: the kernel's verb and a pid, at the start of
# the message or after a reason. Any such line becomes a kill, in a shape known or not.
_KILL_VERB_RE = re.compile(r"([0-9]{1,10})(?![0-9])")
# The pre-3.10 dump_stack() header: "Pid: 14095, comm: mruby Not tainted 2.6.32-358.el6 #1"
# (arch/x86/kernel/dumpstack.c, before 3.10 moved it to lib/dump_stack.c as "CPU: ... PID:").
_OLD_DUMP_STACK_RE = re.compile(r"Pid: ([0-9]{1,10}), comm: ")
# Unknown kill-line shapes warned about, at most this many remembered (one warning per line).
_WARNED_MAX = 1024
_MEMCG_USAGE_RE = re.compile(r"memory: usage ([0-9]{1,20})kB, limit ([0-9]{1,20})kB")
# What every kill line has printed since 2.6.36 (total-vm; 'vsz' before that), right after
# the comm; RHEL 7's 3.10 puts ", UID N," between them ("Killed process 18177 (palo_be),
# UID 0, total-vm:..."). A line cut before these three sizes is not taken as a kill.
_KILL_SIZES_RE = re.compile(
    r"(?:, UID ([0-9]{1,10}),)? (?:total-vm|vsz):([0-9]{1,20})kB, "
    r"anon-rss:([0-9]{1,20})kB, file-rss:([0-9]{1,20})kB"
)
# The fields after the three sizes, each taken only when complete: shmem-rss (4.5+),
# "UID:%u pgtables:%lukB oom_score_adj:%hd" (5.4+).
_KILL_FIELD_RE = re.compile(r"(?:^|[ ,])([A-Za-z_-]+):(-?[0-9]{1,20})(kB)?(?=[ ,]|$)")
_KILL_FIELD_UNITS = {"shmem-rss": True, "pgtables": True, "UID": False, "oom_score_adj": False}
# Where a comm ends in a kill line: the LAST of these wins, so a comm that imitates one
# of them ("x) total-vm:1kB") stays inside the comm.
_KILL_COMM_ENDS = (") total-vm:", "), UID ", ") vsz:")
_SELECT_MARKERS = (": Kill process ", ": kill process ")  # 2.6 printed it lower-case
_SELECT_COMM_END = ") score "
_EXITING_MARKER = ": OOM victim "
_EXITING_END = ") is already exiting. Skip killing the task"
_TASK_IN_SPLIT = " killed as a result of limit of "
_SUMMARY_PREFIX = "oom-kill:"
# The summary's fields in the order dump_oom_summary() prints them (mm/oom_kill.c, 5.0+).
# The fields before task= are the kernel's or the administrator's (constraint, node lists,
# cgroup paths); task= is the victim's comm, which anyone can choose. So the left part is
# split at the FIRST marker of each kind, and pid/uid are taken from the right end.
_SUMMARY_MARKERS = (
    ("constraint", "constraint="),
    ("nodemask", ",nodemask="),
    ("cpuset", ",cpuset="),
    ("mems_allowed", ",mems_allowed="),
    ("oom_memcg", ",oom_memcg="),
    ("global_oom", ",global_oom"),
    ("task_memcg", ",task_memcg="),
    ("task", ",task="),
)


def _uint(text: str) -> Optional[int]:
    if text and len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def _sint(text: str) -> Optional[int]:
    if text.startswith("-"):
        value = _uint(text[1:])
        return None if value is None else -value
    return _uint(text)


@dataclass
class _Kill:
    """What one kill line says."""

    pid: int
    comm: str
    reason: Optional[str]  # None for the bare pre-5.1 "Killed process" line
    uid: Optional[int] = None
    total_vm_kb: Optional[int] = None
    anon_rss_kb: Optional[int] = None
    file_rss_kb: Optional[int] = None
    shmem_rss_kb: Optional[int] = None
    pgtables_kb: Optional[int] = None
    oom_score_adj: Optional[int] = None


@dataclass
class _Summary:
    """The 5.0+ line oom-kill:constraint=...,task=<comm>,pid=N,uid=N."""

    complete: bool = False  # it reached ,pid=N,uid=N: pid, uid and task can be trusted
    constraint: Optional[str] = None
    cpuset: Optional[str] = None
    mems_allowed: Optional[str] = None
    oom_memcg: Optional[str] = None
    global_oom: Optional[bool] = None
    task_memcg: Optional[str] = None
    task: Optional[str] = None
    pid: Optional[int] = None
    uid: Optional[int] = None


@dataclass
class _Burst:
    """One OOM report whose kill has not been seen yet."""

    position: object
    start_us: int
    trigger_comm: Optional[str] = None
    trigger_pid: Optional[int] = None
    trigger_gfp_mask: Optional[str] = None
    trigger_order: Optional[int] = None
    trigger_oom_score_adj: Optional[int] = None
    cpuset: Optional[str] = None
    mems_allowed: Optional[str] = None
    task_in_seen: bool = False
    task_in_memcg: Optional[str] = None  # "Task in <this> killed as a result of limit of ..."
    limit_memcg: Optional[str] = None  # "... limit of <this>" / "Memory limit reached of cgroup <this>"
    memcg_usage_kb: Optional[int] = None
    memcg_limit_kb: Optional[int] = None
    summary: Optional[_Summary] = None
    # "<reason>: Kill process N (comm) score S or sacrifice child" (up to 5.0)
    select_reason: Optional[str] = None
    select_pid: Optional[int] = None
    select_comm: Optional[str] = None


class OomParser:
    """Turns kernel records, fed in read order, into one KernelKill per OOM kill.

    burst_timeout_us: a report whose kill has not come this long (kernel time) after its
        first line is dropped, so that oldest_open_position() cannot stick forever.
    max_open_bursts: at most this many reports are kept open; beyond it the oldest goes.
    """

    def __init__(self, burst_timeout_us: int = 30_000_000, max_open_bursts: int = 64):
        self.burst_timeout_us = int(burst_timeout_us)
        self.max_open_bursts = max(1, int(max_open_bursts))
        self._bursts: list[_Burst] = []  # oldest first
        # memory.oom.group (4.19+): after the victim's kill line the kernel prints
        # "Tasks in <cg> are going to be killed due to memory.oom.group set" and one kill
        # line per other member of that cgroup; they belong to the report just closed.
        self._last_closed: Optional[_Burst] = None
        self._last_closed_us: int = 0
        self._group: Optional[_Burst] = None
        self._group_us: int = 0
        # The pids killed in the current memory.oom.group kill: the chosen victim is a member
        # too, and mem_cgroup_scan_tasks() prints its kill line again (fixture v6.x-*-oom-group).
        self._last_closed_pid: Optional[int] = None
        self._group_pids: set = set()
        self._warned: set = set()  # unknown kill-line shapes already named in the log
        self.repeated: list = []  # (timestamp µs, pid) of repeated group-kill lines; the caller empties it
        self._group_cgroup: Optional[str] = None  # the <cg> of "Tasks in <cg> are going to be killed"
        self.dropped_bursts = 0  # reports given up (timeout, too many open)
        self.internal_errors = 0  # lines whose handling raised; see feed()

    # -- public API ---------------------------------------------------------------------

    def feed(self, line: KernelLine) -> list[KernelKill]:
        """Feed one kernel record in read order; returns the kills completed by it (usually 0 or 1). Never raises on any input."""
        try:
            return self._feed(line)
        except Exception:  # noqa: BLE001 - the contract is "never raises"; a bad line is skipped
            self.internal_errors += 1
            log.debug("oom_parser: skipped a kernel line it could not handle", exc_info=True)
            return []

    def oldest_open_position(self) -> object | None:
        """`position` of the first line of the oldest burst still open (a report whose kill has not been seen yet), or None when no burst is open. The daemon persists this so that after a restart it re-reads every burst it had not finished; kills it already recorded are de-duplicated elsewhere by event id (boot id, kill line timestamp, pid)."""
        return self._bursts[0].position if self._bursts else None

    def open_bursts(self) -> int:
        return len(self._bursts)

    # -- dispatch -----------------------------------------------------------------------

    def _feed(self, line: KernelLine) -> list[KernelKill]:
        msg = line.message
        now = line.timestamp_us
        if self._bursts or self._group is not None:
            self._expire(now)
        if not msg:
            return []
        # Cheap rejection first: every line handled below passes one of these tests.
        if not (
            "ill" in msg
            or "emory" in msg
            or " cpuset=" in msg
            or msg.startswith(("CPU: ", "Task in ", "Pid: "))
        ):
            return []
        msg = msg.rstrip()

        # Lines recognised by how they start come first: a comm inside a line can imitate
        # any marker searched with 'in' below ("Killed process " is exactly 15 bytes), so a
        # handler that finds its line is not what it looked for lets the next one try.
        if msg.startswith(_SUMMARY_PREFIX) and self._on_summary(msg, line):
            return []
        if "Killed process " in msg:
            kills = self._on_killed(msg, line)
            if kills is not None:
                return kills
        if " invoked oom-killer: " in msg:
            self._on_invoked(msg, line)
            return []
        for marker in _SELECT_MARKERS:
            if marker in msg and self._on_select(msg, msg.find(marker), len(marker), line):
                return []
        if _EXITING_MARKER in msg and msg.endswith(_EXITING_END):
            if self._on_exiting(msg, now):
                return []
        if msg.startswith("Out of memory and no killable processes"):
            self._on_no_killable(now)
            return []
        if msg.startswith("Tasks in ") and msg.endswith(" are going to be killed due to memory.oom.group set"):
            self._on_oom_group(msg[len("Tasks in "):-len(" are going to be killed due to memory.oom.group set")], now)
            return []
        if not self._bursts:
            return []  # the remaining lines only add to an open burst
        if msg.startswith("memory: usage "):
            self._on_memcg_usage(msg)
        elif msg.startswith("Task in "):
            self._on_task_in(msg)
        elif msg.startswith("Memory limit reached of cgroup "):
            self._on_limit_reached(msg)
        elif msg.startswith(("CPU: ", "Pid: ")):
            self._on_dump_stack(msg)
        elif " cpuset=" in msg and " mems_allowed=" in msg:
            self._on_cpuset(msg)
        return []

    def _expire(self, now: int) -> None:
        timeout = self.burst_timeout_us
        # Bursts are kept oldest first, so the expired ones are a prefix. A clock that went
        # back by more than the timeout (another boot) expires them too.
        while self._bursts and abs(now - self._bursts[0].start_us) > timeout:
            self._bursts.pop(0)
            self.dropped_bursts += 1
        if self._group is not None and abs(now - self._group_us) > timeout:
            self._group = None

    def _open(self, line: KernelLine) -> _Burst:
        if len(self._bursts) >= self.max_open_bursts:
            self._bursts.pop(0)
            self.dropped_bursts += 1
        burst = _Burst(position=line.position, start_us=line.timestamp_us)
        self._bursts.append(burst)
        return burst

    def _close(self, burst: _Burst, now: int, killed_pid: Optional[int] = None) -> None:
        self._bursts.remove(burst)
        self._last_closed = burst
        self._last_closed_us = now
        self._last_closed_pid = killed_pid

    def _oldest(self, predicate) -> Optional[_Burst]:
        for burst in self._bursts:
            if predicate(burst):
                return burst
        return None

    # -- the burst's opening line ---------------------------------------------------------

    def _on_invoked(self, msg: str, line: KernelLine) -> None:
        cut = msg.find(" invoked oom-killer: ")
        rest = msg[cut + len(" invoked oom-killer: "):]
        # A new report ends the previous one's memory.oom.group kills.
        self._group = None
        burst = self._open(line)
        burst.trigger_comm = msg[:cut]
        m = _INVOKED_GFP_RE.search(rest)
        if m:
            burst.trigger_gfp_mask = m.group(1)
        m = _INVOKED_ORDER_RE.search(rest)
        if m:
            burst.trigger_order = _sint(m.group(1))
        m = _INVOKED_ADJ_RE.search(rest)
        if m:
            burst.trigger_oom_score_adj = _sint(m.group(1))

    # -- lines that add to an open burst ----------------------------------------------------

    def _on_dump_stack(self, msg: str) -> None:
        m = _DUMP_STACK_RE.match(msg) or _OLD_DUMP_STACK_RE.match(msg)
        if not m:
            return
        comm_text = msg[m.end():]
        # dump_stack() runs for many reasons (WARN, hung tasks, ...): take it only for a
        # burst whose trigger has this comm ("Comm: %.20s " of a comm of at most 15 bytes).
        burst = self._oldest(
            lambda b: b.trigger_pid is None
            and b.trigger_comm is not None
            and (comm_text == b.trigger_comm or comm_text.startswith(b.trigger_comm + " "))
        )
        if burst is not None:
            burst.trigger_pid = _uint(m.group(1))

    def _on_cpuset(self, msg: str) -> None:
        # "%s cpuset=%s mems_allowed=%*pbl" (cpuset_print_current_mems_allowed(), before 5.0):
        # the comm is the trigger's; the same line is also printed by warn_alloc(), so it is
        # taken only by a burst whose trigger comm it starts with and that has none yet.
        for burst in self._bursts:
            if burst.cpuset is not None or burst.trigger_comm is None:
                continue
            prefix = burst.trigger_comm + " cpuset="
            if msg.startswith(prefix):
                cut = msg.rfind(" mems_allowed=")
                if cut < len(prefix):
                    return
                burst.cpuset = msg[len(prefix):cut]
                burst.mems_allowed = msg[cut + len(" mems_allowed="):]
                return

    def _on_task_in(self, msg: str) -> None:
        # "Task in %s killed as a result of limit of %s" (mem_cgroup_print_oom_info(), < 5.0)
        rest = msg[len("Task in "):]
        cut = rest.find(_TASK_IN_SPLIT)
        if cut == -1:  # a pr_cont() cut in two by another CPU's line: the first half only
            task_cg, limit_cg = rest, None
        else:
            task_cg, limit_cg = rest[:cut], rest[cut + len(_TASK_IN_SPLIT):]
        # Before 4.x, memcg OOMs of different hierarchies ran at once and their lines mixed.
        # Container runtimes give the cpuset cgroup the memory cgroup's name (docker:
        # cpuset=<id>, memory /docker/<id>), so a burst whose cpuset is that name wins.
        names = {cg.rstrip("/").rsplit("/", 1)[-1] for cg in (task_cg, limit_cg) if cg}
        names.discard("")
        burst = self._oldest(lambda b: not b.task_in_seen and b.cpuset in names) or self._oldest(
            lambda b: not b.task_in_seen
        )
        if burst is None:
            return
        burst.task_in_seen = True
        burst.task_in_memcg = task_cg
        burst.limit_memcg = limit_cg

    def _on_limit_reached(self, msg: str) -> None:
        # The same function's wording when it has no victim task (4.19-4.20).
        burst = self._oldest(lambda b: not b.task_in_seen)
        if burst is not None:
            burst.task_in_seen = True
            burst.limit_memcg = msg[len("Memory limit reached of cgroup "):]

    def _on_memcg_usage(self, msg: str) -> None:
        m = _MEMCG_USAGE_RE.match(msg)
        if not m:
            return
        # Before 5.0 it follows its report's "Task in" line.
        burst = self._oldest(lambda b: b.memcg_usage_kb is None and b.task_in_seen) or self._oldest(
            lambda b: b.memcg_usage_kb is None
        )
        if burst is not None:
            burst.memcg_usage_kb = _uint(m.group(1))
            burst.memcg_limit_kb = _uint(m.group(2))

    def _on_summary(self, msg: str, line: KernelLine) -> bool:
        summary = _parse_summary(msg)
        if summary is None:
            return False
        burst = None
        if summary.complete:
            # Since 4.x every report holds oom_lock, so two 5.x reports do not mix; still,
            # prefer a burst this summary names (its chosen or allocating task).
            burst = self._oldest(
                lambda b: b.summary is None and b.select_pid is None and b.trigger_pid == summary.pid
            )
        if burst is None:
            burst = self._oldest(lambda b: b.summary is None and b.select_pid is None) or self._oldest(
                lambda b: b.summary is None
            )
        if burst is None:
            if not summary.complete:
                return True
            burst = self._open(line)  # the report's start was not seen (lost, or read mid-report)
        burst.summary = summary
        return True

    def _on_select(self, msg: str, at: int, marker_len: int, line: KernelLine) -> bool:
        # "<reason>: Kill process %d (%s) score %u or sacrifice child" (up to 5.0): names the
        # task chosen; the kill itself is the "Killed process" line after it.
        reason = msg[:at].strip()
        rest = msg[at + marker_len:]
        m = _PID_THEN_PAREN_RE.match(rest)
        if not m or not _plausible_reason(reason):
            return False
        pid = _uint(m.group(1))
        comm_end = rest.rfind(_SELECT_COMM_END)
        comm = rest[m.end():comm_end] if comm_end >= m.end() else None
        # Which report chose this task: the one whose summary names it (5.0), else one whose
        # allocating task it is (a memcg OOM mostly picks the task that hit the limit), else
        # the oldest still waiting for its choice.
        burst = (
            self._oldest(lambda b: b.select_pid is None and b.summary is not None and b.summary.pid == pid)
            or self._oldest(lambda b: b.select_pid is None and b.summary is None and b.trigger_pid == pid)
            or self._oldest(lambda b: b.select_pid is None and b.summary is None)
            or self._oldest(lambda b: b.select_pid is None)
            # The same choice printed again before its kill line (oom_kill_allocating_task
            # floods of 4.x repeat it): the burst that made it, not a new one.
            or self._oldest(lambda b: b.select_pid == pid)
        )
        if burst is None:
            burst = self._open(line)
        burst.select_reason = reason
        burst.select_pid = pid
        burst.select_comm = comm
        return True

    # -- lines that end a burst -------------------------------------------------------------

    def _on_killed(self, msg: str, line: KernelLine) -> Optional[list[KernelKill]]:
        """The kills of a kill line, or None when the line is not one."""
        at = msg.find("Killed process ")
        if at > 0:
            if msg[at - 2:at] != ": ":
                return None
            reason = msg[:at - 2].strip()
            if not _plausible_reason(reason):
                return None
        else:
            reason = None  # up to 5.0: the reason was on the "Kill process" line before
        kill = _parse_kill(msg, at + len("Killed process "), reason)
        if kill is None:
            kill = _parse_unknown_kill(msg, at + len("Killed process "), reason)
            if kill is None:
                return None
            self._warn_unknown(line.message)
        now = line.timestamp_us
        if reason is not None:
            # 5.1+: the summary just before names the same pid.
            burst = (
                self._oldest(lambda b: b.summary is not None and b.summary.pid == kill.pid)
                or self._oldest(lambda b: b.select_pid == kill.pid)
            )
            if burst is None and self._group is not None:
                return self._group_member(kill, line)
            if burst is None:
                burst = self._oldest(lambda b: b.summary is None and b.select_pid is None)
        else:
            # Up to 5.0: the "Kill process" line named the task chosen; the pid killed can
            # be one of its children ("sacrifice child"), so fall back to any burst waiting.
            burst = (
                self._oldest(lambda b: b.select_pid == kill.pid)
                or self._oldest(lambda b: b.summary is not None and b.summary.pid == kill.pid)
                or self._oldest(lambda b: b.select_pid is not None)
            )
            if burst is None and self._group is not None:
                return self._group_member(kill, line)
            if burst is None:
                burst = self._oldest(lambda b: b.select_pid is None)
        if burst is None:
            # No report open: the daemon started mid-report or its lines were lost.
            return [_build_kill(None, kill, line)]
        self._close(burst, now, kill.pid)
        return [_build_kill(burst, kill, line)]

    def _group_member(self, kill: _Kill, line: KernelLine) -> list[KernelKill]:
        # A pid printed twice in one group kill was killed once (__oom_kill_process() of the
        # chosen victim, then of every member, the victim included): one event.
        if kill.pid in self._group_pids:
            # The kernel counted it again (count_vm_event(OOM_KILL) in each __oom_kill_process()):
            # the second witness must know, or it takes the count as a kill whose line was lost.
            self.repeated.append((line.timestamp_us, kill.pid))
            return []
        self._group_pids.add(kill.pid)
        return [_build_kill(self._group, kill, line, group_member=True, group_cgroup=self._group_cgroup)]

    def _warn_unknown(self, message: str) -> None:
        if message in self._warned:
            return
        if len(self._warned) >= _WARNED_MAX:
            self._warned.clear()
        self._warned.add(message)
        log.warning("a kernel kill line of a shape oom-journal does not know, recorded with its pid and comm "
                    "only: %r", message)

    def _on_exiting(self, msg: str, now: int) -> bool:
        # "<reason>: OOM victim %d (%s) is already exiting. Skip killing the task": the
        # report ends without a kill (__oom_kill_process(), 5.x).
        rest = msg[msg.find(_EXITING_MARKER) + len(_EXITING_MARKER):]
        reason = msg[:msg.find(_EXITING_MARKER)].strip()
        m = _PID_THEN_PAREN_RE.match(rest)
        if not m or not _plausible_reason(reason):
            return False
        pid = _uint(m.group(1))
        burst = self._oldest(lambda b: b.summary is not None and b.summary.pid == pid) or self._oldest(
            lambda b: b.select_pid == pid
        )
        if burst is None and self._group is not None:
            return True  # a member of a memory.oom.group kill
        if burst is None:
            burst = self._oldest(lambda b: b.summary is None and b.select_pid is None)
        if burst is not None:
            # The kernel still kills a memory.oom.group after this line: keep the report.
            self._close(burst, now)
        return True

    def _on_no_killable(self, now: int) -> None:
        # No victim: the report has neither a summary nor a "Kill process" line.
        burst = self._oldest(lambda b: b.summary is None and b.select_pid is None)
        if burst is not None:
            self._close(burst, now)

    def _on_oom_group(self, cgroup: str, now: int) -> None:
        if self._last_closed is not None and abs(now - self._last_closed_us) <= self.burst_timeout_us:
            self._group = self._last_closed
            self._group_us = now
            self._group_pids = {self._last_closed_pid} if self._last_closed_pid is not None else set()
            self._group_cgroup = cgroup


# -- line parsers (pure functions) ------------------------------------------------------------


def _plausible_reason(reason: str) -> bool:
    # 'Out of memory', 'Memory cgroup out of memory', 'Out of memory (oom_kill_allocating_task)'.
    return 0 < len(reason) <= 80 and "out of memory" in reason.lower()


def _parse_unknown_kill(msg: str, start: int, reason: Optional[str]) -> Optional[_Kill]:
    """A kill line of a shape not known: the pid (certain: the kernel's verb and a number), the
    uid if printed before the comm, and the comm: from "(" to the last ")" (or the end)."""
    m = _KILL_VERB_RE.match(msg, start)
    if not m:
        return None
    pid = _uint(m.group(1))
    if pid is None:
        return None
    kill = _Kill(pid=pid, comm="", reason=reason)
    m2 = _KILL_PID_RE.match(msg, start)
    if m2:
        kill.uid = _uint(m2.group(2)) if m2.group(2) else None
        rest = msg[m2.end():]
        close = rest.rfind(")")
        kill.comm = rest[:close] if close != -1 else rest
    return kill


def _parse_kill(msg: str, start: int, reason: Optional[str]) -> Optional[_Kill]:
    m = _KILL_PID_RE.match(msg, start)
    if not m:
        return None
    comm_start = m.end()
    comm_end = max(msg.rfind(end, comm_start) for end in _KILL_COMM_ENDS)
    if comm_end < comm_start:
        return None
    sizes = _KILL_SIZES_RE.match(msg, comm_end + 1)
    if not sizes:
        return None
    pid = _uint(m.group(1))
    if pid is None:
        return None
    uid_first = m.group(2)
    kill = _Kill(
        pid=pid,
        comm=msg[comm_start:comm_end],
        reason=reason,
        uid=_uint(sizes.group(1)) if sizes.group(1) else (_uint(uid_first) if uid_first else None),
        total_vm_kb=_uint(sizes.group(2)),
        anon_rss_kb=_uint(sizes.group(3)),
        file_rss_kb=_uint(sizes.group(4)),
    )
    for name, value, unit in _KILL_FIELD_RE.findall(msg, sizes.end()):
        wants_kb = _KILL_FIELD_UNITS.get(name)
        if wants_kb is None or wants_kb != bool(unit):
            continue
        if name == "shmem-rss":
            kill.shmem_rss_kb = _uint(value)
        elif name == "pgtables":
            kill.pgtables_kb = _uint(value)
        elif name == "UID":
            kill.uid = _uint(value)
        elif name == "oom_score_adj":
            kill.oom_score_adj = _sint(value)
    return kill


def _parse_summary(msg: str) -> Optional[_Summary]:
    body = msg[len(_SUMMARY_PREFIX):]
    if not body.startswith("constraint="):
        return None
    summary = _Summary()
    # Right end: ",pid=%d,uid=%d". Only a line that reaches it is complete; a comm holding
    # ",pid=" stays in task= because the last one is taken.
    cut = body.rfind(",uid=")
    if cut != -1 and _uint(body[cut + 5:]) is not None:
        pid_cut = body.rfind(",pid=", 0, cut)
        if pid_cut != -1 and _uint(body[pid_cut + 5:cut]) is not None:
            summary.complete = True
            summary.uid = _uint(body[cut + 5:])
            summary.pid = _uint(body[pid_cut + 5:cut])
            body = body[:pid_cut]
    found: list = []
    pos = 0
    for name, marker in _SUMMARY_MARKERS:
        if name == "global_oom" and found and found[-1][0] == "oom_memcg":
            continue
        at = body.find(marker, pos)
        if at == -1:
            continue
        found.append((name, at, at + len(marker)))
        pos = at + len(marker)
    values = {}
    for i, (name, _, value_start) in enumerate(found):
        value_end = found[i + 1][1] if i + 1 < len(found) else len(body)
        values[name] = body[value_start:value_end]
    summary.constraint = values.get("constraint") or None
    summary.cpuset = values.get("cpuset")
    summary.mems_allowed = values.get("mems_allowed")
    if "oom_memcg" in values:
        summary.oom_memcg = values["oom_memcg"]
        summary.global_oom = False
    elif "global_oom" in values:
        summary.global_oom = True
    summary.task_memcg = values.get("task_memcg")
    if summary.complete:
        summary.task = values.get("task")
    return summary


def _build_kill(burst: Optional[_Burst], kill: _Kill, line: KernelLine, group_member: bool = False,
                group_cgroup: Optional[str] = None) -> KernelKill:
    reason = kill.reason
    if reason is None:
        reason = burst.select_reason if burst is not None and burst.select_reason else REASON_UNKNOWN
    out = KernelKill(
        reason=reason,
        pid=kill.pid,
        comm=kill.comm,
        timestamp_us=line.timestamp_us,
        seq=line.seq,
        uid=kill.uid,
        total_vm_kb=kill.total_vm_kb,
        anon_rss_kb=kill.anon_rss_kb,
        file_rss_kb=kill.file_rss_kb,
        shmem_rss_kb=kill.shmem_rss_kb,
        pgtables_kb=kill.pgtables_kb,
        oom_score_adj=kill.oom_score_adj,
        kill_message=line.message,
        oom_group=group_cgroup if group_member else None,
    )
    if burst is not None:
        out.trigger_comm = burst.trigger_comm
        out.trigger_pid = burst.trigger_pid
        out.trigger_gfp_mask = burst.trigger_gfp_mask
        out.trigger_order = burst.trigger_order
        out.trigger_oom_score_adj = burst.trigger_oom_score_adj
        out.cpuset = burst.cpuset
        out.mems_allowed = burst.mems_allowed
        out.memcg_usage_kb = burst.memcg_usage_kb
        out.memcg_limit_kb = burst.memcg_limit_kb
        out.oom_memcg = burst.limit_memcg
        # What the report says of the task it chose (its cgroup, its uid) is the victim's
        # only when the pid killed is that task, not a sacrificed child or another member
        # of a memory.oom.group.
        names_victim = not group_member and (burst.select_pid is None or burst.select_pid == kill.pid)
        if names_victim and burst.task_in_memcg is not None:
            out.task_memcg = burst.task_in_memcg
        summary = burst.summary
        if summary is not None:
            out.constraint = summary.constraint
            out.global_oom = summary.global_oom
            if summary.oom_memcg is not None:
                out.oom_memcg = summary.oom_memcg
            if summary.cpuset is not None:
                out.cpuset = summary.cpuset
            if summary.mems_allowed is not None:
                out.mems_allowed = summary.mems_allowed
            if not group_member and summary.complete and summary.pid == kill.pid:
                out.task_memcg = summary.task_memcg
                if out.uid is None:
                    out.uid = summary.uid
    if out.constraint is None and reason == REASON_MEMCG:
        out.constraint = "CONSTRAINT_MEMCG"
    return out
