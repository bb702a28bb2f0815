"""A cache of every process's command line, to name an OOM victim after it is gone.

The kernel's kill line names the victim by pid and 15-byte comm only, and by the time the
line is read /proc/PID/cmdline is gone. So the cache reads each process's cmdline while it
lives: at its exec, told by the process-events connector (proc_connector), and behind that
with an incremental scan of /proc, which is the whole mechanism when the connector is not
available (containers, old kernels without CAP_NET_ADMIN).

Entries are keyed by pid and stamped with the process's start time (field 22 of
/proc/PID/stat) and the CLOCK_MONOTONIC time at which they were read, so that a recycled pid
never inherits a stale command line and a late event never overwrites a fresher read.
Everything that changes the cache runs on one thread: start()'s first scan, then the
background thread (events and periodic scans); lookup() only reads, under the lock.
"""
from __future__ import annotations

import collections
import errno
import logging
import math
import os
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, List, NamedTuple, Optional, Tuple, Union

from oom_journal.procs.connector import (
    CommEvent,
    ConnectorUnavailable,
    EventsLost,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
)

log = logging.getLogger(__name__)

SOURCE_EXEC = "exec-event"
SOURCE_FORK = "fork"
SOURCE_SCAN = "scan"
SOURCE_PROC = "proc"
NOT_FOUND = "not-found"

# include/linux/sched.h: "I am a kernel thread".
PF_KTHREAD = 0x00200000

# task->comm is char[TASK_COMM_LEN = 16] with its NUL: the kill line prints at most 15 bytes,
# while /proc/PID/stat can show more for kernel workers ("%.64s", fs/proc/array.c).
KERNEL_COMM_LEN = 15

# Why an entry has no argv.
_NOTE_EMPTY = "its command line was empty when read (a kernel thread, or a process already exiting)"
_NOTE_EXEC_GONE = "it exited before its command line could be read after its exec"
_NOTE_TOO_LARGE = "its command line is larger than max_cmdline_bytes"

_GONE_ERRNOS = (errno.ENOENT, errno.ESRCH)
_O_READ = os.O_RDONLY | os.O_CLOEXEC
# Most command lines fit in the first read; the loop goes on until EOF for the rest.
_FIRST_READ = 16384
_NEXT_READ = 1 << 20
# During a scan, drain the connector every this many /proc reads, so that a long scan (a
# host with 30,000 processes) does not hold back exec events until the victims are gone.
_SCAN_DRAIN_EVERY = 128
# A drain returns to the main loop after this many datagrams even if more are queued, so
# that periodic scans and stop() are not starved by an endless storm.
_DRAIN_BUDGET = 4096
# Verify scans (after lost events) read every process's stat: at most one per second.
_VERIFY_MIN_GAP = 1.0
# Events are queued in the order of their kernel timestamps, give or take the few
# instructions between ktime_get_ns() and the enqueue in cn_proc.c's send_msg(), which
# preemption can stretch by a time slice or two (a few ms): an event stamped this much
# later than a barrier's start means everything queued before the barrier was applied.
_BARRIER_SLACK_NS = 20_000_000
# The thread wakes at least this often, whatever the clock says (an injected clock may jump).
_MAX_POLL = 1.0
# scan_interval="auto": with exec events the scan is only a safety net (a 10 s period); without
# them (a container, --process-events=off) it is what sees processes at all, so it runs as often
# as costs at most 1 % of a CPU (100 times its own last duration), but not more than 10 times a
# second: a container of a few dozen processes is listed in well under a millisecond.
AUTO = "auto"
_AUTO_WITH_EVENTS = 10.0
_AUTO_MIN = 0.1
_AUTO_COST_FACTOR = 100
# The clock tick of /proc/PID/stat's start time (field 22).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# lookup_by_cgroup(): how often a candidate's /proc entry is looked at while waiting for it to die.
_DEATH_POLL = 0.005


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


