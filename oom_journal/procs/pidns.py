"""In a pid namespace of its own: the victim matched by name and memory cgroup, not by pid.

In a container the kernel's kill line names the victim by its pid in the initial pid namespace,
which this /proc does not show, and there are no exec events (cn_proc serves only listeners in
the initial pid namespace). So the victim is chosen among the processes the cache's /proc scan
saw (ProcessCache.seen_as()), by the comm and memory cgroup the kernel printed, and by which of
them died at the kill.
"""
from __future__ import annotations

import time
from typing import Optional, Union

from oom_journal.procs.cache import NOT_FOUND, CmdlineLookup, ProcessCache, Seen
from oom_journal.procs.procfs import (
    decode_comm,
    kernel_comm,
    read_cmdline,
    read_stat,
    show_comm,
    split_cmdline,
    started_after,
)

# How often a candidate's /proc entry is looked at while waiting for it to die.
_DEATH_POLL = 0.005


def cgroup_ends(kernel_path: str, ns_path: str) -> bool:
    """Whether `ns_path`, a cgroup as a cgroup namespace shows it (/proc/PID/cgroup inside a
    container: relative to the namespace's root), can be the cgroup the kernel printed as
    `kernel_path` (always from the hierarchy's root: cgroup_path(), kernfs_path()): the kernel's
    path ends with it at a component boundary. The namespace's root ("/") is refused: it would
    match every cgroup of the machine, and the namespace's own place in the hierarchy is not
    shown inside it."""
    if not ns_path.startswith("/") or ns_path == "/" or ns_path.startswith("/.."):
        return False
    return kernel_path == ns_path or kernel_path.endswith(ns_path)


def lookup_by_cgroup(cache: ProcessCache, comm: Union[str, bytes], kernel_cgroup: Optional[str],
                     killed_us: int, wait: float = 0.5, suspended: int = 0) -> CmdlineLookup:
    """The victim's command line when its pid cannot be looked up (see the module's docstring).

    The victim is the one process the cache saw whose comm is the kernel's, whose memory
    cgroup (as this cgroup namespace shows it) ends the kernel's path for the victim's, that
    was not seen gone before the kill nor started after it, and that has died: the kernel
    sends SIGKILL before it prints the kill line, so the victim dies first; a process of the
    same name and cgroup that still runs is not it. Candidates that still run are watched
    for up to `wait` seconds. Several dead ones: which one is unknown, none is given.
    killed_us is the kill line's timestamp (CLOCK_MONOTONIC); suspended: µs this boot was
    suspended (procfs.suspended_us()), to put the start times (CLOCK_BOOTTIME) on that clock.
    """
    if not kernel_cgroup:
        return CmdlineLookup(None, NOT_FOUND, note="the kernel did not name the victim's cgroup (its report "
                                                   "is rate-limited to 10 in 5 s), and in a pid namespace the "
                                                   "victim can only be matched by name and cgroup")
    kcomm = kernel_comm(comm)
    killed_ns = killed_us * 1000
    # Processes born since the last scan: the victim may be young (a scan reads new pids only).
    cache.rescan(timeout=wait)
    candidates = [p for p in cache.seen_as(kcomm)
                  if p.cgroup is not None and cgroup_ends(kernel_cgroup, p.cgroup)
                  and (p.gone_ns is None or p.gone_ns >= killed_ns)
                  and (p.start_time is None or not started_after(p.start_time, killed_us, suspended))]
    where = f"{show_comm(kcomm)} in a cgroup ending {kernel_cgroup}"
    if not candidates:
        return CmdlineLookup(None, NOT_FOUND, note=f"no process {where} was seen by the /proc scan (in a pid "
                                                   "namespace, processes that live less than a scan are not)")
    deadline = time.monotonic() + wait
    while True:
        dead = [p for p in candidates if p.gone_ns is not None or _has_died(cache.proc_root, p)]
        if len(dead) == 1:
            p = dead[0]
            return CmdlineLookup(split_cmdline(p.cmdline), p.source, p.start_time, decode_comm(p.comm),
                                 "matched by name and cgroup: in a pid namespace the kernel's pid is not "
                                 f"this namespace's (here it was {p.pid})", p.cgroup)
        if dead:
            return CmdlineLookup(None, NOT_FOUND, note=f"{len(dead)} processes {where} died at the time of the "
                                                       "kill: which one was the victim is unknown")
        if time.monotonic() >= deadline:
            return CmdlineLookup(None, NOT_FOUND, note=f"{len(candidates)} process(es) {where} still ran "
                                                       f"{wait:g} s after the kill: none was the victim")
        time.sleep(_DEATH_POLL)


def _has_died(proc_root: str, p: Seen) -> bool:
    """Whether process p is gone or exiting: its pid gone or another process's, a zombie, or its
    cmdline emptied (exit_mm(), early in do_exit())."""
    base = f"{proc_root}/{p.pid}"
    try:
        stat = read_stat(base + "/stat")
        if stat is None or stat.start_time != p.start_time or stat.state in (b"Z", b"X"):
            return True
        return not read_cmdline(base + "/cmdline", 0)
    except OSError:
        return False  # unreadable is not dead
