"""One OOM kill as oom-journal records it: the kernel's facts, the command line, the owner.

This is the enrichment step: KernelKill (parser) + cmdline (process cache) + cgroup and host facts.
It renders the two forms every output uses: journal fields, and the JSON event document.
"""
from __future__ import annotations

import re
import time
from oom_journal.records import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from oom_journal.enrich.cgroup import CgroupInfo, describe_cgroup
from oom_journal.enrich.containers import ContainerNames
from oom_journal.model import MESSAGE_ID, SCHEMA_VERSION, SYSLOG_IDENTIFIER, HostInfo
from oom_journal.model import KILLER_KERNEL, KernelKill
from oom_journal.parse.oom_report import REASON_UNKNOWN
from oom_journal.text import human_size, json_text as _text, journal_bytes as _raw, printable

# The journal entry's MESSAGE carries the cmdline for people to read; OOM_CMDLINE carries all of it.
MESSAGE_CMDLINE_CHARS = 2048
# The most of the command line a SINK document carries (UTF-8 bytes of `cmdline`; `argv` gets the
# same budget). A process may have up to ARG_MAX (a quarter of its stack limit: 2 MiB by default,
# more with a bigger ulimit -s) of argv, and a user who loops such processes into OOM kills would
# otherwise fill the outbox and the sinks (Kafka refuses messages over 1 MB: message.max.bytes).
# The journal entry and --output stdout keep all of it: they are the primary record.
SINK_CMDLINE_MAX_BYTES = 32 * 1024
# OOM_KERNEL_REPORT of an entry that completes a kill recorded before from the second witness
# (enrich.witness): the kill line came after all, and this entry, under the same OOM_EVENT_ID,
# carries the kernel's report the first entry lacked.
KERNEL_REPORT_LATE = "late"
# What the first entry's OOM_WITNESS says, for the completion's MESSAGE.
WITNESS_WORDS = {"exit": "its SIGKILL exit and the kernel's counters", "kmsg": "/dev/kmsg (journald had not the line)",
                 "counter": "the kernel's counters"}


def make_event_id(boot_id: str, kill: KernelKill) -> str:
    """Stable across restarts and sources: the boot, the kill line's kernel timestamp, the pid.

    The issue asked for boot id + kernel sequence number, but journald does not store kmsg's
    sequence number with kernel entries (checked: journalctl -k -o export has no such field), so an
    id built on it would change when the daemon switches between the journal and /dev/kmsg. The
    kill line's timestamp and pid are in both (_SOURCE_MONOTONIC_TIMESTAMP = kmsg's third field).
    The timestamp alone is not enough: the kill lines of one memory.oom.group kill can share a
    microsecond (Debian 12's 6.1 in qemu printed the victim's line, "Tasks in ... are going to be
    killed" and the next member's line all at 71686265 µs: tests/fixtures/kernel-timed/), and one
    pid is killed at most once per kill line (a group pass's repeated line of the victim is the
    same kill: parse.oom_report).
    """
    return f"{boot_id}-{kill.timestamp_us}-{kill.pid}"


# A kill line's event id (make_event_id): boot, µs, pid; without the pid, as 0.1.0 wrote it at
# first (and people may type it: `show` takes it for every kill line of that microsecond).
EVENT_ID_RE = re.compile(r"^([0-9a-f]{32})-([0-9]{1,20})(?:-([0-9]{1,10}))?$")


def completion_key(event_id: str) -> str:
    """The key (state database, recorded search) of the entry that completes event_id (late)."""
    return event_id + "+late"


def current_event_id(event_id: str, pid: Optional[int]) -> str:
    """An entry's OOM_EVENT_ID in today's form: a kill line's id written without its pid (entries
    of 0.1.0 before the pid was added) gets the entry's OOM_PID, so that the kill it records is
    known as recorded and `list` merges it with its kill line; every other id as it is."""
    m = EVENT_ID_RE.match(event_id) if pid is not None else None
    if m and m.group(3) is None:
        return f"{event_id}-{pid}"
    return event_id


