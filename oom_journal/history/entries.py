"""Journal entries, as python-systemd's Reader returns them with CONVERTERS, back into what wrote
them: our entry into the OomEvent the daemon had (event_from_entry: OomEvent.journal_fields()
reversed), a kernel entry into the KernelLine the parser takes."""
from __future__ import annotations

from typing import Optional

from oom_journal.enrich.cgroup import CgroupInfo
from oom_journal.enrich.containers import ContainerNames
from oom_journal.enrich.event import EVENT_ID_RE, OomEvent, current_event_id
from oom_journal.model import KILLER_KERNEL, HostInfo, KernelKill, KernelLine


# Fields kept as bytes: exact bytes matter (argv is NUL-separated; comms and cmdlines need not be
# UTF-8); python-systemd would otherwise decode what happens to be valid UTF-8 and not the rest.
_BYTES_FIELDS = ("MESSAGE", "OOM_ARGV", "OOM_CMDLINE", "OOM_COMM", "OOM_TRIGGER_COMM", "OOM_KERNEL_MESSAGE",
                 "OOM_CGROUP", "OOM_MEMCG", "OOM_CMDLINE_NOTE", "OOM_KILLER_MESSAGE")
CONVERTERS: dict = {name: bytes for name in _BYTES_FIELDS}
CONVERTERS.update({
    "__REALTIME_TIMESTAMP": int,  # µs since the epoch, not a datetime
    "__MONOTONIC_TIMESTAMP": lambda m: int(m[0]),  # µs since boot
    "_SOURCE_MONOTONIC_TIMESTAMP": int,
    "_BOOT_ID": lambda b: b.decode().replace("-", ""),
    "MESSAGE_ID": lambda b: b.decode().replace("-", ""),
})


def entry_value(entry: dict, key: str):
    """A field of an entry: its first value when it repeats (the Reader gives a list then)."""
    value = entry.get(key)
    if isinstance(value, list):
        return value[0] if value else None
    return value


def decode_value(value) -> Optional[str]:
    """A journal field's value as a str: bytes (the fields CONVERTERS keeps as bytes) decoded as
    UTF-8, each byte that is not UTF-8 as a surrogate escape, so none is lost (the journal's
    exact bytes again: text.journal_bytes()); any other value through str()."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _int(value) -> Optional[int]:
    """A journal field's value as an int; None when it is not one."""
    if value is None:
        return None
    try:
        return int(decode_value(value) or "")
    except ValueError:
        return None


def kill_time(entry: dict, kernel_ts_us: int) -> float:
    """Wall-clock time of a kernel timestamp, from an entry of the same boot.

    The same conversion as event.kernel_time_to_realtime(), with the entry's own pair of clocks
    (journald stamps each entry with both) instead of "now": deterministic, and the same for
    our entry and for the kernel's kill line to within the clocks' drift.
    """
    realtime = entry_value(entry, "__REALTIME_TIMESTAMP")
    monotonic = entry_value(entry, "__MONOTONIC_TIMESTAMP")
    if realtime is None:
        return 0.0
    if monotonic is None:
        return realtime / 1e6
    return (realtime - (monotonic - kernel_ts_us)) / 1e6


def kernel_line(entry: dict) -> Optional[KernelLine]:
    """A kernel entry as the parser takes it; None for lines userspace wrote to /dev/kmsg."""
    if _int(entry_value(entry, "SYSLOG_FACILITY")) not in (None, 0):
        return None
    message = decode_value(entry_value(entry, "MESSAGE")) or ""
    ts = entry_value(entry, "_SOURCE_MONOTONIC_TIMESTAMP")
    if ts is None:
        ts = entry_value(entry, "__MONOTONIC_TIMESTAMP") or 0
    return KernelLine(message=message, timestamp_us=int(ts), seq=None, position=entry_value(entry, "__CURSOR"),
                      priority=_int(entry_value(entry, "PRIORITY")) or 6)


def entry_here(r) -> dict:
    """The current entry, as Reader.get_next() would have returned it."""
    entry = r._get_all()
    entry["__REALTIME_TIMESTAMP"] = r._get_realtime()
    entry["__MONOTONIC_TIMESTAMP"] = r._get_monotonic()
    entry["__CURSOR"] = r._get_cursor()
    return r._convert_entry(entry)


