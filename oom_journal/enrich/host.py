"""Facts about this machine that go into every event."""
from __future__ import annotations

import os
import socket

from oom_journal.model import HostInfo
from oom_journal.sources.journal_fields import read_boot_id

__all__ = ["read_boot_id", "read_host_info"]


def read_host_info(proc_root: str = "/proc") -> HostInfo:
    boot_id = read_boot_id(proc_root)
    if boot_id is None:
        raise OSError(f"cannot read {os.path.join(proc_root, 'sys/kernel/random/boot_id')}")
    return HostInfo(hostname=socket.gethostname(), boot_id=boot_id, kernel=os.uname().release)
