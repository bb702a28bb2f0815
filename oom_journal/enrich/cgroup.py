"""What a cgroup path says about who owned a process: systemd unit, slice, container, pod.

The kernel prints the victim's memory cgroup (`task_memcg=` since 5.0, `Task in <cg>` before).
Paths seen (KERNEL-FORMATS.md, and the runtimes' own naming):
  /system.slice/nginx.service                              systemd unit
  /user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope
  /machine.slice/machine-ct.scope/system.slice/x.service   a container's units behind the host's prefix
  /system.slice/docker-<64 hex>.scope, /docker/<64 hex>     docker (systemd / cgroupfs driver)
  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
  /kubepods/burstable/pod<uid>/<64 hex>                     kubernetes, cgroupfs driver
  /machine.slice/libpod-<id>.scope, crio-<id>.scope          podman, cri-o
"""
from __future__ import annotations

import re
from oom_journal.records import dataclass
from typing import Optional

# Unit types that can hold processes (systemd.unit(5)): services and scopes run programs; mount,
# swap and socket units run short-lived helpers (mount, swapon, ExecStartPre of sockets).
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap")
_HEX64 = r"[0-9a-f]{64}"
# (runtime, pattern for one path component)
_CONTAINER_PATTERNS = (
    ("docker", re.compile(rf"^docker-({_HEX64})\.scope$")),
    ("containerd", re.compile(rf"^cri-containerd-({_HEX64})\.scope$")),
    ("cri-o", re.compile(rf"^crio-({_HEX64})\.scope$")),
    ("podman", re.compile(rf"^libpod-({_HEX64})\.scope$")),
)
_POD_SYSTEMD = re.compile(r"^kubepods(?:-[a-z]+)?-pod([0-9a-f_]{36})\.slice$")
_POD_CGROUPFS = re.compile(r"^pod([0-9a-f-]{36})$")
_BARE_ID = re.compile(rf"^(?:[a-z-]+-)?({_HEX64})$")


@dataclass(frozen=True)
class CgroupInfo:
    path: Optional[str]
    unit: Optional[str] = None
    slice: Optional[str] = None
    container_id: Optional[str] = None
    container_runtime: Optional[str] = None
    pod_uid: Optional[str] = None


def describe_cgroup(path: Optional[str]) -> CgroupInfo:
    """Reads unit, slice, container and pod out of a cgroup path; unknown parts stay None."""
    if not path:
        return CgroupInfo(path=path)
    parts = [p for p in path.split("/") if p]
    unit = slice_ = container_id = runtime = pod_uid = None
    for i, part in enumerate(parts):
        if part.endswith(_UNIT_SUFFIXES):
            unit = part  # the deepest one wins: the innermost unit owns the process
        elif part.endswith(".slice"):
            slice_ = part
        m = _POD_SYSTEMD.match(part)
        if m:
            # The systemd driver writes the pod UID with '_' for '-' (a '-' means nesting in slice names).
            pod_uid = m.group(1).replace("_", "-")
            continue
        m = _POD_CGROUPFS.match(part)
        if m and i > 0 and parts[i - 1] in ("kubepods", "burstable", "besteffort", "guaranteed"):
            pod_uid = m.group(1)
            continue
        for name, pattern in _CONTAINER_PATTERNS:
            m = pattern.match(part)
            if m:
                container_id, runtime = m.group(1), name
                break
        else:
            m = _BARE_ID.match(part)
            if m and i > 0:
                parent = parts[i - 1]
                if parent == "docker":
                    container_id, runtime = m.group(1), "docker"
                elif parent in ("libpod_parent",) or part.startswith("libpod-"):
                    container_id, runtime = m.group(1), "podman"
                elif pod_uid is not None and parent.startswith("pod"):
                    # cgroupfs driver: /kubepods/<qos>/pod<uid>/<container id>; the runtime is not in the path.
                    container_id, runtime = m.group(1), "kubernetes"
    # A slice only counts if it encloses the unit (a slice below the unit is the unit's own sub-tree).
    if unit and slice_ and parts.index(slice_) > parts.index(unit):
        slice_ = next((p for p in reversed(parts[: parts.index(unit)]) if p.endswith(".slice")), None)
    return CgroupInfo(path=path, unit=unit, slice=slice_, container_id=container_id,
                      container_runtime=runtime, pod_uid=pod_uid)
