"""A userspace OOM killer's kill (parse.userspace.KillerAction) -> events of the same document as
the kernel's, with `killer` set and the victims' command lines from the process cache.

- earlyoom and nohang name the pid: the cache is asked as for a kernel kill (enrich.lookup), so
  the command line is the exact argv read at exec, not the cut one they print.
- systemd-oomd names a cgroup and SIGKILLs every process in it: the victims are the processes of
  that cgroup (or below it) whose exit the connector reported as a SIGKILL around its line
  (procs.cache.killed_since(): each with its comm, command line and cgroup). Its line reaches the
  journal after the kills (oomd logs once cg_kill_recursive() returned), and is read 250 ms or more
  later (journald's inotify), so the exits are in by then. PID 1's `systemd-oomd killed N
  process(es) in this unit.` comes once the unit's cgroup is empty (PID 1 reads the count oomd
  left in the cgroup's user.oomd_kill xattr): exits not seen at oomd's line are looked for again
  then, and kills it counts that no exit accounts for become one entry that says how many
  (unseen_kills, as the second witness's), with the unit but no victim.

Event ids (stable across restarts: every part is read from the journal or the kernel):
`<boot>-<killer>-<killer entry's __MONOTONIC_TIMESTAMP µs>-<pid>`; oomd's kills PID 1 counted
that no exit accounts for: `<boot>-systemd-oomd-<oomd entry's µs>-unseen`. A restart re-reads
this boot's killer lines (the first start of a boot reads its log from the start) with a fresh
cache, which knows none of the exits: an oomd kill any of whose events is recorded already is
not recorded again (recorded_prefix()).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from oom_journal.enrich.cgroup import describe_cgroup
from oom_journal.enrich.event import OomEvent
from oom_journal.enrich.lookup import find_cmdline
from oom_journal.model import KILLER_OOMD, HostInfo, KernelKill
from oom_journal.parse.userspace import KillerAction
from oom_journal.procs.cache import CmdlineLookup, Killed, ProcessCache
from oom_journal.procs.procfs import decode_comm, split_cmdline

log = logging.getLogger(__name__)

# The exits of oomd's victims around its line: cg_kill_recursive() sends the SIGKILLs and then
# oomd logs, so the exits come after the kill and before or just after the log line (a victim
# in the kernel, D state, later). journald stamps the line when it receives it.
OOMD_EXITS_BEFORE_US = 5_000_000
OOMD_EXITS_AFTER_US = 30_000_000
# PID 1's count of a kill: after the unit's cgroup emptied, which a stuck victim delays.
PID1_COUNT_WITHIN_US = 120_000_000


def userspace_event_id(boot_id: str, killer: str, entry_us: int, pid: object) -> str:
    return f"{boot_id}-{killer}-{entry_us}-{pid}"


def in_cgroup(path: Optional[str], cgroup: str) -> bool:
    return path is not None and (path == cgroup or path.startswith(cgroup.rstrip("/") + "/"))


class _OomdKill:
    def __init__(self, action: KillerAction):
        self.action = action
        self.unit = describe_cgroup(action.cgroup).unit
        self.victims: set = set()  # (pid, exit_ns) recorded


class UserspaceKills:
    def __init__(self, cache: ProcessCache, host: HostInfo, *, exit_grace: float, proc_root: str = "/proc",
                 initial_pid_namespace: bool = True, containers=None,
                 recorded_prefix: Callable[[str], bool] = lambda prefix: False,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns):
        self.cache = cache
        self.host = host
        self.exit_grace = exit_grace
        self.proc_root = proc_root
        self.initial_pid_namespace = initial_pid_namespace
        self.containers = containers
        self.recorded_prefix = recorded_prefix
        self.monotonic_ns = monotonic_ns
        self.oomd_kills: list = []  # recent oomd kills, for PID 1's count
        self.taken: set = set()  # (pid, exit_ns) of SIGKILL exits recorded as userspace kills

    def events(self, action: KillerAction) -> list:
        if action.killer == KILLER_OOMD:
            if action.n_processes is not None:
                return self._pid1_count(action)
            return self._oomd(action)
        return [self._one_pid(action)]

    # --- earlyoom, nohang ------------------------------------------------------------------
    def _kill(self, action: KillerAction, pid: int, comm: str, cgroup: Optional[str] = None) -> KernelKill:
        return KernelKill(reason=action.reason, pid=pid, comm=comm, timestamp_us=action.timestamp_us,
                          uid=action.uid, task_memcg=cgroup, killer=action.killer, killer_message=action.message)

    def _one_pid(self, action: KillerAction) -> OomEvent:
        assert action.pid is not None
        kill = self._kill(action, action.pid, action.comm or "", action.cgroup)
        found = find_cmdline(kill, self.cache, exit_grace=self.exit_grace, proc_root=self.proc_root,
                             initial_pid_namespace=self.initial_pid_namespace, monotonic_ns=self.monotonic_ns)
        event = OomEvent.build(kill, self.host, found, containers=self.containers)
        event.event_id = userspace_event_id(self.host.boot_id, action.killer, action.timestamp_us, action.pid)
        return event

    # --- systemd-oomd ----------------------------------------------------------------------
    def _exits(self, kill: _OomdKill) -> list:
        a = kill.action
        since = (a.timestamp_us - OOMD_EXITS_BEFORE_US) * 1000
        until = (a.timestamp_us + OOMD_EXITS_AFTER_US) * 1000
        return [k for k in self.cache.killed_since(max(0, since))
                if k.exit_ns <= until and in_cgroup(k.cgroup, a.cgroup or "") and (k.pid, k.exit_ns) not in self.taken]

    def _oomd(self, action: KillerAction) -> list:
        kill = _OomdKill(action)
        self.oomd_kills = [k for k in self.oomd_kills
                           if action.timestamp_us - k.action.timestamp_us < PID1_COUNT_WITHIN_US] + [kill]
        events = [self._from_exit(kill, k) for k in self._exits(kill)]
        if not events:
            log.info("systemd-oomd killed %s; no SIGKILL exit of it seen (yet): PID 1's count decides", action.cgroup)
        return events

    def _from_exit(self, kill: _OomdKill, k: Killed) -> OomEvent:
        comm = decode_comm(k.comm) or ""
        argv = split_cmdline(k.cmdline)
        lookup = CmdlineLookup(argv, k.source if argv else "not-found", k.start_time, comm,
                               "" if argv else "the cache had no command line of it", k.cgroup)
        event = OomEvent.build(self._kill(kill.action, k.pid, comm, k.cgroup), self.host, lookup,
                               containers=self.containers)
        event.event_id = userspace_event_id(self.host.boot_id, KILLER_OOMD, kill.action.timestamp_us, k.pid)
        kill.victims.add((k.pid, k.exit_ns))
        self.taken.add((k.pid, k.exit_ns))
        return event

    def _pid1_count(self, count: KillerAction) -> list:
        n = count.n_processes or 0
        kill = next((k for k in reversed(self.oomd_kills) if k.unit == count.unit
                     and 0 <= count.timestamp_us - k.action.timestamp_us < PID1_COUNT_WITHIN_US), None)
        if kill is None:
            log.warning("PID 1 says systemd-oomd killed %d process(es) of %s, but no line of systemd-oomd's "
                        "about it was read", n, count.unit)
            return []
        self.oomd_kills.remove(kill)
        events = [self._from_exit(kill, k) for k in self._exits(kill)]
        left = n - len(kill.victims)
        if left < 0:
            log.warning("systemd-oomd killed %s: %d SIGKILL exits seen there, PID 1 counted %d", kill.action.cgroup,
                        len(kill.victims), n)
        if left <= 0:
            return events
        prefix = userspace_event_id(self.host.boot_id, KILLER_OOMD, kill.action.timestamp_us, "")
        if not kill.victims and self.recorded_prefix(prefix):
            return events  # recorded by an earlier run of this boot, whose cache saw the exits
        events.append(self._unseen(kill, left))
        return events

    def _unseen(self, kill: _OomdKill, n: int) -> OomEvent:
        a = kill.action
        event = OomEvent.build(self._kill(a, 0, "", a.cgroup), self.host, None, containers=self.containers)
        event.event_id = userspace_event_id(self.host.boot_id, KILLER_OOMD, a.timestamp_us, "unseen")
        event.unseen_kills = n
        event.witness_note = (f"PID 1 counted {n} process{'es' if n != 1 else ''} systemd-oomd killed in {a.cgroup} "
                              "whose SIGKILL exit oom-journal did not see (it was not running then, or without "
                              "process events)")
        return event
