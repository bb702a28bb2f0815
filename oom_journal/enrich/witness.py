"""The second witness: OOM kills the kernel counted whose kill line the daemon never read.

A kill line can be lost: /dev/kmsg's 128 KiB buffer overrun before the reader came (one global
report with its task table of a big machine is larger than that), journald's `Missed N kernel
messages`, a journald stopped or busy while the kernel went on. The kernel still counted the
kill (sources.oom_counters: /proc/vmstat oom_kill, the victim's memory cgroup's oom_kill) and
the process-event connector still said the victim exited of SIGKILL (procs.cache.killed_since).

How a missing kill is found: kill lines seen since the daemon read /proc/vmstat first (any
path: the source, or the journal source's /dev/kmsg doorbell) are counted; when the counter has
risen by more than that and stays so for `settle` seconds (the source's normal lateness), the
difference is missing. Each is then identified, oldest first, among the SIGKILL exits since the
count began that no kill line named, in a memory cgroup whose own oom_kill counter rose (on the
first reading of a cgroup's counter: is above zero; on cgroup v2, a cgroup removed since, as
systemd removes a unit's when it is empty, by its nearest remaining ancestor's counter, which
counted the kill too: sources.oom_counters); what the cache held of it (comm, command line,
cgroup) is the entry. A kill -9 by a user raises no counter: a SIGKILL exit in a cgroup
whose counter did not rise is not taken. What is left is one entry saying how many kills the
kernel made that the daemon could not see, and in which cgroups the SIGKILL exits of that time
were, if any.

Event ids (see also enrich.event.make_event_id): a kill line's kill is `<boot id>-<kill line's
kernel timestamp µs>-<pid>`, whichever path read it (the doorbell's copy has the journal's timestamp),
so a kill recorded from the doorbell and read later from the journal is one event. A kill found
by the counters and an exit has no kill line: `<boot id>-lost-<pid>-<exit event's timestamp µs>`
(the kernel's ktime of the exit: the same for any reader, and no pid exits twice in one µs); a
kill line that comes later for that pid within LATE_LINE_WINDOW of the exit is the same kill
(late_line()): the daemon writes one more entry under that id, OOM_KERNEL_REPORT=late, with the
kernel's report the first entry lacked (a completion, not a second kill). The unidentified ones:
`<boot id>-unseen-<first>-<last>`, the kernel's own numbers of those kills (vmstat oom_kill
values), which no other kill shares. A kill line that comes later, of the time such an entry
covers (after the accounting point it counted from, before the reading that found the kills
missing) and not read then, is one of its kills (unseen_line()): it is recorded as itself (the
victim is known now) with OOM_COMPLETES=<the unseen id>, and `list` counts one kill fewer there.
Why not wait, instead, until the source has read past the counter's rise before calling a kill
unseen: the source is what stalls (journald stopped or busy is the very case), and a witness
that waited for it would record nothing until journald came back, or never if it missed the line.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from oom_journal.enrich.event import KERNEL_REPORT_LATE, OomEvent
from oom_journal.model import HostInfo, KernelKill
from oom_journal.parse.oom_report import REASON_UNKNOWN
from oom_journal.procs.cache import CmdlineLookup, Killed, ProcessCache
from oom_journal.procs.procfs import decode_comm, split_cmdline
from oom_journal.sources.oom_counters import CgroupCounters, vmstat_oom_kills

log = logging.getLogger(__name__)

KERNEL_REPORT_LOST = "lost"
__all__ = ["KERNEL_REPORT_LATE", "KERNEL_REPORT_LOST", "SecondWitness", "lost_event_id"]
UNSEEN_KEPT = 64  # unseen entries whose kills a late kill line may still name (in memory)
WITNESS_KMSG = "kmsg"  # the kill line, read from /dev/kmsg as the journal source's doorbell
WITNESS_EXIT = "exit"  # the counters and the connector's SIGKILL exit
WITNESS_COUNTER = "counter"  # the counters alone: the victim is unknown
# A kill line and its victim's exit event: the exit comes after the kill line (do_exit() runs
# once the SIGKILL is delivered), within milliseconds unless the victim is stuck in the kernel.
LATE_LINE_WINDOW_US = 60_000_000
CHECK_EVERY = 1.0  # seconds between readings of /proc/vmstat while nothing is missing
# ... when the process cache has the connector's exit events: every OOM kill's victim dies of
# SIGKILL, and the daemon reads the counters at once when one does (saw_sigkill_exit()), so the
# periodic reading is only for a kill whose exit event was lost too. Each wake-up of the idle
# daemon costs ~1 ms of CPU here (a VM): once a second was 0.1 % of a core for nothing.
CHECK_EVERY_WITH_EXITS = 5.0
CHECK_MISSING_EVERY = 0.25  # ... while the counter is ahead of the lines seen
MAX_ACCOUNTED_LINES = 4096  # a journal copy comes within seconds of the doorbell's: plenty


class SecondWitness:
    """Counts kill lines against the kernel's counters; finds the missing kills' victims."""

    def __init__(self, cache: ProcessCache, host: HostInfo, *, proc_root: str = "/proc",
                 counters: Optional[CgroupCounters] = None, settle: float = 3.0, saved: Optional[tuple] = None,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns, clock: Callable[[], float] = time.monotonic):
        """saved: (counted, since_ns), the accounting point a run before this one saved in this boot
        (point()): the kills since then whose kill line the source no longer has are found too."""
        self.cache = cache
        self.host = host
        self.proc_root = proc_root
        self.counters = counters if counters is not None else CgroupCounters()
        self.settle = settle
        self.monotonic_ns = monotonic_ns
        self.clock = clock
        self.base_ns = monotonic_ns()
        self.base = vmstat_oom_kills(proc_root)  # None: no counter (before 4.13): no witness
        if saved is not None and self.base is not None and saved[0] <= self.base:
            self.base, self.base_ns = saved
        self.point_changed = True  # a new accounting point for the state database (the first: now)
        # Kill lines since base_ns, each once whichever path read it: (timestamp µs, pid, 0) -> None,
        # and (timestamp µs, pid, 1) for a memory.oom.group line repeating a pid's kill (counted
        # again by the kernel). The pid is in the key: one group kill's lines can share a µs
        # (enrich.event.make_event_id).
        self.seen: dict = {}
        # Timestamps of kill lines already counted in base (bounded): the kernel stamps its lines
        # with local_clock(), which may run ahead of CLOCK_MONOTONIC (measured in the Debian 12
        # guest: up to 18 ms), so a line counted before a rebase can carry a time after base_ns;
        # read again (the journal's copy) it must not count for the next kill.
        self.accounted_lines: dict = {}  # keys as seen's
        self.accounted = 0  # missing kills already recorded (identified or not)
        self.lost_kills: dict = {}  # pid -> exit µs of kills recorded from an exit
        self.taken: set = set()  # (pid, exit_ns) of SIGKILL exits recorded as kills
        self.cgroup_seen: dict = {}  # cgroup -> its oom_kill when last taken from
        self.missing_since: Optional[float] = None
        self.next_check = clock()
        self.identified = 0  # for STATUS
        self.unseen = 0
        self.unconfirmed: list = []  # SIGKILL exits of the last identification no counter confirmed
        # Unseen entries of this run: [event id, from ns, to ns, kills not yet named by a late
        # kill line, keys (as seen's) of the kill lines read by then]; the newest UNSEEN_KEPT.
        self.unseen_windows: list = []

    @property
    def available(self) -> bool:
        return self.base is not None

    def _exits_seen(self) -> bool:
        active = getattr(self.cache, "events_active", None)
        return bool(active is not None and active())

    def saw_sigkill_exit(self) -> None:
        """A process died of SIGKILL (the cache's killed_fd): an OOM kill's victim, maybe: read the
        counter now (a kill line read meanwhile accounts for it; one never read is missing)."""
        self.next_check = min(self.next_check, self.clock())

    def saw_kill_line(self, kill: KernelKill) -> None:
        """A kill line was read (by any path); counted once per kernel timestamp and pid."""
        key = (kill.timestamp_us, kill.pid, 0)
        if kill.timestamp_us * 1000 >= self.base_ns and key not in self.accounted_lines:
            self.seen[key] = None
        self.next_check = min(self.next_check, self.clock())  # read the counter now

    def remember_recorded(self, event_ids) -> None:
        """Event ids of this boot already in the journal: the kills recorded from an exit among them
        (`<boot>-lost-<pid>-<exit µs>`) are matched by late_line() too."""
        prefix = self.host.boot_id + "-lost-"
        for event_id in event_ids:
            if event_id.startswith(prefix):
                pid, _, exit_us = event_id[len(prefix):].partition("-")
                if pid.isdigit() and exit_us.isdigit():
                    self.lost_kills[int(pid)] = int(exit_us)

    def saw_repeated_line(self, timestamp_us: int, pid: int) -> None:
        """A memory.oom.group kill line printed again for a pid already killed (one event, but the
        kernel's counters counted it twice: __oom_kill_process() ran twice)."""
        key = (timestamp_us, pid, 1)
        if timestamp_us * 1000 >= self.base_ns and key not in self.accounted_lines:
            self.seen[key] = None

    def late_line(self, kill: KernelKill) -> Optional[str]:
        """The event id of the kill recorded from an exit that this (late) kill line reports, or None."""
        exit_us = self.lost_kills.get(kill.pid)
        if exit_us is None or not -1_000_000 <= exit_us - kill.timestamp_us <= LATE_LINE_WINDOW_US:
            return None
        return lost_event_id(self.host.boot_id, kill.pid, exit_us)

    def unseen_line(self, kill: KernelKill) -> Optional[str]:
        """The id of the unseen entry one of whose kills this (late) kill line names, or None.
        Each such entry is named at most as many times as it counted kills."""
        ts_ns = kill.timestamp_us * 1000
        for window in self.unseen_windows:
            event_id, start_ns, end_ns, left, read = window
            key = (kill.timestamp_us, kill.pid, 0)
            if left > 0 and start_ns <= ts_ns < end_ns and key not in read:
                window[3] -= 1
                read.add(key)
                return event_id
        return None

    def wake_at(self) -> Optional[float]:
        return self.next_check if self.available else None

    def check(self, busy: bool = False) -> list:
        """Events for the kills counted and not seen, once they stayed missing `settle` seconds.
        busy: the source has lines not parsed yet (their kill lines may be among them)."""
        now = self.clock()
        if not self.available or now < self.next_check:
            return []
        now_ns = self.monotonic_ns()  # before the count: a kill after it is counted again, not missed
        count = vmstat_oom_kills(self.proc_root)
        if count is None or self.base is None:
            return []
        missing = (count - self.base) - len(self.seen) - self.accounted
        if missing <= 0:
            self.missing_since = None
            self.next_check = now + (CHECK_EVERY_WITH_EXITS if self._exits_seen() else CHECK_EVERY)
            if count != self.base:
                self._rebase(count, now_ns)
            return []
        self.next_check = now + CHECK_MISSING_EVERY
        if self.missing_since is None:
            self.missing_since = now
            return []
        if busy or now - self.missing_since < self.settle:
            return []
        self.missing_since = None
        events = self._identify(missing)
        left = missing - len(events)
        if left > 0:
            unseen = self._unseen(count - left + 1, count, left)
            events.append(unseen)
            # The kills it counts happened after base_ns (the counter was read then) and before
            # now_ns (read now); the kill lines read meanwhile are not theirs.
            self.unseen_windows.append([unseen.event_id, self.base_ns, now_ns, left, set(self.seen)])
            del self.unseen_windows[:-UNSEEN_KEPT]
        self.accounted += missing
        self._rebase(count, now_ns)
        return events

    def _rebase(self, count: int, now_ns: int) -> None:
        """Every kill up to `count` is accounted for: count from here (point())."""
        self.base, self.base_ns = count, now_ns
        # Every line seen so far was read before `count` was (one thread), and the kernel counts a
        # kill before it prints its line (__oom_kill_process(): count_vm_event(OOM_KILL), then
        # pr_err): all of them are in `count`, whatever their timestamps.
        self.accounted_lines.update(self.seen)
        while len(self.accounted_lines) > MAX_ACCOUNTED_LINES:
            del self.accounted_lines[next(iter(self.accounted_lines))]
        self.seen = {}
        self.accounted = 0
        self.point_changed = True

    def point(self) -> Optional[tuple]:
        """(counted, since_ns): the accounting point to save, for a later run of this boot."""
        return None if self.base is None else (self.base, self.base_ns)

    def _identify(self, missing: int) -> list:
        # The kill lines read: since the accounting point, and those accounted for before it. The
        # kernel counts a kill, sends SIGKILL and prints the line; the victim's exit event is
        # stamped at the end of do_exit(), after exit_mm() has freed its memory. So a kill can be
        # seen and accounted for, and the point moved on, before its victim's exit time, which
        # then lies after the point while its line is no longer in `seen`. In the Debian 12
        # guest (tests/test_vm.py) such an exit was taken for the next missing kill: recorded
        # twice, and the lost kill not at all (test_witness.py has the sequence).
        named: dict = {}  # pid -> the timestamps of its kill lines
        for lines in (self.seen, self.accounted_lines):
            for ts, pid, _ in lines:
                named.setdefault(pid, []).append(ts)
        rose: dict = {}  # cgroup -> kills its counter has that no taken exit explains
        events: list = []
        unconfirmed: list = []
        for k in self.cache.killed_since(self.base_ns):
            if len(events) >= missing:
                break
            if (k.pid, k.exit_ns) in self.taken:
                continue
            exit_us = k.exit_ns // 1000
            if any(-1_000_000 <= exit_us - ts <= LATE_LINE_WINDOW_US for ts in named.get(k.pid, ())):
                continue  # its kill line was read: not a missing kill
            # The counter of its cgroup, or (v2, the cgroup removed since: systemd removes a unit's
            # as soon as it is empty) of its nearest ancestor, which counted the kill too.
            found = self.counters.counter(k.cgroup)
            if found is None:
                unconfirmed.append(k)
                continue
            counted, now = found
            if counted not in rose:
                rose[counted] = now - self.cgroup_seen.get(counted, 0)
                self.cgroup_seen[counted] = now
            if not rose[counted]:
                unconfirmed.append(k)
                continue
            rose[counted] -= 1
            self.taken.add((k.pid, k.exit_ns))
            self.lost_kills[k.pid] = exit_us
            events.append(self._from_exit(k, counted))
        self.unconfirmed = unconfirmed
        return events

    def _from_exit(self, k: Killed, counted: Optional[str] = None) -> OomEvent:
        comm = decode_comm(k.comm) or ""
        kill = KernelKill(reason=REASON_UNKNOWN, pid=k.pid, comm=comm, timestamp_us=k.exit_ns // 1000,
                          task_memcg=k.cgroup)
        argv = split_cmdline(k.cmdline)
        lookup = CmdlineLookup(argv, k.source if argv else "not-found", k.start_time, comm,
                               "" if argv else "the cache had no command line of it", k.cgroup)
        event = OomEvent.build(kill, self.host, lookup)
        event.event_id = lost_event_id(self.host.boot_id, k.pid, k.exit_ns // 1000)
        event.kernel_report = KERNEL_REPORT_LOST
        event.witness = WITNESS_EXIT
        if counted is None or counted == k.cgroup:
            where = f"its memory cgroup {k.cgroup}'s oom_kill counter rose"
        else:
            where = (f"its memory cgroup {k.cgroup} was removed since and its ancestor {counted}'s oom_kill "
                     "counter rose (cgroup v2 counts a kill in every ancestor)")
        event.witness_note = (f"its kill line was never read; /proc/vmstat oom_kill rose, {where}, "
                              f"and the process-events connector reported "
                              f"pid {k.pid} exiting of SIGKILL; time, pid, comm, cgroup and command line are the "
                              "exit's and the process cache's")
        self.identified += 1
        log.warning("an OOM kill whose kill line was lost, identified from the counters and the exit of pid %d (%s)",
                    k.pid, comm)
        return event

    def _unseen(self, first: int, last: int, n: int) -> OomEvent:
        where = sorted({k.cgroup for k in self.unconfirmed if k.cgroup})
        kill = KernelKill(reason=REASON_UNKNOWN, pid=0, comm="", timestamp_us=self.monotonic_ns() // 1000,
                          task_memcg=where[0] if len(where) == 1 else None)
        event = OomEvent.build(kill, self.host, None)
        event.event_id = f"{self.host.boot_id}-unseen-{first}-{last}"
        event.kernel_report = KERNEL_REPORT_LOST
        event.witness = WITNESS_COUNTER
        event.unseen_kills = n
        note = (f"/proc/vmstat oom_kill counted {n} kill{'s' if n != 1 else ''} (its numbers {first}-{last}) whose "
                "kill line was never read, and no SIGKILL exit in a cgroup whose oom_kill counter rose accounts "
                "for it")
        if where:
            note += "; processes died of SIGKILL meanwhile in " + ", ".join(where)
        event.witness_note = note
        self.unseen += n
        log.warning("the kernel made %d OOM kill%s that oom-journal could not see", n, "s" if n != 1 else "")
        return event


def lost_event_id(boot_id: str, pid: int, exit_us: int) -> str:
    return f"{boot_id}-lost-{pid}-{exit_us}"
