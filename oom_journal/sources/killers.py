"""Which journal entries are a userspace OOM killer's own, and the KillerLine of each.

Anyone can send journald an entry with SYSLOG_IDENTIFIER=earlyoom (`logger -t earlyoom`,
`systemd-cat -t earlyoom`): the identifier is the sender's to choose. The fields journald adds
itself (_UID, _PID, _COMM, _EXE, _SYSTEMD_UNIT: from the socket's credentials and /proc of the
sender, systemd.journal-fields(7) "Trusted Journal Fields") are not. So an entry is a killer's
when its trusted fields say so:
- _COMM is the killer's (the kernel's name of the sending process), and for the two compiled
  killers _EXE's file name too (nohang is a Python script: _EXE is the interpreter; its comm is
  the script's name, which the kernel takes from the file executed);
- and it runs as root (_UID=0), or in the killer's own system unit (_SYSTEMD_UNIT, from the
  sender's cgroup, which only PID 1, root, puts processes in). The packaged killers do not run
  as root: Debian 12's systemd-oomd.service has User=systemd-oom, earlyoom.service DynamicUser=yes
  (read from the units in Debian 12's packages), so the unit is what vouches for them there.
PID 1's count of systemd-oomd's kill: MESSAGE_ID d989611b15e44c9dbf31e3c81256e4ed from _PID=1,
_UID=0.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from oom_journal.model import KILLER_EARLYOOM, KILLER_NOHANG, KILLER_OOMD, KillerLine
from oom_journal.sources.journal_fields import field, int_field

log = logging.getLogger(__name__)

# systemd's catalog, SD_MESSAGE_UNIT_OOMD_KILL: "systemd-oomd killed N process(es) in this unit."
OOMD_UNIT_KILL_ID = "d989611b15e44c9dbf31e3c81256e4ed"
# SYSLOG_IDENTIFIER -> (its _COMM, its _EXE's file name or None, the system units it runs in).
KILLER_IDENTITIES = {
    KILLER_OOMD: ("systemd-oomd", "systemd-oomd", ("systemd-oomd.service",)),
    KILLER_EARLYOOM: ("earlyoom", "earlyoom", ("earlyoom.service",)),
    KILLER_NOHANG: ("nohang", None, ("nohang.service", "nohang-desktop.service")),
}


def _text(r, name: str) -> Optional[str]:
    value = field(r, name)
    return None if value is None else value.decode("utf-8", "surrogateescape")


def trusted_killer(r) -> Optional[str]:
    """The killer whose entry the current one is (KILLER_*), or None."""
    killer = _text(r, "SYSLOG_IDENTIFIER")
    identity = KILLER_IDENTITIES.get(killer or "")
    if identity is None:
        return None
    comm, exe, units = identity
    if _text(r, "_COMM") != comm:
        return None
    if exe is not None and os.path.basename(_text(r, "_EXE") or "") != exe:
        return None
    if int_field(r, "_UID") != 0 and _text(r, "_SYSTEMD_UNIT") not in units:
        return None
    return killer


def killer_line_here(r, position: object = None) -> Optional[KillerLine]:
    """The current entry as a KillerLine, if a killer (or PID 1 counting oomd's kill) wrote it."""
    ts = int(r._get_monotonic()[0])
    message = _text(r, "MESSAGE") or ""
    message_id = (_text(r, "MESSAGE_ID") or "").replace("-", "")
    if message_id == OOMD_UNIT_KILL_ID:
        if int_field(r, "_PID") != 1 or int_field(r, "_UID") != 0:
            log.debug("not PID 1's: an entry with systemd-oomd's kill count from pid %s", int_field(r, "_PID"))
            return None
        return KillerLine(KILLER_OOMD, message, ts, position, from_pid1=True, unit=_text(r, "UNIT"),
                          n_processes=int_field(r, "N_PROCESSES"))
    killer = trusted_killer(r)
    if killer is None:
        log.debug("not believed: an entry as %r from uid %s comm %r", _text(r, "SYSLOG_IDENTIFIER"),
                  int_field(r, "_UID"), _text(r, "_COMM"))
        return None
    return KillerLine(killer, message, ts, position)
