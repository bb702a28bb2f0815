"""The data that flows through the daemon, and the names every output shares. A leaf module.

source (KernelLine) -> parser (KernelKill) -> enrichment (OomEvent) -> journal, outbox, sinks
"""
from __future__ import annotations

from oom_journal.records import dataclass
from typing import Optional

# Ours: generated once for this project (uuid4), registered in systemd/oom-journal.catalog.
MESSAGE_ID = "5ce425e9fe7448d7b3e56b5a76b5911a"
SYSLOG_IDENTIFIER = "oom-journal"
# Version of the JSON event document (README, "Event document").
SCHEMA_VERSION = 1
# Who killed: the kernel's OOM killer, or a userspace killer whose journal entries the journal
# source reads (sources/killers.py). The event's `killer`, journal field OOM_KILLER.
KILLER_KERNEL = "kernel"
KILLER_OOMD = "systemd-oomd"
KILLER_EARLYOOM = "earlyoom"
KILLER_NOHANG = "nohang"
KILLERS = (KILLER_KERNEL, KILLER_OOMD, KILLER_EARLYOOM, KILLER_NOHANG)


@dataclass(frozen=True)
class Resume:
    """Where a source starts reading: at `position` (inclusive) or just after it."""

    position: object
    inclusive: bool


@dataclass(frozen=True)
class HostInfo:
    """Facts about this machine that go into every event."""

    hostname: str
    boot_id: str  # 32 hex digits, the form the journal uses in _BOOT_ID
    kernel: Optional[str]  # None where unknown (`oom-journal show` of another machine's journal)


@dataclass(frozen=True)
class KernelLine:
    """One kernel log record, as either source delivers it."""

    # The message text, with /dev/kmsg's \\xNN escapes already undone; bytes that are not
    # UTF-8 are kept as surrogate escapes (decode(errors="surrogateescape")) so no byte is lost.
    message: str
    # The kernel's own timestamp of the record: microseconds of its monotonic clock since boot
    # (kmsg's third field; the journal's _SOURCE_MONOTONIC_TIMESTAMP is the same number).
    timestamp_us: int
    # kmsg's sequence number. None when read from the journal: journald does not store it.
    seq: Optional[int] = None
    # Where this record sits in its source (a journal cursor, or the kmsg sequence number);
    # opaque to everything but the source that made it.
    position: object = None
    priority: int = 6


@dataclass(frozen=True)
class KillerLine:
    """One journal entry of a userspace OOM killer, or PID 1's count of systemd-oomd's kill,
    that the journal source trusted (sources/killers.py)."""

    killer: str  # KILLER_OOMD, KILLER_EARLYOOM or KILLER_NOHANG
    message: str
    # The entry's __MONOTONIC_TIMESTAMP: when journald received it, µs of CLOCK_MONOTONIC (the
    # kernel log's clock); stored in the entry, so the same on every read of it.
    timestamp_us: int
    position: object = None  # its journal cursor
    from_pid1: bool = False  # PID 1's `systemd-oomd killed N process(es) in this unit.`
    unit: Optional[str] = None  # PID 1's UNIT=
    n_processes: Optional[int] = None  # PID 1's N_PROCESSES=


@dataclass
class KernelKill:
    """What the kernel said about one OOM kill, assembled from the lines of its report."""

    # 'Out of memory', 'Memory cgroup out of memory' or 'Out of memory (oom_kill_allocating_task)'
    reason: str
    pid: int
    comm: str  # at most 15 bytes in the kernel; may contain spaces, '(' and ')'
    timestamp_us: int  # of the kill line
    seq: Optional[int] = None  # of the kill line, when the source has it
    uid: Optional[int] = None
    total_vm_kb: Optional[int] = None
    anon_rss_kb: Optional[int] = None
    file_rss_kb: Optional[int] = None
    shmem_rss_kb: Optional[int] = None
    pgtables_kb: Optional[int] = None
    oom_score_adj: Optional[int] = None
    constraint: Optional[str] = None  # CONSTRAINT_NONE / _CPUSET / _MEMORY_POLICY / _MEMCG
    global_oom: Optional[bool] = None
    oom_memcg: Optional[str] = None  # the cgroup whose limit was reached
    task_memcg: Optional[str] = None  # the victim's own memory cgroup
    cpuset: Optional[str] = None
    mems_allowed: Optional[str] = None
    memcg_usage_kb: Optional[int] = None
    memcg_limit_kb: Optional[int] = None
    # The task whose allocation invoked the OOM killer (not the victim).
    trigger_comm: Optional[str] = None
    trigger_pid: Optional[int] = None
    trigger_gfp_mask: Optional[str] = None
    trigger_order: Optional[int] = None
    trigger_oom_score_adj: Optional[int] = None
    # The kill line itself, verbatim.
    kill_message: str = ""
    # A member of a memory.oom.group kill (not its first victim, whose kill line comes before
    # "Tasks in <cg> are going to be killed due to memory.oom.group set"): that <cg>.
    oom_group: Optional[str] = None
    # Who killed (KILLERS); for a userspace killer the fields above are what its line said
    # (reason: the killer's own words; timestamp_us: its journal entry's), the rest is None.
    killer: str = KILLER_KERNEL
    killer_message: str = ""  # a userspace killer's line, verbatim
