"""Readers and parsers of /proc: a process's cmdline, stat and memory cgroup, the kernel's comm,
and the clocks a start time is read on.

Pure functions: the files they read are their parameters (a path under a proc root, or the root
itself), so tests point them at fixture trees. Each per-process reader returns None when the
process is gone (ENOENT, ESRCH) and raises other OSErrors (EACCES under hidepid=, EIO): the
caller decides what unreadable means.
"""
from __future__ import annotations

import errno
import os
import re
import sys
import time
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

# include/linux/sched.h: "I am a kernel thread".
PF_KTHREAD = 0x00200000

# task->comm is char[TASK_COMM_LEN = 16] with its NUL: the kill line prints at most 15 bytes,
# while /proc/PID/stat can show more for kernel workers ("%.64s", fs/proc/array.c).
KERNEL_COMM_LEN = 15

# The clock tick of /proc/PID/stat's start time (field 22).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_GONE_ERRNOS = (errno.ENOENT, errno.ESRCH)
_O_READ = os.O_RDONLY | os.O_CLOEXEC
# Most command lines fit in the first read; the loop goes on until EOF for the rest.
_FIRST_READ = 16384
_NEXT_READ = 1 << 20


class ProcStat(NamedTuple):
    """What the cache needs of /proc/PID/stat (proc(5))."""

    comm: bytes  # field 2, without its parentheses
    state: bytes  # field 3: R, S, D, Z, X, ...
    flags: int  # field 9: PF_* flags
    start_time: int  # field 22: clock ticks since boot


# One bytes object per distinct comm, shared by every entry that has it: a machine's processes
# have few names (10,000 `sleep`s: 38 bytes each saved, 0.4 MiB). Bounded, since anyone names
# their processes: emptied when full, which only costs the sharing.
_COMMS: dict = {}
_COMMS_MAX = 4096


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
        flags, start = int(fields[6]), int(fields[19])
    except ValueError:
        return None
    comm = data[lp + 1:rp]
    shared = _COMMS.get(comm)
    if shared is None:
        if len(_COMMS) >= _COMMS_MAX:
            _COMMS.clear()
        shared = _COMMS[comm] = comm
    return ProcStat(shared, fields[0], flags, start)


def _read(path: str, first: int, more: int, limit: Optional[int]) -> Optional[bytes]:
    """The file read in chunks (`first` bytes, then `more` at a time) until EOF, or until past
    `limit` bytes, or (limit None) until a chunk ends a line; None if the process is gone. (Flags,
    not a callback: a lambda per read cost 5 % of read_cmdline's 2 µs, on the exec hot path.)
    A first read shorter than asked is the whole file: every /proc file read here answers a
    read with as much as it has, up to the count (fs/proc/base.c get_mm_cmdline() loops until
    the count or the arguments' end; seq_file's seq_read() fills the count from its buffer), so
    the read that would only return EOF is skipped (one syscall of each exec's four)."""
    try:
        fd = os.open(path, _O_READ)
    except OSError as e:
        if e.errno in _GONE_ERRNOS:
            return None
        raise
    try:
        data = last = os.read(fd, first)
        if len(data) < first:
            return data
        chunks = [data]
        total = len(data)
        while last and (total <= limit if limit is not None else not last.endswith(b"\n")):
            last = os.read(fd, more)
            if not last:
                break
            chunks.append(last)
            total += len(last)
        return data if len(chunks) == 1 else b"".join(chunks)
    except OSError as e:
        if e.errno in _GONE_ERRNOS:
            return None
        raise
    finally:
        os.close(fd)


def read_cmdline(path: str, limit: int) -> Optional[bytes]:
    """The whole file, read until EOF (a cmdline can be megabytes, not 4 KiB), or None if
    the process is gone. Stops reading once past `limit` bytes: the caller checks the length."""
    return _read(path, _FIRST_READ, _NEXT_READ, limit)


def read_stat(path: str) -> Optional[ProcStat]:
    """/proc/PID/stat parsed, or None if the process is gone."""
    # One line of ~52 fields, well under 4 KiB, produced by one seq_file show: a line that
    # ends in its newline is complete; read on otherwise.
    data = _read(path, 4096, 4096, None)
    return None if data is None else parse_stat(data)


def split_cmdline(raw: Optional[bytes]) -> Optional[List[bytes]]:
    """/proc/PID/cmdline as argv: split on NUL, the one trailing NUL removed. Empty: None."""
    if not raw:
        return None
    if raw[-1] == 0:
        raw = raw[:-1]
    return raw.split(b"\0")


# A /proc/PID/cgroup line "ID:CONTROLLERS:PATH" whose comma-separated controllers include
# "memory" (cgroup(7)); the path is the rest of the line.
_V1_MEMORY_LINE = re.compile(rb"^[0-9]+:(?:[^:\n]*,)?memory(?:,[^:\n]*)?:([^\n]*)$", re.M)


