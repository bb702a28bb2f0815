"""Where each event is written first: the systemd journal, one structured entry per kill."""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Optional

from oom_journal.enrich.event import KERNEL_REPORT_LATE, OomEvent, completion_key, current_event_id
from oom_journal.enrich.incident import incident_place
from oom_journal.model import MESSAGE_ID
from oom_journal.outputs.journal_socket import JournalSocket
from oom_journal.sources.journal import archived_elsewhen, journal_files
from oom_journal.sources.journal_fields import field, open_reader, step

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

    def __init__(self, send: Optional[Callable] = None, reader_factory: Optional[Callable] = None,
                 journal_path: Optional[str] = None):
        self._send = send if send is not None else JournalSocket().send
        self._reader_factory = reader_factory
        # The searches' journal without a reader_factory: the local one (journald's directories),
        # or the files of this directory (tests).
        self._journal_path = journal_path

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
            for path in self._each_file("find kills recorded before", boot_id):
                found |= _in_file(path, lambda r: our_event_ids_in_file(r, boot_id), set())
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
            return self._recent_incidents_by_file(boot_id)
        try:
            reader = self._reader_factory()
        except (ImportError, OSError) as e:
            log.warning("cannot read the journal to find the incidents still open: %s", e)
            return []
        try:
            return recent_incidents(reader, boot_id)
        finally:
            reader.close()

    def _recent_incidents_by_file(self, boot_id: str) -> list:
        """recent_incidents() of the whole journal, one file at a time (_in_file): the newest
        `limit` entries of ours of all files, as one handle on all files would step back through.

        The files are read newest first (each one's newest entry of ours: one step back from its
        tail) and no further than the one whose newest entry is older than the `limit`-th newest
        entry read: the files of one boot follow one another in time, so that is one or two files.
        Reading the last `limit` entries of every file instead (as before) read all 4,900 entries of
        ours in this machine's 39 runtime files, ~40 us each: 200 ms of a first start, before READY=1.
        """
        limit = RECENT_INCIDENT_ENTRIES
        newest = []
        for path in self._each_file("find the incidents still open", boot_id):
            when = _in_file(path, lambda r: newest_entry_us(r, boot_id), None)
            if when is not None:
                newest.append((when, path))
        found: list = []
        for when, path in sorted(newest, reverse=True):
            if len(found) >= limit and when < found[limit - 1][0]:
                break
            found += _in_file(path, lambda r: recent_entries(r, boot_id, limit), [])
            found.sort(key=lambda x: x[0], reverse=True)
            del found[limit:]
        # IncidentTracker.prime takes them in any order.
        return [x for _, x in found if x is not None]

    def _each_file(self, why: str, boot_id: str):
        """The journal's files that can hold entries of boot `boot_id`, the current one, each once,
        for searches read one file at a time (_in_file). A file that went away between the listing
        and its opening was archived under a new name (a rotation) or vacuumed: the listing is read
        again for the names not seen yet. journald's archived files whose header names another boot
        are not opened (sources.journal.archived_elsewhen)."""
        try:
            from systemd import _reader  # noqa: F401  (python3-systemd)
        except ImportError as e:
            log.warning("cannot read the journal to %s: %s", why, e)
            return
        seen: set = set()
        for _ in range(3):
            missing = False
            for path in journal_files(self._journal_path):
                if path in seen:
                    continue
                seen.add(path)
                if not os.path.exists(path):
                    missing = True
                    continue
                if archived_elsewhen(path, boot_id):
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

    The completions (OOM_KERNEL_REPORT=late, recorded under their own key) are a second pass on
    a fourth match, not one more field of every entry: sd_journal_get_data() walks the entry's
    items for a field, and a field the entry lacks is a walk of all of them. Measured on this
    machine's 39 runtime files with 10,400 entries of ours (the test suites'): stepping alone
    22 ms, + OOM_EVENT_ID 61 ms, + OOM_KERNEL_REPORT (absent from almost all) 138 ms.
    """
    prefix = boot_id + "-"
    found: set = set()

    def take(r) -> None:
        text = _entry_event_id(r, prefix)
        if text is not None:
            found.add(text)

    _each_entry_of_ours(reader, {"_BOOT_ID": boot_id}, take, reopen)
    if reopen is None:
        reader.flush_matches()
        return found | _completions(reader, boot_id)
    reader = reopen()
    try:
        return found | _completions(reader, boot_id, reopen)
    finally:
        reader.close()


def our_event_ids_in_file(reader, boot_id: str) -> set:
    """our_event_ids() of a handle on one journal file, found from the values instead of the
    entries: sd_journal_query_unique() lists the file's OOM_EVENT_ID values (one walk of the
    field's data objects, whoever wrote them), and each value of this boot counts if an entry of
    ours that root wrote has it: the entries of that value (one, or a few), found on a match of it
    alone, and their MESSAGE_ID, _UID and _BOOT_ID read. Reading OOM_EVENT_ID of each entry of ours
    instead walks the entry's items up to it, and MESSAGE comes before it (journald orders an
    entry's items by their offset in the file, and the daemon sends MESSAGE first): a MESSAGE of
    more than 512 bytes (a long command line) is compressed, and each read decompressed it to
    compare its name (ZSTD_createDCtx the top of a profile). The three fields checked here are
    shared data objects, near the start of the item list. Matching the value with the three
    others instead (a lookup in the indexes) bisected the entry arrays of _UID=0 and _BOOT_ID,
    which list nearly every entry of the file: pages all over it, RssFile +5 MiB at the peak here.
    Measured on this machine's 39 runtime files, 8,900 ids of ours (the test suites'): ~200 ms by
    the entries, ~100 by the values (6,300 of them pid-less ids of this morning's daemon, each
    entry's OOM_PID read).
    """
    prefix = boot_id + "-"
    found: set = set()
    # The C method itself: Reader.add_match() (python-systemd) makes each line from keywords in
    # Python, 4 µs a call, more than the lookup.
    from systemd._reader import _Reader  # (no type hints; not systemd.journal: see sources.journal_fields)

    add = functools.partial(_Reader.add_match, reader) if isinstance(reader, _Reader) else reader.add_match
    ours = ((("MESSAGE_ID", MESSAGE_ID.encode()), ("_UID", b"0"), ("_BOOT_ID", boot_id.encode())))
    for value in reader.query_unique("OOM_EVENT_ID"):
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        text = raw.decode("ascii", "replace")
        if not text.startswith(prefix):  # an id of another boot (entries of ours only have this one's)
            continue
        reader.flush_matches()
        add(b"OOM_EVENT_ID=" + raw)
        reader.seek_head()
        while step(reader):
            if any(field(reader, name) != want for name, want in ours):
                continue  # not root's (a forger's), or not ours
            if text.count("-") != 1:
                found.add(text)
                break
            # A kill line's id as 0.1.0 wrote it at first: each entry's pid.
            pid = field(reader, "OOM_PID")
            found.add(current_event_id(text, int(pid) if pid is not None and pid.isdigit() else None))
    reader.flush_matches()
    found |= _completions(reader, boot_id)
    return found


def _entry_event_id(r, prefix: str) -> Optional[str]:
    """The current entry's event id if it starts with `prefix` (this boot's: entries of ours only
    have that one), a 0.1.0 kill line's pid-less id with the entry's OOM_PID added; else None."""
    value = field(r, "OOM_EVENT_ID")
    if value is None:
        return None
    text = value.decode("ascii", "replace")
    if not text.startswith(prefix):
        return None
    if text.count("-") == 1:  # a kill line's id as 0.1.0 wrote it at first: add its pid
        pid = field(r, "OOM_PID")
        text = current_event_id(text, int(pid) if pid is not None and pid.isdigit() else None)
    return text


def _completions(reader, boot_id: str, reopen: Optional[Callable] = None) -> set:
    """The keys of this boot's completions of ours (OOM_KERNEL_REPORT=late), each recorded under
    its own key (OomEvent.record_key), and their ids: a pass of their own, on a fourth match."""
    prefix = boot_id + "-"
    found: set = set()

    def take(r) -> None:
        text = _entry_event_id(r, prefix)
        if text is not None:
            found.add(text)
            found.add(completion_key(text))

    _each_entry_of_ours(reader, {"_BOOT_ID": boot_id, "OOM_KERNEL_REPORT": KERNEL_REPORT_LATE}, take, reopen)
    return found


def _each_entry_of_ours(reader, matches: dict, take: Callable, reopen: Optional[Callable] = None) -> None:
    """take(r) on each entry of ours that root wrote and that has `matches`, from the head (see
    our_event_ids for `reopen`)."""
    def matched(r):
        r.add_match(MESSAGE_ID=MESSAGE_ID, _UID="0", **matches)
        return r

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


# Kills read back to learn the incidents still open at a restart (enrich/incident.py): the last
# ones of this boot; an incident open at the restart has its latest kill among them unless more
# than this many kills came since in other places.
RECENT_INCIDENT_ENTRIES = 1000


def recent_incidents(reader, boot_id: str, limit: int = RECENT_INCIDENT_ENTRIES) -> list:
    """(incident id, kernel timestamp µs, place) of this boot's last `limit` entries of ours that
    root wrote and that carry OOM_INCIDENT_ID, newest first (the same trust as our_event_ids)."""
    return [x for _, x in recent_entries(reader, boot_id, limit) if x is not None]


def recent_entries(reader, boot_id: str, limit: int = RECENT_INCIDENT_ENTRIES) -> list:
    """(monotonic µs, (incident id, kernel timestamp µs, place) or None) of this boot's last
    `limit` entries of ours that root wrote, newest first: None for one without OOM_INCIDENT_ID.

    Each entry's fields are read at once (sd_journal_enumerate_data, in _get_all), not one by one:
    each sd_journal_get_data() walks the entry's items, decompressing a compressed MESSAGE on the
    way (see our_event_ids_in_file), and the fields a kill lacks (OOM_MEMCG, OOM_GLOBAL, OOM_GROUP)
    are walks of them all. Measured on this machine's active runtime file: 260 µs an entry one by
    one, 56 at once."""
    reader.add_match(MESSAGE_ID=MESSAGE_ID, _UID="0", _BOOT_ID=boot_id)
    reader.seek_tail()
    found: list = []
    while len(found) < limit and step(reader, forward=False):
        when = int(reader._get_monotonic()[0])
        entry = reader._get_all()
        incident, ts = _first(entry, "OOM_INCIDENT_ID"), _first(entry, "OOM_KERNEL_TIMESTAMP_USEC")
        if incident is None or ts is None or not ts.isdigit():
            found.append((when, None))
            continue
        cgroup, memcg, global_oom, group = (_text(entry, name) for name in ("OOM_CGROUP", "OOM_MEMCG", "OOM_GLOBAL",
                                                                            "OOM_GROUP"))
        found.append((when, (incident.decode("ascii", "replace"), int(ts),
                             incident_place(cgroup, memcg, global_oom == "1", group))))
    return found


def _first(entry: dict, name: str) -> Optional[bytes]:
    value = entry.get(name)
    return value[0] if isinstance(value, list) else value  # a field given twice: its first value


def _text(entry: dict, name: str) -> Optional[str]:
    value = _first(entry, name)
    return None if value is None else value.decode("utf-8", "surrogateescape")


def newest_entry_us(reader, boot_id: str) -> Optional[int]:
    """The monotonic µs of this boot's newest entry of ours that root wrote; None if none."""
    reader.add_match(MESSAGE_ID=MESSAGE_ID, _UID="0", _BOOT_ID=boot_id)
    reader.seek_tail()
    return int(reader._get_monotonic()[0]) if step(reader, forward=False) else None
