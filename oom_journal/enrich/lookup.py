"""Which command line belongs to a kill: the victim-lookup policy.

The process cache (procs.cache) answers for a pid and comm, the pid-namespace matcher
(procs.pidns) for a comm and cgroup; this decides which to ask, and whether the cache can still
vouch for an answer: not for a kill read long after it happened, not for a process that started
after the kill (its start time and the kill line's timestamp put on one clock).
"""
from __future__ import annotations

import time
from typing import Callable

from oom_journal.model import KernelKill
from oom_journal.procs.cache import NOT_FOUND, CmdlineLookup, ProcessCache
from oom_journal.procs.pidns import lookup_by_cgroup
from oom_journal.procs.procfs import started_after, suspended_us


def find_cmdline(kill: KernelKill, cache: ProcessCache, *, exit_grace: float, proc_root: str,
                 initial_pid_namespace: bool,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> CmdlineLookup:
    """The victim's command line, if the cache can still vouch for it.

    A kill read long after it happened (a backlog after a restart) is older than anything
    the cache keeps of exited processes (exit_grace seconds); an entry for its pid now belongs
    to a process that got the pid later. The cache is not asked, so no wrong command line is
    given and no lookup waits for the connector once per historic kill. monotonic_ns is
    CLOCK_MONOTONIC, the kernel log's clock; proc_root the /proc whose uptime tells the time
    suspended; initial_pid_namespace whether the kill line's pids are this /proc's.
    """
    now_us = monotonic_ns() // 1000
    age = (now_us - kill.timestamp_us) / 1e6
    if age > exit_grace:
        return CmdlineLookup(None, NOT_FOUND, note=f"the kill was read {age:.0f} s after it happened (oom-journal "
                                                   "was not running); its process was gone by then")
    if not initial_pid_namespace:
        # The kill line's pid is the host's; this /proc numbers processes otherwise (a container
        # process with the victim's number would lend it its command line: reproduced).
        return lookup_by_cgroup(cache, kill.comm, kill.task_memcg, kill.timestamp_us,
                                suspended=suspended_us(proc_root, monotonic_ns))
    found = cache.lookup(kill.pid, kill.comm)
    if found.argv is not None and found.start_time is not None:
        # /proc/PID/stat's start time counts the time suspended (CLOCK_BOOTTIME), the kernel
        # log's clock does not (see procfs.suspended_us): put both on the log's clock. A
        # process that started after the kill line (plus the ticks' rounding) is not the victim.
        if started_after(found.start_time, kill.timestamp_us, suspended_us(proc_root, monotonic_ns)):
            return CmdlineLookup(None, NOT_FOUND, note=f"pid {kill.pid} now belongs to a process that started "
                                                       "after the kill")
    return found