def read_memory_cgroup(path: str) -> Optional[str]:
    """The memory cgroup from /proc/PID/cgroup: the v1 `memory` hierarchy's line, else the
    unified (v2) `0::` line. None if the process is gone or the file unreadable."""
    try:
        # 4 KiB holds any cgroup v2 file but a path of that length (then read on): a 64 KiB
        # read allocated and shrank a 64 KiB buffer at every exec.
        data = _read(path, 4096, 65536, 1 << 20)
    except OSError:
        return None
    if data is None:
        return None
    if data.startswith(b"0::") and data.find(b"\n") == len(data) - 1:
        # cgroup v2 only (the usual case today): its one line, without the parsing loop.
        return sys.intern(data[3:-1].decode("utf-8", "surrogateescape"))
    # cgroup v1: the `memory` hierarchy's line, found by one regular expression search (the
    # loop below is 4 us of Python per exec on a host with a dozen hierarchies; bench/run).
    m = _V1_MEMORY_LINE.search(data)
    if m is not None:
        return sys.intern(m.group(1).decode("utf-8", "surrogateescape"))
    unified = None
    for line in data.split(b"\n"):
        hid, _, rest = line.partition(b":")
        controllers, _, cgpath = rest.partition(b":")
        if b"memory" in controllers.split(b","):
            return sys.intern(cgpath.decode("utf-8", "surrogateescape"))
        if hid == b"0" and not controllers:
            unified = cgpath
    return sys.intern(unified.decode("utf-8", "surrogateescape")) if unified is not None else None


class ProcessFiles(NamedTuple):
    """One process's /proc/PID files, read in read_process()'s order."""

    cgroup: Optional[str]  # None: unreadable
    cmdline: bytes  # possibly empty, possibly longer than the limit (the caller checks)
    stat: Optional[ProcStat]  # None: gone between the cmdline and the stat


def read_exec_files(base: str, limit: int) -> Optional[Tuple[Optional[str], bytes]]:
    """What an exec event needs at once of /proc/PID (base): its memory cgroup and command line,
    in read_process()'s order and for its reasons; None if gone before its cmdline was read."""
    cgroup = read_memory_cgroup(base + "/cgroup")
    cmdline = read_cmdline(base + "/cmdline", limit)
    if cmdline is None:
        return None
    return cgroup, cmdline


def read_process(base: str, limit: int) -> Optional[ProcessFiles]:
    """/proc/PID (base) read: cgroup, cmdline (up to past `limit` bytes), stat. None if the
    process is gone before its cmdline was read; OSError if a file is unreadable."""
    # The cgroup first: an exiting task is moved to the root cgroup (cgroup_exit(), late in
    # do_exit()), after exit_mm() has emptied its cmdline; read in this order, a cgroup that
    # comes with a cmdline is the process's own (a burst of young victims showed "/" otherwise).
    # Then cmdline (it empties at exit_mm(), early in do_exit), then stat (a zombie's stays
    # readable until it is reaped).
    files = read_exec_files(base, limit)
    if files is None:
        return None
    return ProcessFiles(files[0], files[1], read_stat(base + "/stat"))


def kernel_comm(comm: Union[str, bytes]) -> bytes:
    """The bytes the kernel printed: a str from the log source carries non-UTF-8 bytes as
    surrogate escapes (model.KernelLine); at most the first 15 bytes count."""
    if isinstance(comm, str):
        try:
            raw = comm.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = comm.encode("utf-8", "surrogatepass")
    else:
        raw = comm
    return bytes(raw[:KERNEL_COMM_LEN])


def show_comm(comm: Optional[bytes]) -> str:
    """A comm quoted for a note, or "unknown"."""
    if comm is None:
        return "unknown"
    return "'" + comm.decode("utf-8", "backslashreplace") + "'"


def decode_comm(comm: Optional[bytes]) -> Optional[str]:
    """A comm as a str, non-UTF-8 bytes surrogate-escaped."""
    return None if comm is None else comm.decode("utf-8", "surrogateescape")


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


# Start times are whole ticks and the log's timestamps µs: a process is believed to have started
# after a kill only when it started two ticks (20 ms at 100 Hz) after it, the rounding of both.
START_SLACK_US = 2 * 1_000_000 // CLOCK_TICKS


def started_after(start_ticks: int, killed_us: int, suspended: int) -> bool:
    """Whether a process with this start time (field 22) started after a kill logged at killed_us
    (CLOCK_MONOTONIC µs), this boot having been suspended `suspended` µs (suspended_us())."""
    return start_time_us(start_ticks, suspended) > killed_us + START_SLACK_US
