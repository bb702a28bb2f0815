"""A cache of every process's command line, to name an OOM victim after it is gone.

The kernel's kill line names the victim by pid and 15-byte comm only, and by the time the
line is read /proc/PID/cmdline is gone. So the cache reads each process's cmdline while it
lives: at its exec, told by the process-events connector (procs.connector), and behind that
with an incremental scan of /proc, which is the whole mechanism when the connector is not
available (containers, old kernels without CAP_NET_ADMIN).

Entries are keyed by pid and stamped with the process's start time (field 22 of
/proc/PID/stat) and the CLOCK_MONOTONIC time at which they were read, so that a recycled pid
never inherits a stale command line and a late event never overwrites a fresher read.
Everything that changes the cache runs on one thread: start()'s first scan, then the
background thread (events and periodic scans); lookup() only reads, under the lock.
The kernel does not send the exits of processes that ended without a signal (procs.event_filter:
no killer ends a process that way, and in an exec storm they were a third of the events): such
an entry is marked exited by the next scan, and a lookup sees the pid gone from /proc meanwhile.
The files are read by procs.procfs; in a pid namespace of its own the daemon matches a victim
among the cache's entries by name and cgroup instead (procs.pidns, through seen_as()).
"""
from __future__ import annotations

import collections
import logging
import math
import os
import select
import threading
import time
from oom_journal.records import dataclass
from typing import Any, Callable, Deque, List, NamedTuple, Optional, Tuple, Union

from oom_journal.procs.connector import (
    CommEvent,
    ConnectorUnavailable,
    EventsLost,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
)
from oom_journal.procs.procfs import (
    CLOCK_TICKS,
    KERNEL_COMM_LEN,
    PF_KTHREAD,
    decode_comm,
    kernel_comm,
    read_exec_files,
    read_process,
    read_stat,
    show_comm,
    split_cmdline,
)

log = logging.getLogger(__name__)

SOURCE_EXEC = "exec-event"
SOURCE_FORK = "fork"
SOURCE_SCAN = "scan"
SOURCE_PROC = "proc"
NOT_FOUND = "not-found"

# Why an entry has no argv.
_NOTE_EMPTY = "its command line was empty when read (a kernel thread, or a process already exiting)"
_NOTE_EXEC_GONE = "it exited before its command line could be read after its exec"
_NOTE_TOO_LARGE = "its command line is larger than max_cmdline_bytes"

# During a scan, drain the connector every this many /proc reads, so that a long scan (a
# host with 30,000 processes) does not hold back exec events until the victims are gone.
_SCAN_DRAIN_EVERY = 128
# A drain returns to the main loop after this many datagrams even if more are queued, so
# that periodic scans and stop() are not starved by an endless storm.
_DRAIN_BUDGET = 4096
# In a storm (events again within _STORM_GAP of the last drain that applied some), the thread
# waits this long after each drain, so that events are read in batches rather than a few per
# wakeup: on this VM each wakeup of the thread costs ~110 us of its CPU time beyond the events
# it handles (cold caches, the timer and the reschedule IPI), which at 1,000 fork+exec+exit/s
# was most of the cost. Measured with bench/run's storm (/bin/sleep 0.005 via posix_spawn at
# 1,000/s, 8 s, the daemon's utime+stime per exec, under the load of two other jobs): 89-93 us
# with 2 ms, 61-84 with 5 ms, 56-66 with 8 ms. A lookup does not wait for it (the wait ends
# when a barrier wakes the thread), and an exec out of a storm is read at once (a victim that
# lived 1.5 ms was missed during a first start's catch-up, bench/run); in a storm an exec is
# read up to ~12 ms after it: victims that live longer than that keep their command lines
# (the target is ~50 ms), shorter-lived ones in a storm may not (bench/run reports them).
# 12 ms rather than 8 since the connector's filter and the barrier's single wake-up: a bench-like
# storm (1,000 execs/s of ~5 ms processes, 10 kills in 10 s, the cache thread's CPU per exec)
# gave 41-47 us with 12 ms, 53-59 with 8 ms (runs interleaved), and ~5 ms victims killed in it
# kept their command lines as often (11/12, 12/12).
_BATCH_WAIT = 0.012
_BATCH_WAIT_MS = round(_BATCH_WAIT * 1000)
_STORM_GAP_NS = 2_000_000
# Clock ticks of stat's start time (field 22), in ns: a fork event's timestamp (CLOCK_MONOTONIC)
# plus the time suspended (CLOCK_BOOTTIME - CLOCK_MONOTONIC) is its child's start, give or take
# the microseconds between copy_process() and proc_fork_connector(): one tick at most, later.
_NS_PER_TICK = 1_000_000_000 // CLOCK_TICKS
# Without exec events a scan cannot see an exec: /proc/PID keeps its inode, so a fork read before
# its exec would keep its parent's command line (CI, stop 21: a victim read as pytest's fork, comm
# "python" against the kernel's "python3", recorded without one; a program of the parent's comm
# would even be given the parent's argv). So a process the scan read while it was younger than
# this is read again at each scan until it is older: most programs exec within milliseconds of
# their fork, and only the young processes of the last seconds are read again, not every one.
_RECHECK_YOUNG_NS = 5_000_000_000
# Verify scans (after lost events) read every process's stat: at most one per second.
_VERIFY_MIN_GAP = 1.0
# Events are queued in the order of their kernel timestamps, give or take the few
# instructions between ktime_get_ns() and the enqueue in cn_proc.c's send_msg(), which
# preemption can stretch by a time slice or two (a few ms): an event stamped this much
# later than a barrier's start means everything queued before the barrier was applied.
_BARRIER_SLACK_NS = 20_000_000
# With an injected clock (tests: it may jump) the thread wakes at least this often; with the
# real one it sleeps until its next timer (a scan, an exited entry's expiry): every request of
# another thread writes its eventfd. Each wake-up costs ~0.9 ms of CPU on this machine's VM
# (schedstat of an empty select loop), so an idle thread that woke every second cost 0.1 %.
_MAX_POLL = 1.0
# scan_interval="auto": with exec events the scan is only a safety net (a 10 s period); without
# them (a container, --process-events=off) it is what sees processes at all, so it runs as often
# as costs at most 1 % of a CPU (100 times its own last duration), but not more than 10 times a
# second: a container of a few dozen processes is listed in well under a millisecond.
AUTO = "auto"
_AUTO_WITH_EVENTS = 10.0
_AUTO_MIN = 0.1
_AUTO_COST_FACTOR = 100