# One process's entry: a plain tuple, never mutated (an update stores a new one). Plain
# tuples of bytes, ints, str and None are untracked by the garbage collector after their
# first collection; measured here, 60,000 entries as __slots__ objects added 8 ms to every
# full collection (a pause of the exec hot path too: the GIL), as tuples 0.1 ms.
_CMD = 0  # cmdline: raw bytes, NULs included; None: no argv (see _NOTE)
_COMM = 1  # comm bytes, or None if the process was gone before its stat was read
_START = 2  # start time (field 22 of stat), or None (inherited on fork)
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
# before a kill cannot be its victim (lookup_by_cgroup).
_GONE = 9


def _entry(cmdline: Optional[bytes], comm: Optional[bytes], start_time: Optional[int],
           source: str, read_ns: int, ino: Optional[int] = None,
           note: Optional[str] = None, cgroup: Optional[str] = None) -> tuple:
    return (cmdline, comm, start_time, source, read_ns, ino, None, note, cgroup, None)


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


def read_memory_cgroup(path: str) -> Optional[str]:
    """The memory cgroup from /proc/PID/cgroup: the v1 `memory` hierarchy's line, else the
    unified (v2) `0::` line. None if the process is gone or the file unreadable."""
    try:
        fd = os.open(path, _O_READ)
    except OSError:
        return None
    try:
        data = os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)
    unified = None
    for line in data.split(b"\n"):
        hid, _, rest = line.partition(b":")
        controllers, _, cgpath = rest.partition(b":")
        if b"memory" in controllers.split(b","):
            return sys.intern(cgpath.decode("utf-8", "surrogateescape"))
        if hid == b"0" and not controllers:
            unified = cgpath
    return sys.intern(unified.decode("utf-8", "surrogateescape")) if unified is not None else None


def split_cmdline(raw: Optional[bytes]) -> Optional[List[bytes]]:
    """/proc/PID/cmdline as argv: split on NUL, the one trailing NUL removed. Empty: None."""
    if not raw:
        return None
    if raw[-1] == 0:
        raw = raw[:-1]
    return raw.split(b"\0")


class ProcStat(NamedTuple):
    """What the cache needs of /proc/PID/stat (proc(5))."""

    comm: bytes  # field 2, without its parentheses
    state: bytes  # field 3: R, S, D, Z, X, ...
    flags: int  # field 9: PF_* flags
    start_time: int  # field 22: clock ticks since boot


# Two clocks meet when a victim's start time is checked against its kill. /proc/PID/stat's start
# time (field 22) counts the time the machine was suspended: it is CLOCK_BOOTTIME (copy_process()
# has made it boot-based since 2.6.2x, `monotonic_to_bootbased(&p->real_start_time)`; 3.17:
# ktime_get_boot_ns(); 5.5 renamed it task->start_boottime, cf25e24db61c; 5.6 adds the time
# namespace's offset, timens_add_boottime_ns(), in fs/proc/array.c). The kernel log's timestamp
# does not: printk stamps records with local_clock(), which stops in suspend, as CLOCK_MONOTONIC
# does. After a suspend, every process started before it looks that much younger to the log's
# clock. /proc/uptime is CLOCK_BOOTTIME too (fs/proc/uptime.c: ktime_get_boottime_ts64), so
# uptime minus CLOCK_MONOTONIC is the time suspended, read from the same /proc as the start times.

def read_uptime_us(proc_root: str = "/proc") -> Optional[int]:
    """/proc/uptime's first field (seconds with two decimals, CLOCK_BOOTTIME) in µs; None if unreadable."""
    try:
        with open(os.path.join(proc_root, "uptime"), "rb") as f:
            whole, _, frac = f.read(64).split(None, 1)[0].partition(b".")
        return int(whole) * 1_000_000 + int((frac + b"000000")[:6])
    except (OSError, ValueError, IndexError):
        return None


