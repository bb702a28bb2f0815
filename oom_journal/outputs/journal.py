"""Where each event is written first: the systemd journal, one structured entry per kill."""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

from oom_journal.enrich.event import KERNEL_REPORT_LATE, OomEvent, completion_key, current_event_id
from oom_journal.enrich.incident import incident_place
from oom_journal.model import MESSAGE_ID
from oom_journal.outputs.journal_socket import JournalSocket
from oom_journal.sources.journal import journal_files
from oom_journal.sources.journal_fields import field, int_field, open_reader, step

log = logging.getLogger(__name__)



def _line(key: str, value) -> bytes:
    if isinstance(value, bytes):
        return key.encode() + b"=" + value
    # Text may carry surrogate-escaped bytes (a comm that was not UTF-8): write the exact bytes.
    return key.encode() + b"=" + str(value).encode("utf-8", "surrogateescape")


class JournalWriter:
    """Writes one structured entry per event through journald's native protocol, on a
    non-blocking socket of its own (outputs.journal_socket says why not sd_journal_sendv)."""

    name = "journal"

    def __init__(self, send: Optional[Callable] = None, reader_factory: Optional[Callable] = None):
        self._send = send if send is not None else JournalSocket().send
        self._reader_factory = reader_factory

    def describe(self) -> str:
        return "the journal"

    def write(self, event: OomEvent) -> None:
        """Raises OSError when journald cannot take it now (not running, restarting, its queue
        full while it is stopped or busy); never blocks."""
        self._send(*[_line(k, v) for k, v in event.journal_fields().items()])

    def recorded_event_ids(self, boot_id: str) -> set:
        """OOM_EVENT_IDs this boot's journal already holds in entries root wrote: written before
        a crash that came between the journal write and the state commit, or by an earlier
        installation.

        Only root's entries count (_UID=0, a trusted field journald sets from the sender's
        SCM_CREDENTIALS, which an unprivileged sender cannot choose): any user can send an entry
        with our MESSAGE_ID and an OOM_EVENT_ID (`logger --journald`), and one that counted
        would suppress the real kill's entry. systemd trusts OBJECT_SYSTEMD_UNIT= and coredumps
        only from _UID=0 for the same reason (journalctl -u, coredumpctl).
        """
        if self._reader_factory is None:
            found: set = set()
            for path in self._each_file("find kills recorded before"):
                found |= _in_file(path, lambda r: our_event_ids(r, boot_id), set())
            return found
        try:
            reader = self._reader_factory()
        except (ImportError, OSError) as e:
            log.warning("cannot read the journal to find kills recorded before: %s", e)
            return set()
        try:
            return our_event_ids(reader, boot_id, reopen=self._reader_factory)
        finally:
            reader.close()

    def recent_incidents(self, boot_id: str) -> list:
        """See recent_incidents(); [] when the journal cannot be read (the incidents then start anew)."""
        if self._reader_factory is None:
            found: list = []
            for path in self._each_file("find the incidents still open"):
                found += _in_file(path, lambda r: recent_incidents(r, boot_id), [])
            # The newest RECENT_INCIDENT_ENTRIES of all files (IncidentTracker.prime takes any order).
            return sorted(found, key=lambda x: x[1], reverse=True)[:RECENT_INCIDENT_ENTRIES]
        try:
            reader = self._reader_factory()
        except (ImportError, OSError) as e:
            log.warning("cannot read the journal to find the incidents still open: %s", e)
            return []
        try:
            return recent_incidents(reader, boot_id)
        finally:
            reader.close()

    @staticmethod
    def _each_file(why: str):
        """The journal's files, each once, for searches read one file at a time (_in_file). A
        file that went away between the listing and its opening was archived under a new name (a
        rotation) or vacuumed: the listing is read again for the names not seen yet."""
        try:
            from systemd import _reader  # noqa: F401  (python3-systemd)
        except ImportError as e:
            log.warning("cannot read the journal to %s: %s", why, e)
            return
        seen: set = set()
        for _ in range(3):
            missing = False
            for path in journal_files():
                if path in seen:
                    continue
                seen.add(path)
                if not os.path.exists(path):
                    missing = True
                    continue
                yield path
            if not missing:
                return
        log.warning("the journal's files kept changing while reading them to %s", why)


# The searches of a first start (our_event_ids, recent_incidents) read each journal file in a
# handle of its own, closed before the next: sd-journal keeps every page a handle touched mapped
# until it is closed, and the kernel maps 64 KiB around each page a read faults in (fault-around,
# mm/memory.c do_fault_around, fault_around_bytes). On all files at once, only positioning a
# handle on our entries (seek_tail, then one step) touched every file: RssFile +20 MiB on this
# machine's 21 files of 170 MiB, so a first start's peak grew with the number of files. One
# file at a time, the peak is bounded by the biggest file (journald's SystemMaxFileSize=), and
# the search needs no interleaving of files. Order does not matter to either search: the ids are
# a set, the incidents are primed in any order (IncidentTracker.prime).
def _file_reader(path: str):
    return open_reader(files=[path])


