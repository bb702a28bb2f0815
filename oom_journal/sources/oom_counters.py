"""The kernel's own counts of its OOM kills: the second witness's numbers (../shared/KERNEL-FORMATS.md).

- /proc/vmstat `oom_kill` (4.13+, commit 8e675f7af507): every kernel OOM kill since boot,
  system-wide; count_vm_event(OOM_KILL) in __oom_kill_process(), next to the kill line's printk,
  which the report's ratelimit does not hold back. A kill line lost to a log overrun (kmsg's,
  or journald's "Missed N kernel messages") still counts here.
- a memory cgroup's own count: cgroup v2 `memory.events` `oom_kill` (hierarchical), cgroup v1
  `memory.oom_control` `oom_kill` (4.13+). memcg_memory_event_mm(mm, MEMCG_OOM_KILL), the same
  place: it says in which cgroup a kill was.
Userspace killers (systemd-oomd, earlyoom) raise none of them.
"""
from __future__ import annotations

import os
from typing import Optional


def _field(data: bytes, name: bytes) -> Optional[int]:
    for line in data.split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read(65536)
    except OSError:
        return None


def vmstat_oom_kills(proc_root: str = "/proc") -> Optional[int]:
    """/proc/vmstat's oom_kill, or None (a kernel before 4.13, or /proc unreadable)."""
    data = _read(os.path.join(proc_root, "vmstat"))
    return None if data is None else _field(data, b"oom_kill")


class CgroupCounters:
    """The oom_kill count of a memory cgroup, by the path /proc/PID/cgroup gives (the memory
    line on v1, the 0:: line on v2). cgroup_root is the filesystem root of both layouts."""

    def __init__(self, cgroup_root: str = "/sys/fs/cgroup"):
        self.root: Optional[str]
        self.file: Optional[str]
        self.layout: Optional[str]
        v1 = os.path.join(cgroup_root, "memory")
        if os.path.exists(os.path.join(v1, "memory.oom_control")) or os.path.exists(os.path.join(v1, "memory.limit_in_bytes")):
            self.root, self.file, self.layout = v1, "memory.oom_control", "v1"
        elif os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
            self.root, self.file, self.layout = cgroup_root, "memory.events", "v2"
        else:
            self.root, self.file, self.layout = None, None, None

    def oom_kills(self, cgroup: Optional[str]) -> Optional[int]:
        """The cgroup's oom_kill, or None: no such counter (root cgroup on v2, an old kernel), the
        cgroup is gone (removed after its last process died), or no memory controller here."""
        if self.root is None or self.file is None or not cgroup:
            return None
        path = os.path.normpath(os.path.join(self.root, cgroup.lstrip("/"), self.file))
        if not path.startswith(self.root):
            return None  # a path with "..": not ours to read
        data = _read(path)
        return None if data is None else _field(data, b"oom_kill")