def suspended_us(proc_root: str = "/proc", monotonic_ns: Callable[[], int] = time.monotonic_ns) -> int:
    """How long this boot was suspended so far, in µs: CLOCK_BOOTTIME (/proc/uptime) minus
    CLOCK_MONOTONIC. /proc/uptime is cut to 10 ms, so its upper end is taken: a victim is never
    refused for the rounding (a process is at most 10 ms more readily believed older)."""
    uptime = read_uptime_us(proc_root)
    if uptime is None:
        return 0
    return max(0, uptime + 10_000 - monotonic_ns() // 1000)


def start_time_us(start_ticks: int, suspended: int) -> int:
    """Field 22 (clock ticks of CLOCK_BOOTTIME) on the kernel log's clock (µs of CLOCK_MONOTONIC).

    With the time suspended so far: a process that started before a suspend is placed
    correctly; one started after a suspend that came after the kill is placed too early, which
    can only make it look like the victim when its pid and comm are the victim's as well."""
    return start_ticks * 1_000_000 // CLOCK_TICKS - suspended


def parse_stat(data: bytes) -> Optional[ProcStat]:
    """Parse a /proc/PID/stat line, or None if it is not one.

    The comm is split at the LAST ')': it may itself contain ')', '(' and spaces, and
    nothing after it can (fs/proc/array.c do_task_stat; prometheus_client does the same).
    """
    lp = data.find(b"(")
    rp = data.rfind(b")")
    if lp < 0 or rp < lp:
        return None
    fields = data[rp + 2:].split(None, 20)  # fields[0] is field 3, fields[19] field 22
    if len(fields) < 20:
        return None
    try:
        return ProcStat(data[lp + 1:rp], fields[0], int(fields[6]), int(fields[19]))
    except ValueError:
        return None


def read_cmdline(path: str, limit: int) -> Optional[bytes]:
    """The whole file, read until EOF (a cmdline can be megabytes, not 4 KiB), or None if
    the process is gone. Stops reading once past `limit` bytes: the caller checks the length."""
    try:
        fd = os.open(path, _O_READ)
    except OSError as e:
        if e.errno in _GONE_ERRNOS:
            return None
        raise
    try:
        data = os.read(fd, _FIRST_READ)
        if not data:
            return data
        chunks = [data]
        total = len(data)
        while total <= limit:
            more = os.read(fd, _NEXT_READ)
            if not more:
                break
            chunks.append(more)
            total += len(more)
        return data if len(chunks) == 1 else b"".join(chunks)
    except OSError as e:
        if e.errno in _GONE_ERRNOS:
            return None
        raise
    finally:
        os.close(fd)


def read_stat(path: str) -> Optional[ProcStat]:
    """/proc/PID/stat parsed, or None if the process is gone."""
    try:
        fd = os.open(path, _O_READ)
    except OSError as e:
        if e.errno in _GONE_ERRNOS:
            return None
        raise
    try:
        data = os.read(fd, 4096)
        # One line of ~52 fields, well under 4 KiB, produced by one seq_file show: a line that
        # ends in its newline is complete; read on otherwise.
        while data and not data.endswith(b"\n"):
            more = os.read(fd, 4096)
            if not more:
                break
            data += more
    except OSError as e:
        if e.errno in _GONE_ERRNOS:
            return None
        raise
    finally:
        os.close(fd)
    return parse_stat(data)


def kernel_comm(comm: Union[str, bytes]) -> bytes:
    """The bytes the kernel printed: a str from the log source carries non-UTF-8 bytes as
    surrogate escapes (model.KernelLine); at most the first 15 bytes count."""
    if isinstance(comm, str):
        try:
            comm = comm.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            comm = comm.encode("utf-8", "surrogatepass")
    return bytes(comm[:KERNEL_COMM_LEN])


def _show(comm: Optional[bytes]) -> str:
    if comm is None:
        return "unknown"
    return "'" + comm.decode("utf-8", "backslashreplace") + "'"


def _decode(comm: Optional[bytes]) -> Optional[str]:
    return None if comm is None else comm.decode("utf-8", "surrogateescape")


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

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # pid -> entry, oldest first (insertion order; a replaced entry moves to the end).
        self._entries: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()
        # (expires, pid) in exit order: expiry, and the first to go when the cache is full.
        # A record whose entry was since replaced no longer matches its `expires`; skipped.
        self._exited: Deque[Tuple[float, int]] = collections.deque()
        self._bytes = 0

        self._connector: Optional[ProcConnector] = None
        self._connector_status = "not started"
        self._thread: Optional[threading.Thread] = None
        self._wake_fd = -1
        self._started = False
        self._stopping = False
        self._stopped = False
        # Barrier: CLOCK_MONOTONIC ns of the start of the last receive that found the socket
        # empty; every event queued before that instant has been applied. And the kernel
        # timestamp of the last event applied, for when the socket is never empty.
        self._drained_ns = 0
        self._applied_ns = 0
        self._barrier_waiters = 0
        # Scan scheduling (clock time) and requests.
        self._next_scan = 0.0
        self._verify_pending = False
        self._last_verify = -math.inf
        self._scan_requested = 0
        self._scan_served = 0
        self._bounds_changed = False

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
            except (ConnectorUnavailable, OSError) as e:
                reason = e.reason if isinstance(e, ConnectorUnavailable) else str(e)
                self._connector_status = f"unavailable: {reason}"
                log.warning("connector unavailable: %s, falling back to /proc scanning", reason)
        else:
            self._connector_status = "disabled (use_connector=False)"
        try:
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
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

    def __enter__(self) -> "ProcessCache":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        """True while the thread runs (for a watchdog): started, not stopped, not dead."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    def scan_period(self) -> float:
        """Seconds between periodic scans: scan_interval, or what AUTO makes of it now."""
        interval = self._scan_interval
        if interval != AUTO:
            return interval
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
        exited = expires is not None
        if ecomm is not None and ecomm[:KERNEL_COMM_LEN] != kcomm:
            return CmdlineLookup(None, NOT_FOUND, start, _decode(ecomm),
                                 f"comm mismatch: cached {_show(ecomm)}, kernel {_show(kcomm)}")
        if cmdline is None:
            return CmdlineLookup(None, NOT_FOUND, start, _decode(ecomm),
                                 f"pid {pid} is cached but {note or _NOTE_EMPTY}")
        caveats = []
        if ecomm is None:
            caveats.append("comm not verified: the process was gone before its stat was read")
        if exited:
            caveats.append("the process has exited")
        return CmdlineLookup(split_cmdline(cmdline), source, start, _decode(ecomm),
                             "; ".join(caveats), cgroup)

    def _lookup_proc(self, pid: int, kcomm: bytes) -> CmdlineLookup:
        base = f"{self._root}/{pid}"
        cgroup = read_memory_cgroup(base + "/cgroup")  # first: see _read_entry
        try:
            cmdline = read_cmdline(base + "/cmdline", self._max_bytes)
            stat = read_stat(base + "/stat")
        except OSError as e:
            return CmdlineLookup(None, NOT_FOUND, note=f"{base} unreadable: {e}")
        if cmdline is None or stat is None:
            return CmdlineLookup(None, NOT_FOUND, note=f"{base} is gone")
        comm, start = stat.comm, stat.start_time
        if comm[:KERNEL_COMM_LEN] != kcomm:
            return CmdlineLookup(None, NOT_FOUND, start, _decode(comm),
                                 f"comm mismatch: {base} has {_show(comm)}, kernel {_show(kcomm)}")
        if len(cmdline) > self._max_bytes:
            return CmdlineLookup(None, NOT_FOUND, start, _decode(comm),
                                 f"{base}: {_NOTE_TOO_LARGE}")
        argv = split_cmdline(cmdline)
        if argv is None:
            return CmdlineLookup(None, NOT_FOUND, start, _decode(comm), f"{base}: {_NOTE_EMPTY}")
        return CmdlineLookup(argv, SOURCE_PROC, start, _decode(comm), cgroup=cgroup)

    def lookup_by_cgroup(self, comm: Union[str, bytes], kernel_cgroup: Optional[str],
                         killed_us: int, wait: float = 0.5, suspended: int = 0) -> CmdlineLookup:
        """The victim's command line when its pid cannot be looked up: in a pid namespace of its
        own (a container) the kernel's kill line names the victim by its host pid, which this
        /proc does not show, and there are no exec events (cn_proc serves only listeners in the
        initial pid namespace).

        The victim is the one process the cache saw whose comm is the kernel's, whose memory
        cgroup (as this cgroup namespace shows it) ends the kernel's path for the victim's, that
        was not seen gone before the kill nor started after it, and that has died: the kernel
        sends SIGKILL before it prints the kill line, so the victim dies first; a process of the
        same name and cgroup that still runs is not it. Candidates that still run are watched
        for up to `wait` seconds. Several dead ones: which one is unknown, none is given.
        killed_us is the kill line's timestamp (CLOCK_MONOTONIC); suspended: µs this boot was
        suspended (suspended_us()), to put the start times (CLOCK_BOOTTIME) on that clock.
        """
        if not kernel_cgroup:
            return CmdlineLookup(None, NOT_FOUND, note="the kernel did not name the victim's cgroup (its report "
                                                       "is rate-limited to 10 in 5 s), and in a pid namespace the "
                                                       "victim can only be matched by name and cgroup")
        kcomm = kernel_comm(comm)
        killed_ns = killed_us * 1000
        # Processes born since the last scan: the victim may be young (a scan reads new pids only).
        self.rescan(timeout=wait)
        latest_start = (killed_us + suspended + 2 * 1_000_000 // CLOCK_TICKS) * CLOCK_TICKS // 1_000_000
        with self._lock:
            candidates = [(pid, e) for pid, e in self._entries.items()
                          if e[_CMD] is not None and e[_COMM] is not None and e[_COMM][:KERNEL_COMM_LEN] == kcomm
                          and e[_CG] is not None and cgroup_ends(kernel_cgroup, e[_CG])
                          and (e[_GONE] is None or e[_GONE] >= killed_ns)
                          and (e[_START] is None or e[_START] <= latest_start)]
        where = f"{_show(kcomm)} in a cgroup ending {kernel_cgroup}"
        if not candidates:
            return CmdlineLookup(None, NOT_FOUND, note=f"no process {where} was seen by the /proc scan (in a pid "
                                                       "namespace, processes that live less than a scan are not)")
        deadline = time.monotonic() + wait
        while True:
            dead = [(pid, e) for pid, e in candidates if e[_GONE] is not None or self._has_died(pid, e)]
            if len(dead) == 1:
                pid, e = dead[0]
                return CmdlineLookup(split_cmdline(e[_CMD]), e[_SRC], e[_START], _decode(e[_COMM]),
                                     "matched by name and cgroup: in a pid namespace the kernel's pid is not "
                                     f"this namespace's (here it was {pid})", e[_CG])
            if dead:
                return CmdlineLookup(None, NOT_FOUND, note=f"{len(dead)} processes {where} died at the time of the "
                                                           "kill: which one was the victim is unknown")
            if time.monotonic() >= deadline:
                return CmdlineLookup(None, NOT_FOUND, note=f"{len(candidates)} process(es) {where} still ran "
                                                           f"{wait:g} s after the kill: none was the victim")
            time.sleep(_DEATH_POLL)

    def _has_died(self, pid: int, e: tuple) -> bool:
        """Whether the process of entry e is gone or exiting: its pid gone or another process's,
        a zombie, or its cmdline emptied (exit_mm(), early in do_exit())."""
        base = f"{self._root}/{pid}"
        try:
            stat = read_stat(base + "/stat")
            if stat is None or stat.start_time != e[_START] or stat.state in (b"Z", b"X"):
                return True
            return not read_cmdline(base + "/cmdline", 0)
        except OSError:
            return False  # unreadable is not dead

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
                timeout = min(max(due - now, 0.0), _MAX_POLL)
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
                if self._connector is not None:
                    self._drain()
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

    def _drain(self, budget: int = _DRAIN_BUDGET) -> None:
        conn = self._connector
        for _ in range(budget):
            if self._stopping:
                return
            started_ns = time.monotonic_ns()
            try:
                events = conn.receive()
            except EventsLost:
                # The queue overflowed: which processes were missed is unknown, so the next
                # scan verifies every pid's start time and comm (at once, at most 1/s).
                self._n_lost += 1
                self._verify_pending = True
                log.warning("process events connector: events lost (ENOBUFS); verifying /proc")
                continue
            except OSError as e:
                self._connector_failed(e)
                return
            if events is None:
                with self._cond:
                    self._drained_ns = started_ns
                    if self._barrier_waiters:
                        self._cond.notify_all()
                return
            for ev in events:
                self._n_events += 1
                kind = type(ev)
                if kind is ExecEvent:
                    self._on_exec(ev)
                elif kind is ForkEvent:
                    self._on_fork(ev)
                elif kind is ExitEvent:
                    self._on_exit(ev)
                elif kind is CommEvent:
                    self._on_comm(ev)
            if events:
                self._applied_ns = events[-1].timestamp_ns
                if self._barrier_waiters:
                    with self._cond:
                        self._cond.notify_all()

    def _connector_failed(self, e: OSError) -> None:
        reason = f"receive failed: {e}"
        log.warning("connector unavailable: %s, falling back to /proc scanning", reason)
        conn, self._connector = self._connector, None
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
        entry = self._read_entry(pid, SOURCE_EXEC, read_ns)
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
        self._insert(ev.child_tgid, _entry(parent[_CMD], parent[_COMM], None, SOURCE_FORK,
                                           ev.timestamp_ns, cgroup=parent[_CG]))

    def _on_exit(self, ev: ExitEvent) -> None:
        if ev.pid != ev.tgid:
            return  # a thread; the process lives on
        e = self._entries.get(ev.tgid)
        if e is None or e[_EXP] is not None or e[_READ] > ev.timestamp_ns:
            return  # unknown, already exited, or an entry read after this exit
        self._mark_exited(ev.tgid, e)

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
        listing = []
        with os.scandir(self._root) as it:
            for d in it:
                name = d.name
                if name.isdigit() and name.isascii():
                    listing.append((int(name), d.inode()))
        entries = self._entries
        drain = self._connector is not None
        reads = 0
        for pid, ino in listing:
            e = entries.get(pid)
            if e is None:
                entry = self._read_entry(pid, SOURCE_SCAN, time.monotonic_ns(), ino)
                reads += 1
                if entry is not None:
                    self._insert(pid, entry)
            elif verify or (e[_INO] is not None and e[_INO] != ino):
                reads += 1
                self._check_known(pid, e, ino)
            elif e[_INO] is None and e[_READ] < list_ns:
                self._update(pid, e, _INO, ino)  # first sighting of an entry made from events
            if drain and reads >= _SCAN_DRAIN_EVERY:
                reads = 0
                self._drain()
                drain = self._connector is not None
        listed = {pid for pid, _ in listing}
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
        if e[_START] == start and (e[_COMM] == comm or e[_EXP] is not None):
            self._update(pid, e, _INO, ino)
            return
        entry = self._read_entry(pid, SOURCE_SCAN, read_ns, ino)
        if entry is not None:
            self._insert(pid, entry)

    def _read_entry(self, pid: int, source: str, read_ns: int,
                    ino: Optional[int] = None) -> Optional[tuple]:
        """Read /proc/PID: cmdline first (it empties at exit_mm(), early in do_exit), then
        stat (a zombie's stays readable until it is reaped). None if already gone."""
        base = f"{self._root}/{pid}"
        # The cgroup first: an exiting task is moved to the root cgroup (cgroup_exit(), late in
        # do_exit()), after exit_mm() has emptied its cmdline; read in this order, a cgroup that
        # comes with a cmdline is the process's own (a burst of young victims showed "/" otherwise).
        cgroup = read_memory_cgroup(base + "/cgroup")
        try:
            cmdline = read_cmdline(base + "/cmdline", self._max_bytes)
            if cmdline is None:
                return None
            stat = read_stat(base + "/stat")
        except OSError as e:
            # EACCES (hidepid=, a non-root daemon), EIO: unreadable is not a reason to stop.
            self._n_read_errors += 1
            log.debug("reading %s: %s", base, e)
            return None
        comm, start = (stat.comm, stat.start_time) if stat is not None else (None, None)
        note = None
        if len(cmdline) > self._max_bytes:
            cmdline, note = None, _NOTE_TOO_LARGE
        elif not cmdline:
            if (source == SOURCE_SCAN and stat is not None and not stat.flags & PF_KTHREAD
                    and stat.state not in (b"Z", b"X")):
                # A user process with no argv yet: in the middle of execve(), between
                # exec_mmap() (which wakes a vfork parent) and create_elf_tables() (which
                # sets mm->arg_start): seen by this test suite. Not cached, so the next
                # scan reads it again; its exec event, if any, reads it first.
                return None
            cmdline = None
        return _entry(cmdline, comm, start, source, read_ns, ino, note, cgroup)

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
            self._entries[pid] = e[:_EXP] + (expires,) + e[_EXP + 1:_GONE] + (gone_ns,)
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