def kernel_time_to_realtime(timestamp_us: int, *, now_real: Optional[float] = None,
                            now_mono: Optional[float] = None) -> float:
    """Wall-clock seconds of a kernel timestamp (printk's clock follows CLOCK_MONOTONIC)."""
    if now_real is None:
        now_real = time.time()
    if now_mono is None:
        now_mono = time.clock_gettime(time.CLOCK_MONOTONIC)
    return now_real - (now_mono - timestamp_us / 1e6)


@dataclass
class OomEvent:
    kill: KernelKill
    host: HostInfo
    time: float  # seconds since the epoch, of the kill line
    argv: Optional[list] = None  # list[bytes], exactly as /proc/PID/cmdline had it
    cmdline_source: str = "not-found"  # exec-event | fork | scan | proc | not-found
    cmdline_note: str = ""
    cgroup: CgroupInfo = field(default_factory=lambda: CgroupInfo(path=None))
    event_id: str = ""
    # "kernel" (its report), "proc" (/proc/PID/cgroup read at exec: the kernel prints at most
    # 10 reports in 5 s, and a kill beyond has its kill line alone), or None (unknown).
    cgroup_source: Optional[str] = None
    # The container's and its pod's names, from the runtime's state (enrich.containers).
    names: Optional[ContainerNames] = None
    # Set for a kill the source did not deliver (enrich.witness): "lost"; which witness saw it
    # ("kmsg": the kill line from /dev/kmsg read as the doorbell; "exit": the counters and the
    # victim's SIGKILL exit; "counter": the counters alone), and how it was identified.
    kernel_report: Optional[str] = None
    witness: Optional[str] = None
    witness_note: Optional[str] = None
    unseen_kills: Optional[int] = None  # "counter": how many kills this one entry stands for
    # The incident this kill belongs to (enrich/incident.py): the first kill's event id.
    incident_id: Optional[str] = None
    # The event id this entry completes (OOM_COMPLETES): its own (kernel_report "late": the kill
    # line of a kill recorded before from its exit), or an `unseen` entry's (this kill line names
    # one of the kills that entry counted without knowing the victim). None: completes nothing.
    completes: Optional[str] = None
    completes_time: Optional[float] = None  # "late": when the completed entry's kill was (its `time`)

    @property
    def is_completion(self) -> bool:
        """A second entry of an event already recorded (same event id): the kernel's late report."""
        return self.kernel_report == KERNEL_REPORT_LATE

    @property
    def record_key(self) -> str:
        """The key of this entry in the state database (recorded, outbox): its event id, and for
        a completion the event id with `+late`, so that the completion is recorded (and queued to
        the sinks) once, beside the first entry, rather than taken for it."""
        return completion_key(self.event_id) if self.is_completion else self.event_id

    @classmethod
    def build(cls, kill: KernelKill, host: HostInfo, lookup=None, event_time: Optional[float] = None,
              containers=None):
        """containers: an enrich.containers.ContainerDirectory (names_for()), or None."""
        path, source = kill.task_memcg, "kernel"
        if path is None and lookup is not None and getattr(lookup, "argv", None) and getattr(lookup, "cgroup", None):
            path, source = lookup.cgroup, "proc"
        if path is None:
            path = kill.oom_memcg  # before 5.0 a memcg kill may name only the limit's cgroup
        event = cls(kill=kill, host=host,
                    time=event_time if event_time is not None else kernel_time_to_realtime(kill.timestamp_us),
                    cgroup=describe_cgroup(path), event_id=make_event_id(host.boot_id, kill),
                    cgroup_source=source if path is not None else None)
        if lookup is not None:
            event.argv, event.cmdline_source, event.cmdline_note = lookup.argv, lookup.source, lookup.note
            if not event.argv:
                event.argv, event.cmdline_source = None, "not-found"
        if containers is not None:
            event.names = containers.names_for(event.cgroup)
            if event.names is not None:
                cg = event.cgroup
                # The cgroupfs driver's path does not say which runtime ("kubernetes"); the
                # state the names came from does. A pod UID the path lacks comes from there too.
                runtime = event.names.runtime if cg.container_runtime in (None, "kubernetes") else cg.container_runtime
                event.cgroup = CgroupInfo(path=cg.path, unit=cg.unit, slice=cg.slice, container_id=cg.container_id,
                                          container_runtime=runtime, pod_uid=cg.pod_uid or event.names.pod_uid)
        return event

    @property
    def container_name(self) -> Optional[str]:
        return self.names.container_name if self.names else None

    @property
    def pod_name(self) -> Optional[str]:
        return self.names.pod_name if self.names else None

    @property
    def pod_namespace(self) -> Optional[str]:
        return self.names.pod_namespace if self.names else None

    # --- the command line ---------------------------------------------------------------
    @property
    def cmdline_bytes(self) -> Optional[bytes]:
        return b" ".join(self.argv) if self.argv else None

    @property
    def cmdline(self) -> Optional[str]:
        """The argv joined by spaces; bytes that are not UTF-8 as surrogate escapes (lossless)."""
        raw = self.cmdline_bytes
        return raw.decode("utf-8", "surrogateescape") if raw is not None else None

    @property
    def owner(self) -> Optional[str]:
        """What a person calls the victim's owner: its unit, else its container."""
        if self.pod_name:
            owner = f"pod {self.pod_namespace}/{self.pod_name}" if self.pod_namespace else f"pod {self.pod_name}"
            return owner + (f" container {self.container_name}" if self.container_name else "")
        if self.container_name:
            return f"container {self.container_name}"
        if self.cgroup.unit:
            return self.cgroup.unit
        if self.cgroup.container_id:
            return f"container {self.cgroup.container_id[:12]}"
        return None

    def message(self) -> str:
        k = self.kill
        if self.is_completion:
            return self._completion_message()
        if self.unseen_kills is not None and k.killer != KILLER_KERNEL:
            n = self.unseen_kills
            return (f"{k.killer} killed {n} process{'es' if n != 1 else ''} in {printable(self.cgroup.path or '?')} "
                    "that oom-journal could not tell")
        if self.unseen_kills is not None:
            n = self.unseen_kills
            text = (f"the kernel made {n} OOM kill{'s' if n != 1 else ''} whose kill line{'s' if n != 1 else ''} "
                    "oom-journal could not read, and could not tell the victim")
            if self.cgroup.path:
                text += f"; SIGKILL exits were in {printable(self.cgroup.path)}"
            return text
        # Kernel wording: 'Out of memory' / 'Memory cgroup out of memory' says which limit was hit.
        reason = "OOM kill, reason not in the kernel log" if k.reason == REASON_UNKNOWN else k.reason
        text = f"{reason}: killed process {k.pid} ({printable(k.comm)})"
        if self.owner:
            text += f" of {printable(self.owner)}"
        cmdline = self.cmdline
        if cmdline is None:
            text += ": command line unknown"
        else:
            shown = printable(cmdline)
            if len(shown) > MESSAGE_CMDLINE_CHARS:
                shown = shown[:MESSAGE_CMDLINE_CHARS] + "…"
            text += f": {shown}"
        if k.killer != KILLER_KERNEL:
            return text  # the killer's line says what it measured (OOM_KILLER_MESSAGE)
        text += f"; anon-rss {human_size(k.anon_rss_kb)}"
        if self.completes and self.completes != self.event_id:
            text += f"; counted before, victim unknown, in {self.completes}"
        return text

    def _completion_message(self) -> str:
        """Short: the first entry (same event id) has the victim and its command line."""
        k = self.kill
        when = "earlier"
        if self.completes_time is not None:
            when = "at " + datetime.fromtimestamp(self.completes_time, timezone.utc).isoformat(timespec="seconds")
        text = (f"the kernel's report of the OOM kill of process {k.pid} ({printable(k.comm)}) came late: it completes "
                f"the event {self.event_id} recorded {when} from {WITNESS_WORDS.get(self.witness or '', 'a second witness')}")
        details = [k.reason if k.reason != REASON_UNKNOWN else None,
                   f"constraint {k.constraint}" if k.constraint else None,
                   f"memcg {printable(k.oom_memcg)}" if k.oom_memcg else None,
                   f"anon-rss {human_size(k.anon_rss_kb)}" if k.anon_rss_kb is not None else None]
        shown = [d for d in details if d]
        return text + (": " + ", ".join(shown) if shown else "")

    # --- outputs ------------------------------------------------------------------------
    def journal_fields(self) -> dict:
        """Fields for the structured journal entry. Values are str, int or bytes (exact bytes)."""
        k, cg = self.kill, self.cgroup
        fields = {
            "MESSAGE": self.message(),
            "MESSAGE_ID": MESSAGE_ID,
            "PRIORITY": 3,
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
            "OOM_EVENT_ID": self.event_id,
            "OOM_INCIDENT_ID": self.incident_id,
            "OOM_GROUP": k.oom_group,
            "OOM_REASON": k.reason,
            "OOM_PID": k.pid,
            "OOM_COMM": _raw(k.comm),
            "OOM_CMDLINE_SOURCE": self.cmdline_source,
            "OOM_KERNEL_TIMESTAMP_USEC": k.timestamp_us,
            "OOM_KERNEL_SEQNUM": k.seq,
            "OOM_KERNEL_RELEASE": self.host.kernel,
            "OOM_UID": k.uid,
            "OOM_CGROUP": cg.path,
            "OOM_CGROUP_SOURCE": self.cgroup_source,
            "OOM_MEMCG": k.oom_memcg,
            "OOM_GLOBAL": None if k.global_oom is None else int(k.global_oom),
            "OOM_UNIT": cg.unit,
            "OOM_SLICE": cg.slice,
            "OOM_CONTAINER_ID": cg.container_id,
            "OOM_CONTAINER_RUNTIME": cg.container_runtime,
            "OOM_POD_UID": cg.pod_uid,
            "OOM_CONTAINER_NAME": _raw(self.container_name),
            "OOM_POD_NAME": _raw(self.pod_name),
            "OOM_POD_NAMESPACE": _raw(self.pod_namespace),
            "OOM_CONSTRAINT": k.constraint,
            "OOM_CPUSET": k.cpuset,
            "OOM_TOTAL_VM_KB": k.total_vm_kb,
            "OOM_ANON_RSS_KB": k.anon_rss_kb,
            "OOM_FILE_RSS_KB": k.file_rss_kb,
            "OOM_SHMEM_RSS_KB": k.shmem_rss_kb,
            "OOM_PGTABLES_KB": k.pgtables_kb,
            "OOM_SCORE_ADJ": k.oom_score_adj,
            "OOM_MEMCG_USAGE_KB": k.memcg_usage_kb,
            "OOM_MEMCG_LIMIT_KB": k.memcg_limit_kb,
            "OOM_TRIGGER_COMM": _raw(k.trigger_comm),
            "OOM_TRIGGER_PID": k.trigger_pid,
            "OOM_TRIGGER_GFP_MASK": k.trigger_gfp_mask,
            "OOM_TRIGGER_ORDER": k.trigger_order,
            "OOM_KERNEL_MESSAGE": _raw(k.kill_message) if k.kill_message else None,
            "OOM_KERNEL_REPORT": self.kernel_report,
            "OOM_WITNESS": self.witness,
            "OOM_WITNESS_NOTE": self.witness_note,
            "OOM_UNSEEN_KILLS": self.unseen_kills,
            "OOM_COMPLETES": self.completes,
            "OOM_KILLER": k.killer,
            "OOM_KILLER_MESSAGE": _raw(k.killer_message) if k.killer_message else None,
        }
        if self.unseen_kills is not None:  # no victim known: no pid 0 for a query to match
            del fields["OOM_PID"], fields["OOM_COMM"]
        if self.argv:
            fields["OOM_CMDLINE"] = self.cmdline_bytes
            # The exact argv, NUL-separated as in /proc/PID/cmdline: OOM_CMDLINE cannot tell
            # "a b" from "a" "b"; this can. journalctl shows binary fields as byte arrays.
            fields["OOM_ARGV"] = b"\0".join(self.argv)
            fields["OOM_ARGC"] = len(self.argv)
        if self.cmdline_note:
            fields["OOM_CMDLINE_NOTE"] = self.cmdline_note
        if cg.unit:
            # journalctl -u UNIT matches OBJECT_SYSTEMD_UNIT= in entries from root (sd-journal's
            # add_matches_for_unit), as systemd-coredump does with COREDUMP_UNIT.
            fields["OBJECT_SYSTEMD_UNIT"] = cg.unit
        return {k: v for k, v in fields.items() if v is not None}

    def document(self) -> dict:
        """The JSON event document (schema version SCHEMA_VERSION), shared by every sink."""
        k, cg = self.kill, self.cgroup
        doc = {
            "schema": SCHEMA_VERSION,
            "event_id": self.event_id,
            "incident_id": self.incident_id,
            "time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="microseconds"),
            "hostname": self.host.hostname,
            "boot_id": self.host.boot_id,
            "kernel": self.host.kernel,
            "message": _text(self.message()),
            "reason": k.reason,
            "pid": k.pid,
            "comm": _text(k.comm),
            "cmdline": _text(self.cmdline),
            "argv": [_text(a.decode("utf-8", "surrogateescape")) for a in self.argv] if self.argv else None,
            "cmdline_source": self.cmdline_source,
            "uid": k.uid,
            "cgroup": _text(cg.path),
            "oom_memcg": _text(k.oom_memcg),
            "oom_group": _text(k.oom_group),
            "global_oom": k.global_oom,
            "unit": _text(cg.unit),
            "slice": _text(cg.slice),
            "container_id": cg.container_id,
            "container_runtime": cg.container_runtime,
            "pod_uid": _text(cg.pod_uid),
            "container_name": _text(self.container_name),
            "pod_name": _text(self.pod_name),
            "pod_namespace": _text(self.pod_namespace),
            "constraint": k.constraint,
            "total_vm_kb": k.total_vm_kb,
            "anon_rss_kb": k.anon_rss_kb,
            "file_rss_kb": k.file_rss_kb,
            "shmem_rss_kb": k.shmem_rss_kb,
            "pgtables_kb": k.pgtables_kb,
            "oom_score_adj": k.oom_score_adj,
            "memcg_usage_kb": k.memcg_usage_kb,
            "memcg_limit_kb": k.memcg_limit_kb,
            "trigger": {
                "comm": _text(k.trigger_comm),
                "pid": k.trigger_pid,
                "gfp_mask": k.trigger_gfp_mask,
                "order": k.trigger_order,
            } if k.trigger_comm is not None else None,
            "kernel_seq": k.seq,
            "kernel_timestamp_us": k.timestamp_us,
            "kernel_report": self.kernel_report,
            "witness": self.witness,
            "witness_note": _text(self.witness_note),
            "unseen_kills": self.unseen_kills,
            "completes": self.completes,
            "killer": k.killer,
            "killer_message": _text(k.killer_message) if k.killer_message else None,
        }
        if self.unseen_kills is not None:
            doc["pid"] = doc["comm"] = None
        return doc