@dataclass
class CmdlineLookup:
    """What the cache knows of one pid's command line."""

    # The exact argv from /proc/PID/cmdline, split on NUL with the trailing NUL removed; a
    # cmdline rewritten without NULs (setproctitle) is one element. None when not found.
    argv: Optional[List[bytes]]
    # "exec-event", "fork", "scan", "proc" or "not-found".
    source: str
    # Field 22 of /proc/PID/stat: clock ticks (SC_CLK_TCK) since boot. None when unknown
    # (an entry inherited on fork has not been read from /proc).
    start_time: Optional[int] = None
    # The comm the cache holds for this pid (surrogate-escaped where not UTF-8).
    comm: Optional[str] = None
    # Why it was not found, or a caveat.
    note: str = ""
    # The process's memory cgroup as read at exec/scan (for kills whose report the kernel did
    # not print: its ratelimit); None when unknown.
    cgroup: Optional[str] = None

    @property
    def found(self) -> bool:
        return self.source != NOT_FOUND


class Killed(NamedTuple):
    """A process that died of SIGKILL, as the connector's exit event and the cache knew it: the
    second witness of an OOM kill whose kill line was lost (enrich.witness)."""

    pid: int
    exit_ns: int  # the exit event's timestamp: CLOCK_MONOTONIC ns (ktime_get_ns())
    comm: Optional[bytes]
    cmdline: Optional[bytes]  # raw, NULs included; None when the cache had none
    cgroup: Optional[str]  # the memory cgroup read at exec/scan; None when unknown
    start_time: Optional[int]
    source: str  # of the command line: SOURCE_EXEC, SOURCE_FORK, SOURCE_SCAN, or NOT_FOUND


# The exit code of a process killed by a signal: the signal's number in its low 7 bits
# (kernel/exit.c do_group_exit(sig), the connector's exit_code is task->exit_code).
_SIGKILL = 9
# SIGKILL exits remembered for the second witness: the last few thousand (an OOM storm of a
# group kill is a few hundred; each entry holds its command line, bounded by the cache's bytes).
KILLED_MAX = 4096


class Seen(NamedTuple):
    """A process the cache holds a command line of, as seen_as() hands it out."""

    pid: int
    cmdline: bytes  # raw, NULs included
    comm: bytes
    start_time: Optional[int]  # field 22, None if inherited on fork
    source: str  # SOURCE_EXEC, SOURCE_FORK or SOURCE_SCAN
    cgroup: Optional[str]  # the memory cgroup as this cgroup namespace shows it
    gone_ns: Optional[int]  # CLOCK_MONOTONIC ns at which its exit was noticed, None while alive


# One process's entry: a plain tuple, never mutated (an update stores a new one). Plain
# tuples of bytes, ints, str and None are untracked by the garbage collector after their
# first collection; measured here, 60,000 entries as __slots__ objects added 8 ms to every
# full collection (a pause of the exec hot path too: the GIL), as tuples 0.1 ms.
_CMD = 0  # cmdline: raw bytes, NULs included; None: no argv (see _NOTE)
# comm bytes, or None: not read yet (an exec entry: see _on_exec) or the process was gone first.
_COMM = 1
# Start time: field 22 of stat (clock ticks of CLOCK_BOOTTIME), or None if unknown. An entry
# made from a fork event has it from the event's timestamp (_on_fork); an exec keeps it (a
# process's start time is its fork's), so an exec entry takes it from the entry it replaces.
_START = 2
_SRC = 3  # SOURCE_EXEC, SOURCE_FORK or SOURCE_SCAN
# CLOCK_MONOTONIC ns taken before /proc was read (or the fork event's timestamp): the entry
# reflects the process as of this instant. The connector's timestamps are ktime_get_ns(),
# the same clock, so events older than the entry are ignored.
_READ = 4
# The /proc/PID directory's inode number when a scan last saw it. A new process gets a new
# proc inode; a known one keeps it while its dentry stays cached (after `echo 2 >
# /proc/sys/vm/drop_caches` 67 of 68 changed here: hence a stat read before concluding
# anything). None until a scan has seen it.
_INO = 5
_EXP = 6  # None while alive; when it exited: the clock time at which it is dropped
_NOTE = 7  # why there is no argv, or None
# The memory cgroup's path (/proc/PID/cgroup), interned: the kernel prints the victim's cgroup
# only in its report, and prints at most 10 reports in 5 s (oom_rs in mm/oom_kill.c); in a
# storm of kills the rest have their kill line alone. Read at exec, because systemd and
# container runtimes move the child into its cgroup between fork and exec.
_CG = 8
# CLOCK_MONOTONIC ns at which its exit was noticed (None while alive): a process noticed gone
# before a kill cannot be its victim (procs.pidns).
_GONE = 9


def _entry(cmdline: Optional[bytes], comm: Optional[bytes], start_time: Optional[int],
           source: str, read_ns: int, ino: Optional[int] = None,
           note: Optional[str] = None, cgroup: Optional[str] = None) -> tuple:
    return (cmdline, comm, start_time, source, read_ns, ino, None, note, cgroup, None)