def _in_file(path: str, search: Callable, empty):
    try:
        reader = _file_reader(path)
    except (ImportError, OSError) as e:
        log.warning("cannot read the journal file %s: %s", path, e)
        return empty
    try:
        return search(reader)
    except OSError as e:  # a file vacuumed while read
        log.warning("cannot read the journal file %s: %s", path, e)
        return empty
    finally:
        reader.close()


# Entries of ours stepped through by one handle before it is opened anew at its cursor: sd-journal
# keeps every page it touched mapped until the handle closes, and each entry's fields are data
# objects spread through the files. Measured on this machine's boot, 1,940 entries of ours (the
# test suite's): in one handle the search took a process's VmHWM from 15 to 52 MiB (RssFile 8 ->
# 43), so a first start's peak RSS grew with the journal; 100 at a time, to 32 MiB (50: 30), in
# 32 ms instead of 19.
SEARCH_REOPEN_EVERY = 100


def our_event_ids(reader, boot_id: str, reopen: Optional[Callable] = None) -> set:
    """The OOM_EVENT_IDs of this boot's entries of ours that root wrote.

    sd_journal_query_unique() would read only the field's data objects, but it ignores matches
    (sd_journal_query_unique(3)), so it cannot tell who wrote a value. The entries are stepped
    through instead, on the journal's indexes for the three matches, reading one field of each
    (sd_journal_get_data, ~1 us; see sources/journal_fields.py). Measured (bench/trust_bench.py, a
    journal file with as many forged entries as root's): 9 ms for 1,000 of ours among 200,000
    kernel lines (query_unique: 5 ms), 40 ms for 10,000 among 1,000,000 (433 MiB; query_unique:
    130 ms); this machine's own journal (834 entries, 10 of ours this boot): 7 ms.
    With `reopen` (a new reader of the same journal), every SEARCH_REOPEN_EVERY entries the search
    goes on in a new handle at the cursor (the old one closed; the caller closes `reader`).
    """
    def matched(r):
        r.add_match(MESSAGE_ID=MESSAGE_ID, _UID="0", _BOOT_ID=boot_id)
        return r

    prefix = boot_id + "-"
    found: set = set()

    def take(r) -> None:
        value = field(r, "OOM_EVENT_ID")
        if value is not None:
            text = value.decode("ascii", "replace")
            if text.startswith(prefix):  # an id of this boot (entries of ours only have those)
                if text.count("-") == 1:  # a kill line's id as 0.1.0 wrote it at first: add its pid
                    pid = field(r, "OOM_PID")
                    text = current_event_id(text, int(pid) if pid is not None and pid.isdigit() else None)
                found.add(text)
                # A completion (the second entry of that id): recorded under its own key
                # (OomEvent.record_key). One more field of each of our entries: ~1 us each.
                if field(r, "OOM_KERNEL_REPORT") == KERNEL_REPORT_LATE.encode():
                    found.add(completion_key(text))

    current = matched(reader)
    current.seek_head()
    seen = 0
    try:
        while step(current):
            take(current)
            seen += 1
            if reopen is not None and seen % SEARCH_REOPEN_EVERY == 0:
                cursor = current._get_cursor()
                if current is not reader:
                    current.close()
                current = matched(reopen())
                current.seek_cursor(cursor)
                if step(current) and not current.test_cursor(cursor):
                    take(current)  # the cursor's entry is gone (vacuumed): this is the next one
    finally:
        if current is not reader:
            current.close()
    return found


# Kills read back to learn the incidents still open at a restart (enrich/incident.py): the last
# ones of this boot; an incident open at the restart has its latest kill among them unless more
# than this many kills came since in other places.
RECENT_INCIDENT_ENTRIES = 1000


def recent_incidents(reader, boot_id: str, limit: int = RECENT_INCIDENT_ENTRIES) -> list:
    """(incident id, kernel timestamp µs, place) of this boot's last `limit` entries of ours that
    root wrote and that carry OOM_INCIDENT_ID, newest first (the same trust as our_event_ids)."""
    reader.add_match(MESSAGE_ID=MESSAGE_ID, _UID="0", _BOOT_ID=boot_id)
    reader.seek_tail()
    found: list = []
    seen = 0
    while seen < limit and step(reader, forward=False):
        seen += 1
        incident = field(reader, "OOM_INCIDENT_ID")
        ts = int_field(reader, "OOM_KERNEL_TIMESTAMP_USEC")
        if incident is None or ts is None:
            continue

        def text(name):
            value = field(reader, name)
            return None if value is None else value.decode("utf-8", "surrogateescape")

        place = incident_place(text("OOM_CGROUP"), text("OOM_MEMCG"), text("OOM_GLOBAL") == "1", text("OOM_GROUP"))
        found.append((incident.decode("ascii", "replace"), ts, place))
    return found
