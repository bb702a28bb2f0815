"""The kernel's own counts of its OOM kills: the second witness's numbers (../shared/KERNEL-FORMATS.md).

- /proc/vmstat `oom_kill` (4.13+, commit 8e675f7af507): every kernel OOM kill since boot,
  system-wide; count_vm_event(OOM_KILL) in __oom_kill_process(), next to the kill line's printk,
  which the report's ratelimit does not hold back. A kill line lost to a log overrun (kmsg's,
  or journald's "Missed N kernel messages") still counts here.
- a memory cgroup's own count: cgroup v2 `memory.events` `oom_kill` (hierarchical), cgroup v1
  `memory.oom_control` `oom_kill` (4.13+). memcg_memory_event_mm(mm, MEMCG_OOM_KILL), the same
  place: it says in which cgroup a kill was. On v2 it also counts in every ancestor below the
  root (memcg_memory_event() walks parent_mem_cgroup() unless cgroup2 is mounted with
  memory_localevents); v1's is the cgroup's own (the walk stops when memory is not on the
  default hierarchy). So on v2 a kill in a cgroup removed since (systemd removes a unit's cgroup
  as soon as its last process died: measured in Debian 12's guest, tests/test_vm.py) is still in
  its nearest remaining ancestor's count; on v1 it is gone with the cgroup.
Userspace killers (systemd-oomd, earlyoom) raise none of them.
"""
from __future__ import annotations

import os
from typing import Optional


def _field(data: bytes, name: bytes) -> Optional[int]:
    """The value of the `name value` line of a flat-keyed file (vmstat, memory.events), or None."""
    # A search, not a split of all ~190 lines of /proc/vmstat: this runs at every counter reading.
    at = 0 if data.startswith(name + b" ") else data.find(b"\n" + name + b" ")
    if at < 0:
        return None
    start = data.index(b" ", at + 1) + 1
    end = data.find(b"\n", start)
    try:
        return int(data[start:end if end >= 0 else len(data)])
    except ValueError:
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


def _localevents(proc_root: str, cgroup_root: str) -> bool:
    """Whether the cgroup2 mount at cgroup_root has memory_localevents (its super options, the
    field after the mount source in /proc/self/mountinfo: proc(5))."""
    data = _read(os.path.join(proc_root, "self", "mountinfo")) or b""
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == cgroup_root and " - cgroup2 " in line:
            return "memory_localevents" in line.rsplit(" - ", 1)[1].split()[-1].split(",")
    return False


class CgroupCounters:
    """The oom_kill count of a memory cgroup, by the path /proc/PID/cgroup gives (the memory
    line on v1, the 0:: line on v2). cgroup_root is the filesystem root of both layouts."""

    def __init__(self, cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc"):
        self.root: Optional[str]
        self.file: Optional[str]
        self.layout: Optional[str]
        self.hierarchical = False  # an ancestor's count includes its descendants' kills
        v1 = os.path.join(cgroup_root, "memory")
        if os.path.exists(os.path.join(v1, "memory.oom_control")) or os.path.exists(os.path.join(v1, "memory.limit_in_bytes")):
            self.root, self.file, self.layout = v1, "memory.oom_control", "v1"
        elif os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
            self.root, self.file, self.layout = cgroup_root, "memory.events", "v2"
            self.hierarchical = not _localevents(proc_root, cgroup_root)
        else:
            self.root, self.file, self.layout = None, None, None

    def oom_kills(self, cgroup: Optional[str]) -> Optional[int]:
        """The cgroup's oom_kill, or None: no such counter (root cgroup on v2, an old kernel), the
        cgroup is gone (removed after its last process died), or no memory controller here."""
        return self._read(cgroup)

    def counter(self, cgroup: Optional[str]) -> Optional[tuple]:
        """(the cgroup whose count was read, its oom_kill): the cgroup's own; when it is gone and
        the counts are hierarchical (v2), its nearest ancestor's below the root; else None."""
        if not cgroup:
            return None
        path = os.path.normpath("/" + cgroup.strip("/"))  # "/x/../.." is "/": never above the root
        while True:
            count = self._read(path)
            if count is not None:
                return path, count
            if not self.hierarchical or self.root is None or os.path.isdir(self._dir(path)):
                return None  # the cgroup exists but has no count: its ancestors' say nothing of it
            path = os.path.dirname(path)
            if path == "/":
                return None  # the root cgroup has no memory.events

    def _dir(self, cgroup: str) -> str:
        return os.path.normpath(os.path.join(self.root or "/", cgroup.lstrip("/")))

    def _read(self, cgroup: Optional[str]) -> Optional[int]:
        if self.root is None or self.file is None or not cgroup:
            return None
        directory = self._dir(cgroup)
        if directory != self.root and not directory.startswith(self.root + os.sep):
            return None  # a path with "..": not ours to read
        data = _read(os.path.join(directory, self.file))
        return None if data is None else _field(data, b"oom_kill")