def _check_settings(scan_interval: Union[float, str], max_entries: int, max_cmdline_bytes: int,
                    exit_grace: float) -> None:
    if scan_interval != AUTO and not (isinstance(scan_interval, (int, float)) and scan_interval > 0):
        raise ValueError(f"scan_interval must be > 0, not {scan_interval!r}")
    if max_entries < 1:
        raise ValueError(f"max_entries must be >= 1, not {max_entries!r}")
    if max_cmdline_bytes < 1:
        raise ValueError(f"max_cmdline_bytes must be >= 1, not {max_cmdline_bytes!r}")
    if not exit_grace >= 0:
        raise ValueError(f"exit_grace must be >= 0, not {exit_grace!r}")


class ProcessCache:
    """Command lines of the processes on this machine, by pid, for OOM victims.

    proc_root, clock and connector_factory are the OS boundaries (the real ones by default):
    tests point proc_root at a fixture tree and pass use_connector=False, or a connector
    factory of their own. clock times scans and the exit grace; ordering against kernel
    events always uses CLOCK_MONOTONIC, the kernel's.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        use_connector: bool = True,
        scan_interval: Union[float, str] = 10.0,
        max_entries: int = 65536,
        max_cmdline_bytes: int = 64 << 20,
        exit_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        connector_factory: Callable[[], ProcConnector] = ProcConnector,
        on_cgroup: Optional[Callable[[str], None]] = None,
    ):
        _check_settings(scan_interval, max_entries, max_cmdline_bytes, exit_grace)
        self._root = proc_root.rstrip("/") or "/"
        self._use_connector = use_connector
        self._scan_interval = scan_interval
        self._max_entries = max_entries
        self._max_bytes = max_cmdline_bytes
        self._grace = exit_grace
        self._clock = clock
        self._connector_factory = connector_factory
        # Told each process's memory cgroup as it is read (exec event, scan), on this thread:
        # what a container is called can only be read while it runs (enrich.containers).
        self._on_cgroup = on_cgroup

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # pid -> entry, oldest first (insertion order; a replaced entry moves to the end).
        self._entries: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()
        # (expires, pid) in exit order: expiry, and the first to go when the cache is full.
        # A record whose entry was since replaced no longer matches its `expires`; skipped.
        self._exited: Deque[Tuple[float, int]] = collections.deque()
        self._bytes = 0
        self._killed: Deque[Killed] = collections.deque(maxlen=KILLED_MAX)

        self._connector: Any = None  # a ProcConnector while exec events are listened to
        self._connector_status = "not started"
        self._thread: Optional[threading.Thread] = None
        self._wake_fd = -1
        # Written at each SIGKILL exit (killed_fd()), so that the second witness reads the kernel's
        # counters when a kill may have happened instead of every second.
        self._killed_fd = -1
        self._started = False
        self._stopping = False
        self._stopped = False
        # Barrier: CLOCK_MONOTONIC ns of the start of the last receive that found the socket
        # empty; every event queued before that instant has been applied. And the kernel
        # timestamp of the last event applied, for when the socket is never empty.
        self._drained_ns = 0
        self._applied_ns = 0
        self._events_ns = 0  # when the last drain that applied events ended (_STORM_GAP_NS)
        # CLOCK_BOOTTIME - CLOCK_MONOTONIC (the time suspended), taken at each drain (_on_fork).
        self._boot_offset_ns = 0
        # CLOCK_MONOTONIC ns of the last events lost (ENOBUFS) or of the connector's failure: an
        # exec entry read before it may have missed its process's exit and its pid's next owner.
        self._lost_ns = 0
        self._barrier_waiters = 0
        # The earliest event stamp a waiting barrier needs applied (later_ns): the drain wakes the
        # waiters only when an event reaches it or the socket is empty, not at every datagram.
        # (It woke them at each one: in a storm each lookup's ~20 ms barrier was ~40 wake-ups of
        # the waiting thread and as many GIL hand-overs; bench-like storm with 10 kills per 10 s,
        # cache thread 66-68 us per exec against 52-54 without the kills.)
        self._barrier_targets: List[int] = []
        self._barrier_next_ns = 0
        # Scan scheduling (clock time) and requests.
        self._next_scan = 0.0
        self._verify_pending = False
        self._last_verify = -math.inf
        self._scan_requested = 0
        self._scan_served = 0
        self._bounds_changed = False

        self._handlers: dict = {ExecEvent: self._on_exec, ForkEvent: self._on_fork, ExitEvent: self._on_exit,
                                CommEvent: self._on_comm}
        self._n_events = 0
        self._n_exec = 0
        self._n_lost = 0
        self._n_scans = 0
        self._n_verify_scans = 0
        self._last_scan_seconds = 0.0
        self._n_evictions = 0
        self._n_read_errors = 0
        self._n_thread_errors = 0

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Subscribe to the connector (if enabled), scan /proc once, start the thread.

        Returns when the cache is primed. Raises OSError if proc_root cannot be listed.
        """
        if self._started:
            raise RuntimeError("ProcessCache.start() called twice")
        self._started = True
        if self._use_connector:
            # Subscribe before the scan: a process that execs while the scan runs is then
            # either read by the scan or by its queued exec event.
            try:
                self._connector = self._connector_factory()
                self._connector_status = "active"
                if getattr(self._connector, "filter_error", None):
                    log.warning("process events connector: every exit and thread event is received "
                                "and decoded (%s)", self._connector.filter_error)
            except (ConnectorUnavailable, OSError) as e:
                reason = e.reason if isinstance(e, ConnectorUnavailable) else str(e)
                self._connector_status = f"unavailable: {reason}"
                log.warning("connector unavailable: %s, falling back to /proc scanning", reason)
        else:
            self._connector_status = "disabled (use_connector=False)"
        try:
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._killed_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._scan(verify=False)
        except BaseException:
            self._close_resources()
            self._stopped = True
            raise
        self._next_scan = self._clock() + self.scan_period()
        self._thread = threading.Thread(target=self._run, name="oom-journal-proc-cache",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the connector (PROC_CN_MCAST_IGNORE). Idempotent.

        The cached entries stay readable by lookup()."""
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
            self._stopping = True
            self._cond.notify_all()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                # A /proc read can block on a process's mmap lock (the same hang as ps(1)).
                log.warning("proc cache thread did not stop within %g s", timeout)
        self._close_resources()

    def _close_resources(self) -> None:
        conn, self._connector = self._connector, None
        if conn is not None:
            conn.close()
            if self._connector_status == "active":
                self._connector_status = "closed"
        with self._lock:
            fd, self._wake_fd = self._wake_fd, -1
            if fd >= 0:
                os.close(fd)
            fd, self._killed_fd = self._killed_fd, -1
            if fd >= 0:
                os.close(fd)

    def __enter__(self) -> "ProcessCache":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def killed_fd(self) -> int:
        """An eventfd (non-blocking) that becomes readable when a process died of SIGKILL; -1 before
        start() and after stop(). Whoever polls it reads it (os.eventfd_read) to re-arm it."""
        return self._killed_fd

    def events_active(self) -> bool:
        """True while exec and exit events come from the connector (SIGKILL exits are then seen)."""
        return self._connector_status == "active" and self._connector is not None

    def alive(self) -> bool:
        """True while the thread runs (for a watchdog): started, not stopped, not dead."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    @property
    def proc_root(self) -> str:
        return self._root

    def scan_period(self) -> float:
        """Seconds between periodic scans: scan_interval, or what AUTO makes of it now."""
        interval = self._scan_interval
        if interval != AUTO:
            return float(interval)
        if self._connector is not None:
            return _AUTO_WITH_EVENTS
        return min(_AUTO_WITH_EVENTS, max(_AUTO_MIN, _AUTO_COST_FACTOR * self._last_scan_seconds))

    def reconfigure(self, scan_interval: Union[float, str, None] = None,
                    max_entries: Optional[int] = None, max_cmdline_bytes: Optional[int] = None,
                    exit_grace: Optional[float] = None) -> None:
        """Change settings while running (a reload). Smaller bounds are enforced by the
        thread at once; a new exit_grace applies to processes that exit from now on."""
        new = (self._scan_interval if scan_interval is None else scan_interval,
               self._max_entries if max_entries is None else max_entries,
               self._max_bytes if max_cmdline_bytes is None else max_cmdline_bytes,
               self._grace if exit_grace is None else exit_grace)
        _check_settings(*new)
        with self._lock:
            (self._scan_interval, self._max_entries, self._max_bytes, self._grace) = new
            self._next_scan = min(self._next_scan, self._clock() + self.scan_period())
            self._bounds_changed = True
        self._wake()
        if not self.alive():
            self._enforce_bounds()  # no thread to race with

    def _enforce_bounds(self) -> None:
        with self._lock:
            self._bounds_changed = False
            if len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._evict(None)

    def _wake(self) -> None:
        # Under the lock, as _close_resources() closes it: a write to a closed eventfd's
        # number could land in whatever file reused it.
        with self._lock:
            if self._wake_fd >= 0:
                try:
                    os.eventfd_write(self._wake_fd, 1)
                except BlockingIOError:
                    pass  # the counter is saturated: the thread is awake anyway

    # ---------------------------------------------------------------- lookup

    def lookup(self, pid: int, comm: Union[str, bytes], wait: float = 0.1) -> CmdlineLookup:
        """The command line of `pid`, which the kernel calls `comm`.

        First a barrier: up to `wait` seconds for the thread to apply every connector event
        already queued now (the victim's exec event may be among them). Then the cache; the
        cached comm must match the kernel's (first 15 bytes), or it is another process. Then
        /proc/PID itself, in case the victim still exists, with the same check.
        """
        kcomm = kernel_comm(comm)
        if wait > 0:
            self._barrier(wait)
        cached = self._lookup_cached(pid, kcomm)
        if cached.found:
            return cached
        live = self._lookup_proc(pid, kcomm)
        if live.found:
            return live
        return CmdlineLookup(None, NOT_FOUND, cached.start_time, cached.comm,
                             f"{cached.note}; {live.note}")

    def _lookup_cached(self, pid: int, kcomm: bytes) -> CmdlineLookup:
        with self._lock:
            e = self._entries.get(pid)
            if e is None:
                return CmdlineLookup(None, NOT_FOUND, note=f"pid {pid} is not in the cache")
        cmdline, ecomm, start, source, _, _, expires, note, cgroup, _ = e
        # Not marked: it may have ended without a signal, an exit the kernel does not send
        # (procs.event_filter); the scan marks it later. A later process of the pid would have
        # replaced the entry (its fork event is applied before a lookup: the barrier).
        exited = expires is not None or not os.path.exists(f"{self._root}/{pid}")
        if ecomm is not None and ecomm[:KERNEL_COMM_LEN] != kcomm:
            return CmdlineLookup(None, NOT_FOUND, start, decode_comm(ecomm),
                                 f"comm mismatch: cached {show_comm(ecomm)}, kernel {show_comm(kcomm)}")
        if cmdline is None:
            return CmdlineLookup(None, NOT_FOUND, start, decode_comm(ecomm),
                                 f"pid {pid} is cached but {note or _NOTE_EMPTY}")
        caveats = []
        if ecomm is None and (source != SOURCE_EXEC or e[_READ] <= self._lost_ns):
            # (An exec entry's comm is read later; the exec event vouches for it meanwhile: _on_exec.)
            caveats.append("comm not verified: the process was gone before its stat was read")
        if exited:
            caveats.append("the process has exited")
        return CmdlineLookup(split_cmdline(cmdline), source, start, decode_comm(ecomm),
                             "; ".join(caveats), cgroup)

    def _lookup_proc(self, pid: int, kcomm: bytes) -> CmdlineLookup:
        base = f"{self._root}/{pid}"
        try:
            files = read_process(base, self._max_bytes)
        except OSError as e:
            return CmdlineLookup(None, NOT_FOUND, note=f"{base} unreadable: {e}")
        if files is None or files.stat is None:
            return CmdlineLookup(None, NOT_FOUND, note=f"{base} is gone")
        cgroup, cmdline, stat = files.cgroup, files.cmdline, files.stat
        comm, start = stat.comm, stat.start_time
        if comm[:KERNEL_COMM_LEN] != kcomm:
            return CmdlineLookup(None, NOT_FOUND, start, decode_comm(comm),
                                 f"comm mismatch: {base} has {show_comm(comm)}, kernel {show_comm(kcomm)}")
        if len(cmdline) > self._max_bytes:
            return CmdlineLookup(None, NOT_FOUND, start, decode_comm(comm),
                                 f"{base}: {_NOTE_TOO_LARGE}")
        argv = split_cmdline(cmdline)
        if argv is None:
            return CmdlineLookup(None, NOT_FOUND, start, decode_comm(comm), f"{base}: {_NOTE_EMPTY}")
        return CmdlineLookup(argv, SOURCE_PROC, start, decode_comm(comm), cgroup=cgroup)

    def seen_as(self, kcomm: bytes) -> List[Seen]:
        """The processes the cache holds a command line of whose comm is kcomm (the kernel's 15
        bytes), exited ones included, as they are now: what the pid-namespace matcher chooses
        among (procs.pidns)."""
        with self._lock:
            return [Seen(pid, e[_CMD], e[_COMM], e[_START], e[_SRC], e[_CG], e[_GONE])
                    for pid, e in self._entries.items()
                    if e[_CMD] is not None and e[_COMM] is not None and e[_COMM][:KERNEL_COMM_LEN] == kcomm]

    def _barrier(self, wait: float) -> bool:
        """Wait until every connector event queued before now has been applied: the thread
        found the socket empty after now, or (under a storm that never lets it be empty) it
        applied an event stamped later than now by _BARRIER_SLACK_NS."""
        thread = self._thread
        if self._connector is None or thread is None or not thread.is_alive():
            return False
        if thread is threading.current_thread():
            return False
        now_ns = time.monotonic_ns()
        later_ns = now_ns + _BARRIER_SLACK_NS
        deadline = time.monotonic() + wait
        with self._cond:
            if self._drained_ns >= now_ns or self._applied_ns >= later_ns:
                return True
            self._barrier_waiters += 1
            self._barrier_targets.append(later_ns)
            self._barrier_next_ns = min(self._barrier_targets)
        try:
            self._wake()
            with self._cond:
                while self._drained_ns < now_ns and self._applied_ns < later_ns:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopping:
                        return False
                    self._cond.wait(left)
                return True
        finally:
            with self._cond:
                self._barrier_waiters -= 1
                self._barrier_targets.remove(later_ns)
                self._barrier_next_ns = min(self._barrier_targets, default=0)

    # ---------------------------------------------------------------- stats, rescan

    def stats(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "exited": sum(1 for e in self._entries.values() if e[_EXP] is not None),
                "connector": self._connector_status,
                "events": self._n_events,
                "exec_events": self._n_exec,
                "lost_events": self._n_lost,
                "scans": self._n_scans,
                "verify_scans": self._n_verify_scans,
                "last_scan_seconds": self._last_scan_seconds,
                "evictions": self._n_evictions,
                "read_errors": self._n_read_errors,
                "thread_errors": self._n_thread_errors,
            }

    def rescan(self, verify: bool = False, timeout: float = 10.0) -> bool:
        """Scan /proc now and wait for it (e.g. when the kernel log source was overrun).

        verify=True re-reads every process's stat as after lost events. Returns False if
        the scan did not finish within timeout."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            if self._started and not self._stopped:
                raise RuntimeError("the cache thread is not running")
            self._scan(verify)  # not started, or stopped: no thread to race with
            return True
        with self._cond:
            self._scan_requested += 1
            ticket = self._scan_requested
            if verify:
                self._verify_pending = True
        self._wake()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._scan_served < ticket:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    return False
                self._cond.wait(left)
        return True

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        wake_poller = select.poll()
        wake_poller.register(self._wake_fd, select.POLLIN)
        conn_fd = -1
        if self._connector is not None:
            conn_fd = self._connector.fileno()
            poller.register(conn_fd, select.POLLIN)
        while not self._stopping:
            try:
                if conn_fd >= 0 and self._connector is None:  # it failed: stop polling it
                    poller.unregister(conn_fd)
                    conn_fd = -1
                now = self._clock()
                due = self._next_scan
                if self._exited:
                    due = min(due, self._exited[0][0])
                timeout = max(due - now, 0.0)
                if self._clock is not time.monotonic:
                    timeout = min(timeout, _MAX_POLL)
                for fd, _ in poller.poll(math.ceil(timeout * 1000)):
                    if fd == self._wake_fd:
                        try:
                            os.eventfd_read(fd)
                        except BlockingIOError:
                            pass
                if self._stopping:
                    break
                # Always try: a non-blocking empty receive is a microsecond, and it is what
                # answers a barrier even when the socket was already empty.
                if self._connector is not None and self._drain() and not self._barrier_waiters:
                    now_ns = time.monotonic_ns()  # no wait when a lookup waits for its barrier
                    if now_ns - self._events_ns < _STORM_GAP_NS:
                        # Ended early by a lookup's barrier (_wake), whose eventfd stays set: the
                        # poll above returns at once and the drain that follows serves it.
                        wake_poller.poll(_BATCH_WAIT_MS)
                    self._events_ns = time.monotonic_ns()
                now = self._clock()
                self._expire(now)
                if self._bounds_changed:
                    self._enforce_bounds()
                with self._lock:
                    requested = self._scan_requested
                    verify = self._verify_pending and now >= self._last_verify + _VERIFY_MIN_GAP
                if verify or requested > self._scan_served or now >= self._next_scan:
                    if verify:
                        self._verify_pending = False
                    self._scan(verify)
                    now = self._clock()
                    if verify:
                        self._last_verify = now
                    self._next_scan = now + self.scan_period()
                    with self._cond:
                        self._scan_served = requested
                        self._cond.notify_all()
                elif self._verify_pending:
                    self._next_scan = min(self._next_scan, self._last_verify + _VERIFY_MIN_GAP)
            except Exception:
                self._n_thread_errors += 1
                log.exception("proc cache thread: unexpected error; continuing in 1 s")
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, 1.0)

    def _drain(self, budget: int = _DRAIN_BUDGET) -> int:
        # The storm's hot loop: names bound once, a handler found by the event's type (one dict
        # read), the event count added once per drain.
        receive = self._connector.receive
        monotonic_ns = time.monotonic_ns
        handlers = self._handlers
        applied = 0
        self._boot_offset_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - monotonic_ns()
        try:
            for _ in range(budget):
                if self._stopping:
                    return applied
                started_ns = monotonic_ns()
                try:
                    events = receive()
                except EventsLost:
                    # The queue overflowed: which processes were missed is unknown, so the next
                    # scan verifies every pid's start time and comm (at once, at most 1/s).
                    self._n_lost += 1
                    self._lost_ns = monotonic_ns()
                    self._verify_pending = True
                    log.warning("process events connector: events lost (ENOBUFS); verifying /proc")
                    continue
                except OSError as e:
                    self._connector_failed(e)
                    return applied
                if events is None:
                    with self._cond:
                        self._drained_ns = started_ns
                        if self._barrier_waiters:
                            self._cond.notify_all()
                    return applied
                for ev in events:
                    handler = handlers.get(type(ev))
                    if handler is not None:
                        handler(ev)
                if events:
                    applied += len(events)
                    self._applied_ns = events[-1].timestamp_ns
                    if self._barrier_waiters and self._applied_ns >= self._barrier_next_ns:
                        with self._cond:
                            self._cond.notify_all()
            return applied
        finally:
            self._n_events += applied

    def _connector_failed(self, e: OSError) -> None:
        reason = f"receive failed: {e}"
        log.warning("connector unavailable: %s, falling back to /proc scanning", reason)
        conn, self._connector = self._connector, None
        self._lost_ns = time.monotonic_ns()
        self._connector_status = f"unavailable: {reason}"
        self._verify_pending = True
        try:
            conn.close()
        except OSError:
            pass

    # Event handlers: run on the thread only. They read self._entries without the lock (this
    # thread is the only writer) and change it under the lock (lookup reads it).

    def _on_exec(self, ev: ExecEvent) -> None:
        # The hot path: one event per execve() on the machine. The victim may live only a few
        # milliseconds after this, so read first, think later.
        self._n_exec += 1
        pid = ev.tgid
        old = self._entries.get(pid)
        if old is not None and old[_READ] > ev.timestamp_ns and old[_SRC] != SOURCE_FORK:
            return  # read after this exec already (a scan, or a later exec's event)
        read_ns = time.monotonic_ns()
        # The running process this pid had keeps its start time through the exec: then its stat is
        # not read now (one /proc file of three, ~1/6 of an exec's cost in a storm: bench/run), and
        # its comm, which the exec changed, is read by the next scan if it still runs, or at a
        # SIGKILL exit (_remember_killed). Until then the exec event vouches for it: every event
        # of this pid since is applied before a lookup answers (the barrier), so no other process
        # can hold the pid unnoticed, unless events were lost (_lost_ns).
        start = old[_START] if old is not None and old[_EXP] is None else None
        entry = (self._read_exec(pid, read_ns, start) if start is not None
                 else self._read_entry(pid, SOURCE_EXEC, read_ns))
        if entry is None:
            # Gone already. Record that, rather than leave a fork entry's inherited argv (and
            # comm: the exec changed it, and a victim must not be refused as "comm mismatch").
            entry = _entry(None, None, None, SOURCE_EXEC, read_ns, None, _NOTE_EXEC_GONE)
        self._insert(pid, entry)
        if entry[_CMD] is None and entry[_NOTE] != _NOTE_TOO_LARGE:
            # After an exec the cmdline is never empty (the kernel supplies argv[0] = "" when
            # argc is 0): empty means it has exited already.
            log.debug("exec of pid %d: gone when read %.1f ms after its exec event", pid,
                      (read_ns - ev.timestamp_ns) / 1e6)
            self._mark_exited(pid, entry)

    def _on_fork(self, ev: ForkEvent) -> None:
        if ev.child_pid != ev.child_tgid:
            return  # a new thread, not a new process
        parent = self._entries.get(ev.parent_tgid)
        if parent is None or parent[_CMD] is None:
            return  # nothing to inherit; the next scan or its exec event will read it
        old = self._entries.get(ev.child_tgid)
        if old is not None and old[_READ] > ev.timestamp_ns:
            return  # already read after this fork (by the first scan, typically)
        # Not read from /proc: fork() copies the parent's memory, argv included, and most
        # children exec at once, whose event replaces this.
        # (_entry()'s fields, built here: one call fewer per fork)
        start = (ev.timestamp_ns + self._boot_offset_ns) // _NS_PER_TICK
        self._insert(ev.child_tgid, (parent[_CMD], parent[_COMM], start, SOURCE_FORK, ev.timestamp_ns, None, None,
                                     None, parent[_CG], None))

    def _on_exit(self, ev: ExitEvent) -> None:
        if ev.pid != ev.tgid:
            return  # a thread; the process lives on
        e = self._entries.get(ev.tgid)
        if ev.exit_code & 0x7F == _SIGKILL:
            self._remember_killed(ev, e)
        if e is None or e[_EXP] is not None or e[_READ] > ev.timestamp_ns:
            return  # unknown, already exited, or an entry read after this exit
        self._mark_exited(ev.tgid, e)

    def _remember_killed(self, ev: ExitEvent, e: Optional[tuple]) -> None:
        # An entry read after this exit belongs to a later process of the same pid.
        if e is None or e[_READ] > ev.timestamp_ns:
            k = Killed(ev.tgid, ev.timestamp_ns, None, None, None, None, NOT_FOUND)
        else:
            comm = e[_COMM] if e[_COMM] is not None else self._zombie_comm(ev.tgid, e[_START])
            k = Killed(ev.tgid, ev.timestamp_ns, comm, e[_CMD], e[_CG], e[_START],
                       e[_SRC] if e[_CMD] is not None else NOT_FOUND)
        with self._lock:
            self._killed.append(k)
            if self._killed_fd >= 0:
                os.eventfd_write(self._killed_fd, 1)

    def _zombie_comm(self, pid: int, start: Optional[int]) -> Optional[bytes]:
        """The comm of a process that just died, from its stat while it is a zombie (until its parent
        reaps it), if the stat is still its own (the start time, within the fork estimate's tick)."""
        try:
            stat = read_stat(f"{self._root}/{pid}/stat")
        except OSError:
            return None
        if stat is None or start is None or not 0 <= start - stat.start_time <= 1:
            return None
        return stat.comm

    def killed_since(self, since_ns: int, wait: float = 0.1) -> List[Killed]:
        """The processes that died of SIGKILL (any sender: the OOM killer or kill -9) whose exit
        event is stamped at or after since_ns, oldest first; after a barrier of `wait` seconds,
        so that the exit events queued now are in."""
        if wait > 0:
            self._barrier(wait)
        with self._lock:
            return [k for k in self._killed if k.exit_ns >= since_ns]

    def _on_comm(self, ev: CommEvent) -> None:
        if ev.pid != ev.tgid:
            return  # a thread named itself; the kernel names the victim by its leader's comm
        e = self._entries.get(ev.tgid)
        if e is None or e[_READ] > ev.timestamp_ns:
            return
        self._update(ev.tgid, e, _COMM, ev.comm)

    # ---------------------------------------------------------------- the scan

    def _scan(self, verify: bool) -> None:
        """List proc_root; read pids not known yet (and pids whose /proc inode changed, or all
        after lost events); mark known pids missing from the listing as exited."""
        started = time.monotonic()
        list_ns = time.monotonic_ns()
        entries = self._entries
        drain = self._connector is not None
        # Start times (clock ticks) from which a scan entry is young enough to be read again.
        young_from = (math.inf if drain else
                      (time.clock_gettime_ns(time.CLOCK_BOOTTIME) - _RECHECK_YOUNG_NS) // _NS_PER_TICK)
        reads = 0
        # Each pid handled as the listing reaches it, not from a list of (pid, inode) made first:
        # that list was the scan's peak, ~100 bytes a process (1 MiB with 10,000), and the
        # allocator kept the pages. An entry the listing passes is the process as of then.
        listed = set()
        with os.scandir(self._root) as it:
            for d in it:
                name = d.name
                if not (name.isdigit() and name.isascii()):
                    continue
                pid = int(name)
                listed.add(pid)
                ino = d.inode()
                e = entries.get(pid)
                if e is None:
                    entry = self._read_entry(pid, SOURCE_SCAN, time.monotonic_ns(), ino)
                    reads += 1
                    if entry is not None:
                        self._insert(pid, entry)
                elif verify or (e[_INO] is not None and e[_INO] != ino):
                    reads += 1
                    self._check_known(pid, e, ino)
                elif e[_SRC] == SOURCE_SCAN and e[_START] is not None and e[_START] >= young_from:
                    reads += 1
                    self._reread_young(pid, e, ino)
                elif e[_INO] is None and e[_READ] < list_ns:
                    # First sighting of an entry made from events; an exec entry's comm read now.
                    if e[_COMM] is None and e[_EXP] is None and e[_CMD] is not None:
                        reads += 1
                        self._check_known(pid, e, ino)
                    else:
                        self._update(pid, e, _INO, ino)
                if drain and reads >= _SCAN_DRAIN_EVERY:
                    reads = 0
                    self._drain()
                    drain = self._connector is not None
        gone = [(pid, e) for pid, e in entries.items()
                if e[_EXP] is None and e[_READ] < list_ns and pid not in listed]
        for pid, e in gone:
            self._mark_exited(pid, e)
        with self._lock:
            self._n_scans += 1
            if verify:
                self._n_verify_scans += 1
            self._last_scan_seconds = time.monotonic() - started

    def _check_known(self, pid: int, e: tuple, ino: int) -> None:
        """A known pid whose /proc inode changed, or any pid after lost events: the same
        process (start time and comm unchanged) keeps its entry; otherwise read it again."""
        read_ns = time.monotonic_ns()
        try:
            stat = read_stat(f"{self._root}/{pid}/stat")
        except OSError:
            self._n_read_errors += 1
            return
        if stat is None:
            return  # gone since the listing: the next scan marks it
        comm, start = stat.comm, stat.start_time
        # The same process: its start time (an entry made from a fork event may be a tick later:
        # _NS_PER_TICK) and its comm, unless the entry has none yet (an exec entry) or it exited.
        if (e[_START] is not None and 0 <= e[_START] - start <= 1
                and (e[_COMM] == comm or e[_COMM] is None or e[_EXP] is not None)):
            with self._lock:
                self._entries[pid] = (e[0], e[1] if e[1] is not None else comm, start, e[3], e[4], ino,
                                      e[6], e[7], e[8], e[9])
            return
        entry = self._read_entry(pid, SOURCE_SCAN, read_ns, ino)
        if entry is not None:
            self._insert(pid, entry)

    def _reread_young(self, pid: int, e: tuple, ino: int) -> None:
        """Without exec events: a young process read by a scan, read again (_RECHECK_YOUNG_NS);
        a new entry only if it exec'd (its command line or comm changed) or is another process."""
        entry = self._read_entry(pid, SOURCE_SCAN, time.monotonic_ns(), ino)
        if entry is None:
            return  # gone (the next scan marks it), or in the middle of its exec (read next time)
        if entry[_START] == e[_START] and entry[_CMD] is None:
            return  # exiting or a zombie (its cmdline empty): what the first read saw stands
        if (entry[_CMD], entry[_COMM], entry[_START]) != (e[_CMD], e[_COMM], e[_START]):
            self._insert(pid, entry)

    def _read_entry(self, pid: int, source: str, read_ns: int,
                    ino: Optional[int] = None) -> Optional[tuple]:
        """Read /proc/PID (cgroup, cmdline, stat: procfs.read_process() says why in that
        order). None if already gone."""
        base = f"{self._root}/{pid}"
        try:
            files = read_process(base, self._max_bytes)
            if files is None:
                return None
            cgroup, raw, stat = files.cgroup, files.cmdline, files.stat
        except OSError as e:
            # EACCES (hidepid=, a non-root daemon), EIO: unreadable is not a reason to stop.
            self._n_read_errors += 1
            log.debug("reading %s: %s", base, e)
            return None
        comm, start = (stat.comm, stat.start_time) if stat is not None else (None, None)
        note = None
        cmdline: Optional[bytes] = raw
        if len(raw) > self._max_bytes:
            cmdline, note = None, _NOTE_TOO_LARGE
        elif not raw:
            if (source == SOURCE_SCAN and stat is not None and not stat.flags & PF_KTHREAD
                    and stat.state not in (b"Z", b"X")):
                # A user process with no argv yet: in the middle of execve(), between
                # exec_mmap() (which wakes a vfork parent) and create_elf_tables() (which
                # sets mm->arg_start): seen by this test suite. Not cached, so the next
                # scan reads it again; its exec event, if any, reads it first.
                return None
            cmdline = None
        return _entry(cmdline, comm, start, source, read_ns, ino, note, cgroup)

    def _read_exec(self, pid: int, read_ns: int, start: int) -> Optional[tuple]:
        """An exec entry read from /proc/PID's cgroup and cmdline (not its stat: see _on_exec),
        with the start time known; None if already gone."""
        base = f"{self._root}/{pid}"
        try:
            files = read_exec_files(base, self._max_bytes)
        except OSError as e:
            self._n_read_errors += 1
            log.debug("reading %s: %s", base, e)
            return None
        if files is None:
            return None
        cgroup, raw = files
        if len(raw) > self._max_bytes:
            return _entry(None, None, start, SOURCE_EXEC, read_ns, None, _NOTE_TOO_LARGE, cgroup)
        return _entry(raw or None, None, start, SOURCE_EXEC, read_ns, None, None, cgroup)

    # ---------------------------------------------------------------- bookkeeping

    def _insert(self, pid: int, entry: tuple) -> None:
        with self._lock:
            old = self._entries.pop(pid, None)
            if old is not None and old[_CMD] is not None:
                self._bytes -= len(old[_CMD])
            self._entries[pid] = entry
            if entry[_CMD] is not None:
                self._bytes += len(entry[_CMD])
            if len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._evict(pid)
        if self._on_cgroup is not None and entry[_CG] is not None and entry[_SRC] != SOURCE_FORK:
            try:
                self._on_cgroup(entry[_CG])
            except Exception:  # the names are a nicety; the command lines are the cache's job
                self._n_thread_errors += 1
                log.exception("on_cgroup(%r)", entry[_CG])

    def _evict(self, keep: Optional[int]) -> None:
        """Under the lock: exited entries first (earliest exit first), then the oldest."""
        entries = self._entries
        exited = self._exited
        while len(entries) > self._max_entries or self._bytes > self._max_bytes:
            victim = None
            while exited:
                expires, pid = exited.popleft()
                e = entries.get(pid)
                if e is not None and e[_EXP] == expires and pid != keep:
                    victim = pid
                    break
            if victim is None and len(entries) > self._max_entries:
                victim = next(iter(entries))  # OrderedDict: O(1)
                if victim == keep:
                    break  # only the new entry is left
            elif victim is None:
                # Over the byte budget only: the oldest entry that holds bytes (kernel
                # threads, first in a scan, hold none and would be evicted for nothing).
                victim = next((pid for pid, e in entries.items()
                               if e[_CMD] is not None and pid != keep), None)
                if victim is None:
                    break  # only the new entry holds bytes; read_cmdline's limit bounds it
            e = entries.pop(victim)
            if e[_CMD] is not None:
                self._bytes -= len(e[_CMD])
            self._n_evictions += 1

    def _update(self, pid: int, e: tuple, index: int, value) -> None:
        """Store a copy of entry e with one field changed (an OrderedDict keeps its place)."""
        with self._lock:
            self._entries[pid] = e[:index] + (value,) + e[index + 1:]

    def _mark_exited(self, pid: int, e: tuple) -> None:
        expires = self._clock() + self._grace
        gone_ns = time.monotonic_ns()
        with self._lock:
            self._entries[pid] = (e[0], e[1], e[2], e[3], e[4], e[5], expires, e[7], e[8], gone_ns)
            self._exited.append((expires, pid))

    def _expire(self, now: float) -> None:
        exited = self._exited
        if not exited or exited[0][0] > now:
            return
        with self._lock:
            entries = self._entries
            while exited and exited[0][0] <= now:
                expires, pid = exited.popleft()
                e = entries.get(pid)
                if e is not None and e[_EXP] == expires:
                    del entries[pid]
                    if e[_CMD] is not None:
                        self._bytes -= len(e[_CMD])
