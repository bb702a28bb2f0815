"""The userspace OOM killers' journal lines -> what each killed (KillerAction).

The killers and their lines (../shared/KERNEL-FORMATS.md; README "Userspace OOM killers"):
- earlyoom names one process: `sending SIGTERM to process PID uid UID "NAME": ...`, in three shapes
  (1.5-1.7 `badness N, VmRSS N MiB`; 1.8-1.8.2 `oom_score N, VmRSS N MiB, cmdline "..."`; 1.9+
  `oom_score N, oom_score_adj N, VmRSS N MiB, cmdline "..."`). The cmdline it prints is cut
  (earlyoom's PATH_LEN buffer) and its NAME may hold quotes: the pid is what counts.
  `escalating to SIGKILL`, `process N exited`, `kill failed` are about that same kill.
- systemd-oomd names a cgroup, whose every process it SIGKILLs (oomd_cgroup_kill() ->
  cg_kill_recursive(SIGKILL)): `Killed CGROUP due to memory pressure for CGROUP being N% > N% for
  > Ns with reclaim activity`, or `Killed CGROUP due to memory used (N) / total (N) and swap used
  (N) / total (N) being more than N%`. PID 1 then counts them: `systemd-oomd killed N process(es)
  in this unit.` (MESSAGE_ID d989611b15e44c9dbf31e3c81256e4ed, N_PROCESSES=, UNIT=).
- nohang prints a victim block, one journal entry per line (`Victim status (found in Nms):`,
  `  PID: N, name: NAME, state: ..., EUID: ...`, `  cgroup_v2: ...`, `  cmdline: ...`), then
  `Implementing a corrective action:` and `  Sending SIGTERM to the victim`: the kill. Its
  `kmsg: ...` lines re-log the kernel's kills, which the kernel's own lines already record.
"""
from __future__ import annotations

import re
from oom_journal.records import dataclass
from typing import Optional

from oom_journal.model import KILLER_EARLYOOM, KILLER_NOHANG, KILLER_OOMD, KillerLine

_EARLYOOM_KILL = re.compile(
    r'^sending (?P<signal>SIG[A-Z]+) to process (?P<pid>\d+) uid (?P<uid>\d+) "(?P<name>.*?)": '
    r'(?:badness|oom_score) (?P<score>-?\d+)(?:, oom_score_adj (?P<adj>-?\d+))?, '
    r'VmRSS (?P<rss>\d+) MiB(?:, cmdline "(?P<cmdline>.*)")?$')
_OOMD_KILL = re.compile(r"^Killed (?P<cgroup>/\S*) due to (?P<why>.+)$")
_NOHANG_PID = re.compile(r"^\s*PID: (?P<pid>\d+), name: (?P<name>.*?)(?:, state: .*)?$")
_NOHANG_CGROUP = re.compile(r"^\s*cgroup_v2: (?P<cgroup>\S*)\s*$")
_NOHANG_CMDLINE = re.compile(r"^\s*cmdline: (?P<cmdline>.*)$")
_NOHANG_EUID = re.compile(r"EUID: (?P<uid>\d+)")
_NOHANG_SEND = re.compile(r"^\s*Sending (?P<signal>SIG[A-Z]+) to the victim")


@dataclass(frozen=True)
class KillerAction:
    """One kill a userspace killer reported (or PID 1's count of systemd-oomd's)."""

    killer: str
    timestamp_us: int  # of the killer's journal entry (KillerLine.timestamp_us)
    message: str  # the killer's line, verbatim
    reason: str  # what the killer said, for the event's reason
    pid: Optional[int] = None  # earlyoom, nohang: the process
    comm: Optional[str] = None
    uid: Optional[int] = None
    signal: Optional[str] = None
    cgroup: Optional[str] = None  # systemd-oomd: the cgroup it killed; nohang: the victim's
    cmdline_hint: Optional[str] = None  # what the killer printed of the command line (cut)
    vmrss_mib: Optional[int] = None
    unit: Optional[str] = None  # PID 1's count: its unit
    n_processes: Optional[int] = None  # PID 1's count


class KillerParser:
    """Feeds on KillerLine records in journal order; nohang's victim block spans several."""

    def __init__(self) -> None:
        self._nohang: dict = {}  # the victim block being read

    def feed(self, line: KillerLine) -> list:
        if line.from_pid1:
            if line.unit is None or line.n_processes is None:
                return []
            return [KillerAction(KILLER_OOMD, line.timestamp_us, line.message, "systemd-oomd", unit=line.unit,
                                 n_processes=line.n_processes)]
        out = []
        for text in line.message.splitlines() or [""]:
            action = self._one(line, text)
            if action is not None:
                out.append(action)
        return out

    def _one(self, line: KillerLine, text: str) -> Optional[KillerAction]:
        if line.killer == KILLER_EARLYOOM:
            m = _EARLYOOM_KILL.match(text)
            if m is None:
                return None
            return KillerAction(KILLER_EARLYOOM, line.timestamp_us, text, "earlyoom: low memory",
                                pid=int(m["pid"]), comm=m["name"], uid=int(m["uid"]), signal=m["signal"],
                                cmdline_hint=m["cmdline"], vmrss_mib=int(m["rss"]))
        if line.killer == KILLER_OOMD:
            m = _OOMD_KILL.match(text)
            if m is None:
                return None
            why = m["why"]
            reason = ("systemd-oomd: memory pressure" if why.startswith("memory pressure")
                      else "systemd-oomd: swap used" if "swap used" in why else "systemd-oomd")
            return KillerAction(KILLER_OOMD, line.timestamp_us, text, reason, cgroup=m["cgroup"], signal="SIGKILL")
        if line.killer == KILLER_NOHANG:
            return self._nohang_line(line, text)
        return None

    def _nohang_line(self, line: KillerLine, text: str) -> Optional[KillerAction]:
        if text.startswith("kmsg:"):
            return None  # the kernel's kill, re-logged: recorded from the kernel's own line
        if text.startswith("Victim status"):
            self._nohang = {}
            return None
        m = _NOHANG_PID.match(text)
        if m is not None:
            uid = _NOHANG_EUID.search(text)
            self._nohang = {"pid": int(m["pid"]), "name": m["name"], "uid": int(uid["uid"]) if uid else None}
            return None
        m = _NOHANG_CGROUP.match(text)
        if m is not None and self._nohang:
            self._nohang["cgroup"] = m["cgroup"] or None
            return None
        m = _NOHANG_CMDLINE.match(text)
        if m is not None and self._nohang:
            self._nohang["cmdline"] = m["cmdline"]
            return None
        m = _NOHANG_SEND.match(text)
        if m is not None and self._nohang.get("pid") is not None:
            v, self._nohang = self._nohang, {}
            return KillerAction(KILLER_NOHANG, line.timestamp_us, text.strip(), "nohang: low memory", pid=v["pid"],
                                comm=v["name"], uid=v.get("uid"), signal=m["signal"], cgroup=v.get("cgroup"),
                                cmdline_hint=v.get("cmdline"))
        return None
