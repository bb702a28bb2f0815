"""Facts about this machine that go into every event."""
from __future__ import annotations

import os
import socket
from typing import Optional

from oom_journal.model import HostInfo


def read_boot_id(proc_root: str = "/proc") -> Optional[str]:
    """This boot's id in the journal's form (32 hex digits), or None where /proc has none."""
    try:
        with open(os.path.join(proc_root, "sys/kernel/random/boot_id")) as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return None


def read_host_info(proc_root: str = "/proc") -> HostInfo:
    boot_id = read_boot_id(proc_root)
    if boot_id is None:
        raise OSError(f"cannot read {os.path.join(proc_root, 'sys/kernel/random/boot_id')}")
    return HostInfo(hostname=socket.gethostname(), boot_id=boot_id, kernel=os.uname().release)