def cap_command_line(document: dict, limit: int = SINK_CMDLINE_MAX_BYTES) -> dict:
    """The document as sinks get it: `cmdline` cut to `limit` UTF-8 bytes (at a character
    boundary), `argv` to the same budget (the space before each argument counted, as in cmdline:
    whole arguments while they fit, then the start of the next one), and, only when cut,
    `cmdline_truncated: true` and `cmdline_length`: the whole cmdline's length in UTF-8 bytes.
    Returns the same dict when there is nothing to cut, else a new one."""
    cmdline = document.get("cmdline")
    if cmdline is None:
        return document
    raw = cmdline.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return document
    doc = dict(document)
    doc["cmdline"] = _utf8_prefix(raw, limit)
    doc["cmdline_truncated"] = True
    doc["cmdline_length"] = len(raw)
    if document.get("argv"):
        kept, budget = [], limit
        for i, arg in enumerate(document["argv"]):
            encoded = arg.encode("utf-8", "surrogatepass")
            cost = len(encoded) + (1 if i else 0)
            if cost <= budget:
                kept.append(arg)
                budget -= cost
                continue
            part = _utf8_prefix(encoded, budget - (1 if i else 0))
            if part:  # not an empty argument that was not in argv
                kept.append(part)
            break
        doc["argv"] = kept
    return doc


def _utf8_prefix(raw: bytes, limit: int) -> str:
    """The longest prefix of `raw` (valid UTF-8) of at most `limit` bytes that ends at a character
    boundary: decoding the cut with "ignore" drops only the incomplete character at its end."""
    return raw[:max(0, limit)].decode("utf-8", "ignore")