def event_from_entry(entry: dict) -> Optional[OomEvent]:
    """Our journal entry back into the OomEvent that wrote it (OomEvent.journal_fields(), reversed).

    None for an entry that is not a kill (no OOM_PID or OOM_KERNEL_TIMESTAMP_USEC).
    """
    def text(key):
        return decode_value(entry_value(entry, key))

    def num(key):
        return _int(entry_value(entry, key))

    pid, ts = num("OOM_PID"), num("OOM_KERNEL_TIMESTAMP_USEC")
    unseen = num("OOM_UNSEEN_KILLS")  # kills the second witness counted, victim unknown: no pid
    if unseen is not None and pid is None:
        pid = 0
    if pid is None or ts is None:
        return None
    glob_flag = num("OOM_GLOBAL")
    kill = KernelKill(
        reason=text("OOM_REASON") or "",
        pid=pid,
        comm=text("OOM_COMM") or "",
        timestamp_us=ts,
        seq=num("OOM_KERNEL_SEQNUM"),
        uid=num("OOM_UID"),
        total_vm_kb=num("OOM_TOTAL_VM_KB"),
        anon_rss_kb=num("OOM_ANON_RSS_KB"),
        file_rss_kb=num("OOM_FILE_RSS_KB"),
        shmem_rss_kb=num("OOM_SHMEM_RSS_KB"),
        pgtables_kb=num("OOM_PGTABLES_KB"),
        oom_score_adj=num("OOM_SCORE_ADJ"),
        constraint=text("OOM_CONSTRAINT"),
        global_oom=None if glob_flag is None else bool(glob_flag),
        oom_memcg=text("OOM_MEMCG"),
        # OOM_CGROUP is the kernel's task_memcg unless the daemon took it from /proc (ratelimit)
        task_memcg=text("OOM_CGROUP") if text("OOM_CGROUP_SOURCE") != "proc" else None,
        cpuset=text("OOM_CPUSET"),
        memcg_usage_kb=num("OOM_MEMCG_USAGE_KB"),
        memcg_limit_kb=num("OOM_MEMCG_LIMIT_KB"),
        trigger_comm=text("OOM_TRIGGER_COMM"),
        trigger_pid=num("OOM_TRIGGER_PID"),
        trigger_gfp_mask=text("OOM_TRIGGER_GFP_MASK"),
        trigger_order=num("OOM_TRIGGER_ORDER"),
        kill_message=text("OOM_KERNEL_MESSAGE") or "",
        killer=text("OOM_KILLER") or KILLER_KERNEL,  # entries before 0.x had no OOM_KILLER: the kernel's
        killer_message=text("OOM_KILLER_MESSAGE") or "",
    )
    entry_boot = text("_BOOT_ID") or ""
    event_id = current_event_id(text("OOM_EVENT_ID") or f"{entry_boot}-{ts}", pid)
    m = EVENT_ID_RE.match(event_id)
    boot_id = m.group(1) if m else entry_boot
    argv_raw = entry_value(entry, "OOM_ARGV")
    argv = None
    if argv_raw is not None:
        argv = _exact_bytes(argv_raw).split(b"\0")
    elif entry_value(entry, "OOM_CMDLINE") is not None:  # OOM_ARGV lost: one argument, exact bytes
        argv = [_exact_bytes(entry_value(entry, "OOM_CMDLINE"))]
    cgroup = CgroupInfo(path=text("OOM_CGROUP"), unit=text("OOM_UNIT"), slice=text("OOM_SLICE"),
                        container_id=text("OOM_CONTAINER_ID"), container_runtime=text("OOM_CONTAINER_RUNTIME"),
                        pod_uid=text("OOM_POD_UID"))
    names = None
    if text("OOM_CONTAINER_NAME") is not None or text("OOM_POD_NAME") is not None:
        names = ContainerNames(runtime=text("OOM_CONTAINER_RUNTIME") or "", container_name=text("OOM_CONTAINER_NAME"),
                               pod_name=text("OOM_POD_NAME"), pod_namespace=text("OOM_POD_NAMESPACE"))
    host = HostInfo(hostname=text("_HOSTNAME") or "", boot_id=boot_id, kernel=text("OOM_KERNEL_RELEASE"))
    # The kill happened in the boot of the event id; our entry is normally of the same boot.
    when = kill_time(entry, ts) if entry_boot == boot_id else (entry_value(entry, "__REALTIME_TIMESTAMP") or 0) / 1e6
    return OomEvent(kill=kill, host=host, time=when, argv=argv,
                    cmdline_source=text("OOM_CMDLINE_SOURCE") or ("not-found" if argv is None else "unknown"),
                    cmdline_note=text("OOM_CMDLINE_NOTE") or "", cgroup=cgroup, event_id=event_id,
                    cgroup_source=text("OOM_CGROUP_SOURCE"), names=names, kernel_report=text("OOM_KERNEL_REPORT"),
                    witness=text("OOM_WITNESS"), witness_note=text("OOM_WITNESS_NOTE"), unseen_kills=unseen,
                    completes=text("OOM_COMPLETES"))


def _exact_bytes(value) -> bytes:
    """A field CONVERTERS keeps as bytes; one a Reader without them gave as str, back to its bytes."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
