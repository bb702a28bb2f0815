"""Facts about this machine that go into every event."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    boot_id: str  # 32 hex digits, the form the journal uses in _BOOT_ID
    kernel: str


def read_host_info(proc_root: str = "/proc") -> HostInfo:
    with open(os.path.join(proc_root, "sys/kernel/random/boot_id")) as f:
        boot_id = f.read().strip().replace("-", "")
    return HostInfo(hostname=socket.gethostname(), boot_id=boot_id, kernel=os.uname().release)
