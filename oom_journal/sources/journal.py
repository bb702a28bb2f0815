"""The kernel's messages as journald recorded them (_TRANSPORT=kernel), read with sd-journal; and
the userspace OOM killers' entries (systemd-oomd, earlyoom, nohang, PID 1's count of oomd's kill:
sources/killers.py decides which are really theirs), as KillerLine records, in the same order.

Woken, never by a sleeping poll, through one epoll fd (fileno()) that holds:
- the journal's inotify fd (sd_journal_get_fd); each wake-up is followed by sd_journal_process()
  and reading every new entry. Alone it is late: journald announces its writes at most every
  250 ms (its post-change timer, POST_CHANGE_TIMER_INTERVAL_USEC in journald-server.c), while
  the entry is in the mapped file within a millisecond or two. Measured here (bench/, journald
  252): inotify woke a reader 250-310 ms after a write, a read found the entry after 0.3-1.7 ms;
  kill line to our entry, p50 137 ms through inotify alone;
- /dev/kmsg, as a doorbell: the kernel makes it readable the moment it logs a record. What is
  recorded comes from the journal, whose cursor is the position; the records are also handed
  to the daemon (take_kmsg_lines()), which parses them on the side so that a kill line journald
  is slow to write (stopped, busy, or overrun: "Missed N kernel messages") is still recorded,
  with the command line found at once (enrich.witness, app/daemon.py). A new record means the journal is read at once, and again after
  1, 2, 4 ... ms (wake_at(): the daemon's select() takes it as a deadline) until journald has
  written an entry with that kernel timestamp (_SOURCE_MONOTONIC_TIMESTAMP is the kmsg record's own), or for at most
  DOORBELL_GIVE_UP seconds. Without /dev/kmsg (no CAP_SYSLOG) the inotify fd alone wakes it.

sd-journal keeps every page of the journal files it touched mapped (its mmap cache keeps
unused 8 MiB windows), and they count in the daemon's RSS: reading this boot's kernel log from
its start (91,000 entries of a 40 MiB journal) took VmRSS from 13 to 58 MiB; a fresh handle at
the tail, 14 MiB. So after REOPEN_AFTER entries the handle is reopened at the last cursor, and the
boot's history is read a window of files at a time (history_window), so that what a reopen's seek
maps does not grow with the number of files.

Two handles, for that reason: one whose inotify fd wakes us (the "watch": it never reads an
entry) and one that reads (no inotify fd; reopened every REOPEN_AFTER entries, and when the watch
reports files added or removed, a rotation, which a handle without inotify does not see).
Closing a handle that has an inotify fd took 12 ms here (0.1 ms without one: fsnotify waits for
its marks to be destroyed), and python-systemd's close() holds the interpreter's lock meanwhile:
while this boot's log was read at a first start, 150 such closes stalled the process cache's
thread, which missed 5 ms victims' command lines (its exec reads came 10-20 ms late).
"""
from __future__ import annotations

import collections
import errno
import logging
import math
import os
import select
import struct
import time
from typing import Any, Optional, Tuple

from oom_journal.sources.journal_fields import read_boot_id
from oom_journal.model import KILLERS, KILLER_KERNEL, KernelLine, KillerLine, Resume
from oom_journal.sources.killers import OOMD_UNIT_KILL_ID, killer_line_here
from oom_journal.sources.kmsg import parse_record
from oom_journal.sources.journal_fields import (JOURNAL_SOCKET, MISSED_KERNEL_MESSAGES_ID, field, int_field,
                                                kernel_line_here, open_reader, step)

log = logging.getLogger(__name__)

# Entries read through one sd-journal handle before it is reopened at the cursor (see above):
# about 1 MiB of mapped journal at most (91,000 entries mapped 45 MiB), for a reopen that costs
# 1-4 ms (measured at the tail of a 40 MiB journal).
REOPEN_AFTER = 2_000
# Idle, the reader at the tail of the active file reads few entries, but each of journald's
# writes moves it on through the file's entry arrays, and the pages it touched stay mapped:
# system.journal mapped 0.3-3.6 MiB of an idle daemon's RSS here (an 8 MiB file, the test suite
# writing); 10 kills added 1.3 MiB of RssFile. So IDLE_RELEASE_S after the reader last read an
# entry it is reopened at its cursor (0.1-0.5 ms on one file, when no line is waiting): wake_at()
# asks for that one wake-up. It used to be after 240 wake-ups that found nothing, but an idle
# daemon wakes seldom now (every 5 s or less): the pages a catch-up or a burst of kills mapped
# stayed for 20 minutes and more (bench/run's idle RSS: RssFile 15.6 MiB, 3.7 of it journal pages).
IDLE_RELEASE_S = 5.0
# The doorbell's retries: first after DOORBELL_FIRST s, doubling up to DOORBELL_MAX, until the
# journal has the record, or DOORBELL_GIVE_UP s after it was logged (journald stopped, or not
# reading /dev/kmsg): then the inotify fd is what wakes us, as without the doorbell.
DOORBELL_FIRST = 0.001
DOORBELL_MAX = 0.032
DOORBELL_GIVE_UP = 2.0
# sd_journal_process()'s answer when journal files were added or removed (SD_JOURNAL_INVALIDATE,
# systemd/sd-journal.h; python-systemd's journal.INVALIDATE, not imported: see journal_fields.open_reader).
INVALIDATE = 2
_KMSG_READ = 16384
# The doorbell's records kept for the daemon between two reads: one OOM report with its task
# table of 1,500 processes is ~1,600 records; beyond this the oldest go (the counters then say so).
KMSG_KEEP = 20_000
# While a first start catches up on a long boot (a million kernel lines took 7 s here, bench/
# long_boot_bench.py), kills that happen meanwhile must not wait behind the history: a second
# handle, opened at the tail when the history is opened, reads what comes after (read_live(),
# for its own parser in the daemon), and the history is read in slices of CATCH_UP_SLICE lines
# so that the daemon looks at the live handle every few ms, and after each slice it lets go of the
# interpreter's lock (time.sleep(0)): the process cache's thread, waiting for it to read an exec,
# gets it then rather than at the next forced switch (5 ms, sys.getswitchinterval()), when a
# young victim can be gone. Once the history reaches the entry the live handle started after,
# the live handle is the reader: nothing is read twice.
CATCH_UP_SLICE = 500
# What the live handle reads before the tail it found at the start (_open_live).
LIVE_PREROLL_US = 1_000_000
LIVE_PREROLL_MAX = 5_000


def _reader(path=None, files=None):
    return open_reader(path, files)


# Idle, the reading handle is opened on the files that can still grow alone: a handle on all of a
# journal's files, at the tail with our matches, kept 7.1 MiB of them mapped here (11 files of a
# 90 MiB runtime journal: the seek to the last kernel entry walks each file's entry arrays), one
# on system.journal alone 0.7 MiB. journald writes only to the file named without '@' (it renames
# the one it archives NAME@SEQNUM-...journal, journal-file.c journal_file_archive()); a rotation is
# reported by the watch (INVALIDATE), and the handle is then opened on all files again until it
# has read to their end, so that nothing written to the file just archived is missed.
def active_files(path: Optional[str]) -> list:
    """The journal files still written to: system.journal of the runtime and persistent journals
    (the kernel's messages are there), or every unarchived file of `path` and its subdirectories."""
    return [f for f in journal_files(path) if "@" not in os.path.basename(f)
            and f.endswith(".journal") and (path or os.path.basename(f) == "system.journal")]


def journal_files(path: Optional[str] = None) -> list:
    """Every journal file sd_journal_open() reads, archived ones too (NAME@...journal, and
    .journal~ of an unclean shutdown): of /run/log/journal and /var/log/journal and their
    machine directories (sd-journal.c add_root_directory: the default namespace only, names with
    no '.'), or of `path` and its subdirectories."""
    bases = [path] if path else ["/run/log/journal", "/var/log/journal"]
    dirs = list(bases)
    for base in bases:
        try:
            dirs += [os.path.join(base, d) for d in os.listdir(base)
                     if os.path.isdir(os.path.join(base, d)) and (path or "." not in d)]
        except OSError:
            continue
    found = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        found += [os.path.join(d, n) for n in names if n.endswith((".journal", ".journal~"))]
    return sorted(found)


def journald_collects_kernel_messages(path: Optional[str] = None) -> tuple:
    """(True/False, reason): does this boot's journal hold the kernel's messages?

    journald reads /dev/kmsg only where it may (ReadKMsg=, not in containers), so the test is
    whether this boot's journal has any _TRANSPORT=kernel entry: it always does once journald
    has read the kernel's boot messages.
    """
    if path is None and not os.path.exists(JOURNAL_SOCKET):
        return False, f"journald is not running ({JOURNAL_SOCKET} is missing)"
    try:
        reader = _reader(path)
    except ImportError:
        return False, "the systemd Python module is not installed (python3-systemd)"
    except OSError as e:
        return False, f"cannot open the journal: {e}"
    try:
        reader.this_boot()
        reader.add_match(_TRANSPORT="kernel")
        reader.seek_tail()
        if step(reader, forward=False):
            return True, "journald is recording this boot's kernel messages"
        return False, ("this boot's journal has no kernel messages (journald does not read "
                       "/dev/kmsg here, or this user may not read them)")
    finally:
        reader.close()


# A journal file's header (journal-def.h, struct Header): the signature "LPKSHHRH" at offset 0 and
# at 56 a boot id: in systemd 252 (Debian 12) `boot_id /* last writer */`, which
# journal_file_refresh_header() sets to the writer's own boot each time a file is opened for
# writing; from 254 `tail_entry_boot_id`, the boot of the last entry appended. Either way, for a
# file journald wrote, the current boot's id is there if the file holds an entry of the current
# boot: journald writes only its own boot's entries and opens a file for writing before it appends
# one, and no later boot can have written to it since (this holds for the current boot only, the
# newest one, not for an earlier boot's: `list -b -1` cannot use it). Not so for
# systemd-journal-remote's files (their entries are the senders', of any boots; from 254 the field
# is the last sender's), nor for a file still written to (its header can be filled in after a
# listing: a new file's is all zeros at first). So only journald's archived files are judged by
# their header: NAME@....journal and NAME@....journal~ of system and user-UID journals. Reading 72
# bytes of a file is one pread; sd_journal_open_files() and a lookup of our matches in a file whose
# pages are not cached (a first start after a boot, a persistent journal of many boots) is a
# dozen reads here and there in it.
HEADER_SIGNATURE = b"LPKSHHRH"
HEADER_BOOT_ID = slice(56, 72)


def read_header(path: str, size: int) -> Optional[bytes]:
    """The first `size` bytes of a journal file's header, or None: unreadable, shorter, or not a
    journal file."""
    try:
        with open(path, "rb") as f:
            head = f.read(size)
    except OSError:
        return None
    if len(head) < size or head[:len(HEADER_SIGNATURE)] != HEADER_SIGNATURE:
        return None
    return head


def header_boot_id(path: str) -> Optional[str]:
    """The boot id at offset 56 of a journal file's header (32 hex digits, as _BOOT_ID), or None:
    unreadable, not a journal file, or zero."""
    head = read_header(path, HEADER_BOOT_ID.stop)
    if head is None or not any(head[HEADER_BOOT_ID]):
        return None
    return head[HEADER_BOOT_ID].hex()


def archived_elsewhen(path: str, current_boot: Optional[str]) -> bool:
    """True: `path` is an archived file of journald's whose header names a boot other than
    `current_boot` (the running one), so it holds no entry of the current boot and need not be
    opened to search them. False when that cannot be told (then it is searched)."""
    name = os.path.basename(path)
    if not current_boot or not (name.startswith("system@") or (name.startswith("user-") and "@" in name)):
        return False
    boot = header_boot_id(path)
    return boot is not None and boot != current_boot


# The history is read a window of files at a time. A handle keeps every page it touched in each of
# its files mapped until it is closed, and its seek (at each reopen, REOPEN_AFTER) touches every
# file's entry arrays: on all the boot's files at once, the catch-up's peak grew with the number of
# files (bench/run's long boot, 12 files: ~17 MiB of journal pages). The files one journald (or one
# journal-remote) writes share a sequence-number id (journal-file.c: a rotation's new file takes
# its predecessor's, journald's user files the system file's), and sd-journal orders entries of
# such files by sequence number (journal_file_compare_locations). So the entries up to the
# smallest tail sequence number among the files not read yet all lie in the files whose head is at
# or before it: that window is opened, read up to that number, and the next one opened at the
# cursor. Files of different ids (several writers) are read all at once, as before.
HEADER_POSITIONS = 176  # through head_entry_seqnum (journal-def.h, struct Header)


def header_positions(path: str) -> Optional[Tuple[bytes, int, int, int]]:
    """(seqnum_id, head_entry_seqnum, tail_entry_seqnum, n_entries) of a journal file's header,
    or None if it cannot be read or is not a journal file."""
    head = read_header(path, HEADER_POSITIONS)
    if head is None:
        return None
    n_entries, tail, first = struct.unpack_from("<QQQ", head, 152)
    return head[72:88], first, tail, n_entries


def cursor_seqnum(cursor: Optional[str]) -> Optional[int]:
    """The sequence number in an sd-journal cursor (`s=ID;i=HEX;b=...`), or None."""
    if not cursor:
        return None
    for part in cursor.split(";", 3)[:3]:
        if part.startswith("i="):
            try:
                return int(part[2:], 16)
            except ValueError:
                return None
    return None


def cursor_position(cursor: Optional[str]) -> Optional[Tuple[bytes, int]]:
    """(sequence-number id, sequence number) of an sd-journal cursor, or None."""
    seqnum = cursor_seqnum(cursor)
    if seqnum is None or not cursor or not cursor.startswith("s="):
        return None
    try:
        sid = bytes.fromhex(cursor[2:cursor.find(";")])
    except ValueError:
        return None
    return (sid, seqnum) if len(sid) == 16 else None


def history_window(files: list, after: Optional[Tuple[bytes, int]]) -> Tuple[list, Optional[int], Optional[bytes]]:
    """The files to read next, the sequence number past which the reader must not go (None: no
    bound, read to the end) and the files' sequence-number id, when every entry up to `after`
    (id, number) has been read. Files still written to (no '@' in their name) have no tail yet.
    All files at once, unbounded, when their headers do not share one id or cannot be read; and
    `after` counts only for files of its id (journald started afresh has another)."""
    heads = []
    ids = set()
    for path in files:
        h = header_positions(path)
        if h is None:
            return files, None, None
        ids.add(h[0])
        heads.append((path, h))
    if len(ids) != 1:
        return files, None, None
    (sid,) = ids
    done = after[1] if after is not None and after[0] == sid else 0
    keep = []
    for path, (_, first, tail, n) in heads:
        if "@" not in os.path.basename(path):
            keep.append((first if n else math.inf, math.inf, path))
        elif n and tail > done:
            keep.append((first, tail, path))
    if not keep:
        return files, None, None
    bound = min(tail for _, tail, _ in keep)
    window = [path for first, _, path in keep if first <= bound]
    return window, (None if bound == math.inf else int(bound)), sid


class JournalSource:
    name = "journal"

    def __init__(self, path: Optional[str] = None, reader_factory=_reader, kmsg_path: Optional[str] = "/dev/kmsg",
                 live_during_catch_up: bool = False, idle_release: float = IDLE_RELEASE_S):
        self.path = path
        self._idle_release = idle_release
        # The daemon reads read_live() too (CATCH_UP_SLICE); other callers get every line from
        # read_available() alone, in order.
        self._live_during_catch_up = live_during_catch_up
        self._reader_factory = reader_factory
        self._kmsg_path = kmsg_path
        self._reader: Any = None  # python-systemd's journal.Reader (no type hints), once opened
        self._watch: Any = None  # the handle whose inotify fd is in the epoll set; reads no entry
        self._old_watches: list = []  # replaced after a rotation, to be closed when idle
        self._start_cursor: Optional[str] = None
        self._start_inclusive: Optional[bool] = None
        self._skip_cursor: Optional[str] = None
        self._cursor: Optional[str] = None  # of the last entry read, whatever it was
        self._read_since_open = 0
        self._release_at: Optional[float] = None  # when to reopen the idle reader (IDLE_RELEASE_S)
        self._touched = False  # the reader read entries since read_available() last looked
        self._epoll: Any = None  # a select.epoll once opened
        self._kmsg: Optional[int] = None
        self._wake_at: Optional[float] = None  # time.monotonic() of the doorbell's next retry
        self._rung_us = 0  # kernel timestamp of the newest /dev/kmsg record seen
        self._have_us = 0  # kernel timestamp of the newest kernel entry read from the journal
        self._rung_at = 0.0  # when the doorbell first rang for a record not read yet
        self._retry = DOORBELL_FIRST
        self._progress = False  # journald wrote kernel entries since the last retry
        self._kmsg_lines: collections.deque = collections.deque(maxlen=KMSG_KEEP)
        self.missed = 0  # kernel messages journald reported it missed
        self.reopened = 0  # handles reopened to let go of mapped journal pages
        self._live: Any = None  # the handle at the tail while the history is read (CATCH_UP_SLICE)
        self._live_from: Optional[str] = None  # cursor of the last entry before the live handle's first
        self._live_cursor: Optional[str] = None
        self._live_skip: Optional[str] = None
        self.switched_to_live = False  # set once when the history is done: the daemon swaps parsers
        self._active_only = False  # the reader is open on active_files() alone
        self._at_end = False  # the reader has read to the end since it was opened on all files
        self._boot_verdicts: dict = {}  # archived file -> ((inode, size), holds entries of ours this boot)
        # The history's window (history_window): the reader stops past _window_end (None: it reads
        # to the end); every entry up to _window_after has been read.
        self._window_end: Optional[int] = None
        self._window_after: Optional[Tuple[bytes, int]] = None  # (sequence-number id, number)
        self._window_id: Optional[bytes] = None  # the current window's files' id
        self._windowless = False  # a cursor without a sequence number: every file at once
        self._steps = 0  # entries stepped to, ever (_read_since_open restarts at each reopen)
        self._last_window: tuple = ()
        self.windows = 0  # windows of the history opened (for tests: the files read at once)
        self.widest_window = 0  # the most files one of them held
        self._current_boot = read_boot_id()  # the boot this_boot() matches (sd_id128_get_boot)

    def open(self, resume: Optional[Resume]) -> None:
        position = inclusive = None
        if resume is not None:
            position, inclusive = str(resume.position), resume.inclusive
        self._start_cursor, self._start_inclusive = position, inclusive
        start = cursor_position(position)
        self._window_after = (start[0], start[1] - 1) if start is not None else None
        self._epoll = select.epoll()
        try:
            self._open_watch()
            files, end = self._history_files()
            self._open_reader(position, inclusive, files, end)
            if self._live_during_catch_up:
                self._open_live()
            self._open_doorbell()
        except BaseException:
            self.close()
            raise

    def _open_reader(self, cursor: Optional[str], inclusive: Optional[bool], files: Optional[list] = None,
                     window_end: Optional[int] = None) -> None:
        r = None
        if files:
            try:
                r = self._reader_factory(self.path, files)
            except OSError:  # one of them went away meanwhile (rotated, vacuumed): all files then
                r = None
        if r is None:
            r = self._reader_factory(self.path)
            window_end = None  # on every file: nothing lies outside it
        try:
            # (kernel messages OR journald's "missed kernel messages") AND this boot
            r.add_match(_TRANSPORT="kernel")
            r.add_disjunction()
            # journald's own words only: its driver transport (a trusted field, set by journald;
            # the same MESSAGE_ID from a user's process arrives with _TRANSPORT=journal).
            r.add_match(MESSAGE_ID=MISSED_KERNEL_MESSAGES_ID, _TRANSPORT="driver")
            # The userspace OOM killers' lines, and PID 1's count of systemd-oomd's kill: which of
            # them the killers really wrote is decided by their trusted fields (sources/killers.py).
            r.add_disjunction()
            r.add_match(*(f"SYSLOG_IDENTIFIER={k}" for k in KILLERS if k != KILLER_KERNEL))
            r.add_disjunction()
            r.add_match(MESSAGE_ID=OOMD_UNIT_KILL_ID, _PID="1")
            r.add_conjunction()
            r.this_boot()
            if cursor is not None:
                r.seek_cursor(cursor)
                if not inclusive:
                    self._skip_cursor = cursor
            else:
                r.seek_head()
        except BaseException:
            r.close()
            raise
        self._reader = r
        self._window_end = window_end
        self._read_since_open = 0
        self._release_at = None

    def _history_files(self) -> Tuple[Optional[list], Optional[int]]:
        """The files the history reads now, and where it must stop (history_window)."""
        files = self._boot_files()
        if not files or self._windowless:
            window, end = files, None
        else:
            window, end, self._window_id = history_window(files, self._window_after)
        if (window, end) != self._last_window:
            self._last_window = (window, end)
            self.windows += 1
            self.widest_window = max(self.widest_window, len(window or ()))
        return window, end

    def _next_window(self) -> None:
        """The window is read (the reader reached its end or stepped past it): the next one, opened
        at the last entry read."""
        if self._window_end is not None and self._window_id is not None:
            self._window_after = (self._window_id, self._window_end)
        self._reopen()

    def _open_live(self) -> None:
        """The handle at the tail, positioned LIVE_PREROLL_US of kernel time before the last entry
        there is now (at most LIVE_PREROLL_MAX entries): a report that journald was still writing at
        the start is then read whole by the live parser, not its head by the history's and its kill
        line by the live one (a kill made just before a restart lost its unit so). None if the
        whole boot is that recent (the history reader reads it all)."""
        # On the active files alone: the entries that come after the start are written there, and
        # the tail of a handle on all files kept 23 MiB of them mapped for the whole catch-up here
        # (21 files, 170 MiB: the seek walks each file's entry arrays), on system.journal 1 MiB.
        # A preroll that would reach into an archived file ends at the active file's start: then
        # there is no live handle and the history reads it all, as on a short boot.
        live, _ = self._aside(None, None, active_files(self.path) or None)
        live.seek_tail()
        if not step(live, forward=False):
            live.close()
            return
        newest = int_field(live, "_SOURCE_MONOTONIC_TIMESTAMP") or 0
        for _ in range(LIVE_PREROLL_MAX):
            if not step(live, forward=False):
                live.close()  # the boot's start: all of it is recent
                return
            ts = int_field(live, "_SOURCE_MONOTONIC_TIMESTAMP")
            if ts is not None and ts < newest - LIVE_PREROLL_US:
                break
        self._live_from = live._get_cursor()  # the history's last entry; the live handle's next is after it
        self._live = live

    def _aside(self, cursor: Optional[str], inclusive: Optional[bool], files: Optional[list] = None):
        """A reader opened as _open_reader() opens one, without touching the history reader's
        state: (the reader, the cursor it must skip first or None)."""
        saved = self._reader, self._skip_cursor, self._read_since_open, self._window_end
        try:
            self._skip_cursor = None
            self._open_reader(cursor, inclusive, files)
            return self._reader, self._skip_cursor
        finally:
            self._reader, self._skip_cursor, self._read_since_open, self._window_end = saved

    def _reopen_live(self) -> None:
        """Journal files were added or removed: the live handle sees them only when opened anew."""
        self._live.close()
        self._live = None
        self._live, self._live_skip = self._aside(self._live_cursor or self._live_from, False, self._boot_files())

    # A handle on all files pays, at its first step, a search of our matches in every file: the
    # kernel maps 64 KiB around each page a read faults in (fault-around, mm/memory.c
    # do_fault_around), and the hash-table lookups of the matches' values touch a few such pages
    # in each file. Measured here, a first start on a private journal of 2 vs 40 files of 2,500
    # kernel lines: the history's reader mapped 0.4 MiB more a file after each reopen; a file of
    # another boot cost 0.15 MiB. So the history's reader (and the live handle reopened after a
    # rotation) are opened on the active files and the archived files that hold entries of ours
    # of this boot: each archived file is asked once, in a handle of its own closed at once (its
    # pages go with it), and its answer kept while its inode and size stay (archived files are
    # not written to). A persistent journal's files of earlier boots then cost nothing.
    def _boot_files(self) -> Optional[list]:
        """The files the history must read; None (all of them) if they cannot be listed."""
        try:
            files = journal_files(self.path)
        except OSError:
            return None
        active = set(active_files(self.path))
        keep = []
        for path in files:
            if path in active:
                keep.append(path)  # still written to: whatever it holds now
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone (vacuumed), or renamed by a rotation: listed again at the reopen
            key = (st.st_ino, st.st_size)
            known = self._boot_verdicts.get(path)
            if known is None or known[0] != key:
                known = (key, not archived_elsewhen(path, self._current_boot) and self._holds_ours(path))
                self._boot_verdicts[path] = known
            if known[1]:
                keep.append(path)
        return keep or None

    def _holds_ours(self, path: str) -> bool:
        try:
            r, _ = self._aside(None, None, [path])
        except OSError:
            return True  # cannot tell: read it
        try:
            return step(r)
        finally:
            r.close()

    def read_live(self, limit: int = 4096) -> list:
        """While the history is read: the lines that came after it, at once (for a parser of their
        own: a history report may be open). [] otherwise."""
        r = self._live
        lines: list = []
        if r is None:
            return lines
        while len(lines) < limit and step(r):
            cursor = r._get_cursor()
            if self._live_skip is not None:
                skip, self._live_skip = cursor == self._live_skip, None
                if skip:
                    continue
            self._live_cursor = cursor
            ts = int_field(r, "_SOURCE_MONOTONIC_TIMESTAMP")
            if ts is not None and ts > self._have_us:
                self._have_us = ts
                self._progress = True
            line = self._line_here(r, cursor)
            if line is not None:
                lines.append(line)
        return lines

    def _history_done(self) -> None:
        """The history reached the live handle's start: the live handle reads from now on."""
        old, self._reader = self._reader, self._live
        self._live = None
        self._window_end = None  # the live handle is on the active files, unbounded
        if old is not None:
            old.close()
        self._cursor = self._live_cursor or self._live_from  # where the live handle stands
        self._skip_cursor, self._live_skip = self._live_skip, None
        self._read_since_open = 0
        self.switched_to_live = True
        log.info("this boot's kernel log is read up to the entries that came after the start")

    # The watch is opened on the active files alone: sd_journal_open() maps each file's header and
    # the first pages of its hash tables (64 KiB a file with the kernel's fault-around), so a watch
    # on all 38 files of this machine's runtime journal kept 2.4 MiB of them in the idle daemon's
    # RSS. A handle opened on files (sd_journal_open_files) watches their directories all the same
    # (sd-journal.c, add_current_paths()): it is woken by every write there, and a rotation, which
    # renames the active file (journal_file_archive()), or its removal (a flush of the runtime
    # journal to /var) is INVALIDATE. What it does not report is a new file alone, which journald
    # creates only after such a rename or removal; so after an INVALIDATE the watch is opened anew.
    # Measured with systemd-journal-remote's files here: an append is APPEND, a new file beside
    # the active one APPEND, the active one renamed INVALIDATE.
    def _open_watch(self) -> None:
        """Before the reader: a rotation after this is reported by process()."""
        files = active_files(self.path)
        w = None
        if files:
            try:
                w = self._reader_factory(self.path, files)
            except OSError:  # rotated meanwhile: all files then
                w = None
        if w is None:
            w = self._reader_factory(self.path)
        try:
            self._epoll.register(w.fileno(), select.EPOLLIN)  # sd_journal_get_fd: the inotify watches
        except BaseException:
            w.close()
            raise
        self._watch = w

    def _reopen_watch(self) -> None:
        """A new watch on the files active now. The old one is closed later, when nothing is
        waiting (_close_old_watches): closing a handle with an inotify fd took 12 ms here, with the
        interpreter's lock held (see the module's docstring), and rotations come when journald
        writes most."""
        old = self._watch
        self._epoll.unregister(old.fileno())
        self._watch = None
        try:
            self._open_watch()
        except BaseException:
            old.close()
            raise
        self._old_watches.append(old)

    def _close_old_watches(self) -> None:
        while self._old_watches:
            self._old_watches.pop().close()

    def _open_doorbell(self) -> None:
        if not self._kmsg_path:
            return
        try:
            fd = os.open(self._kmsg_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.info("not woken by %s (%s): new kernel entries are read when journald announces them, "
                     "up to 250 ms later", self._kmsg_path, e.strerror)
            return
        try:
            os.lseek(fd, 0, os.SEEK_END)  # records from now on: what is older is read anyway
            self._epoll.register(fd, select.EPOLLIN)
        except OSError as e:
            os.close(fd)
            log.info("not woken by %s (%s)", self._kmsg_path, e.strerror)
            return
        self._kmsg = fd

    def fileno(self) -> int:
        return self._epoll.fileno()

    def describe(self) -> str:
        return "kernel log from the journal"

    def wake_at(self) -> Optional[float]:
        """When (time.monotonic()) to call read_available() again though fileno() stayed quiet:
        the doorbell's next retry while the journal lacks a record the kernel logged, or the
        idle reader's reopen (IDLE_RELEASE_S); else None. The reopen only while it is to come: a
        daemon that cannot call read_available() when it is due (a write to retry first) must
        not spin on it; it is done at the next read."""
        release = self._release_at
        if release is not None and release <= time.monotonic():
            release = None
        if self._wake_at is None or (release is not None and release < self._wake_at):
            return release
        return self._wake_at

    def read_available(self, limit: int = 4096) -> list:
        self._wake_at = None  # read now: _doorbell_retry() below says when again, if need be
        rang = self._ring()
        # sd_journal_process(): consumes the inotify events; INVALIDATE: files were added or
        # removed (rotation, vacuum), which the reading handle sees only when opened anew.
        if self._watch.process() == INVALIDATE:
            self._at_end = False
            self._reopen_watch()
            self._reopen()
            if self._live is not None:
                self._reopen_live()
        if self._live is not None:
            before, want = self._steps, min(limit, CATCH_UP_SLICE)
            lines = self._read(want)
            if self._live is not None and self._steps - before < want:
                self._history_done()  # at its end without the live handle's start: rotated away
            limit = len(lines)  # no second read below: the daemon looks at read_live() first
            time.sleep(0)
        else:
            before = self._steps
            lines = self._read(limit)
            if self._steps - before < limit and not self._at_end:
                self._at_end = True  # read to the end: from here on the active files suffice
                # ...and after a rotation, the history's windows start from here.
                self._window_after = cursor_position(self._cursor) or self._window_after
                if not self._active_only:
                    self._reopen()
        if self._read_since_open >= REOPEN_AFTER:  # in a backlog too: its peak RSS stays low
            self._reopen()
            if len(lines) < limit:
                lines += self._read(limit - len(lines))
        if self._touched and self._active_only and self._live is None:  # entries read: their pages are mapped
            self._release_at = time.monotonic() + self._idle_release
        elif self._release_at is not None and time.monotonic() >= self._release_at and not lines:
            self._reopen()  # nothing to hand on now: no line waits for it
            self._close_old_watches()
        self._touched = False
        if self._kmsg is not None and (rang or self._rung_at):
            self._doorbell_retry()
        return lines

    def _read(self, limit: int) -> list:
        r = self._reader
        lines: list = []
        while len(lines) < limit:
            if not step(r):
                if self._window_end is None:
                    break
                self._next_window()  # this window is read: the next, up to the end of the files
                r = self._reader
                continue
            cursor = r._get_cursor()
            if self._window_end is not None:
                seqnum = cursor_seqnum(cursor)
                if seqnum is None or seqnum > self._window_end:
                    # Past the window: a file not opened may hold the entries that come first.
                    if seqnum is None:
                        self._windowless = True  # cannot tell: reopened on every file of the boot
                    self._next_window()
                    r = self._reader
                    continue
            self._read_since_open += 1
            self._steps += 1
            self._touched = True
            self._cursor = cursor
            ts = int_field(r, "_SOURCE_MONOTONIC_TIMESTAMP")
            if ts is not None and ts > self._have_us:
                self._have_us = ts
                self._progress = True
            if self._skip_cursor is not None:
                skip, self._skip_cursor = cursor == self._skip_cursor, None
                if skip:
                    continue
            line = self._line_here(r, cursor)
            if line is not None:
                lines.append(line)
            if cursor == self._live_from and self._live is not None:
                self._history_done()
                break
        return lines

    def _ring(self) -> bool:
        """Drains /dev/kmsg; True if the kernel logged something new."""
        if self._kmsg is None:
            return False
        rang = False
        while True:
            try:
                record = os.read(self._kmsg, _KMSG_READ)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # overrun: records we need not see; the next read goes on
                    continue
                raise
            if not record:
                break
            line = parse_record(record)
            if line is not None:
                self._kmsg_lines.append(line)
            try:
                ts = int(record.split(b",", 3)[2])
            except (IndexError, ValueError):
                continue
            if ts > self._rung_us:
                self._rung_us = ts
                rang = True
        if rang and not self._rung_at:
            self._rung_at = time.monotonic()
            self._retry = DOORBELL_FIRST
        return rang

    def ring(self) -> None:
        """Drains the doorbell now (also while the daemon waits to retry a journal write, so that
        the kernel's buffer does not overrun the doorbell too, and when a SIGKILL exit woke it).
        New records: the journal is to be read at once (wake_at), as when the doorbell's fd woke
        the daemon; drained here, that fd no longer says so, and journald's own notification comes
        up to 250 ms later (bench/run's kill storm: p50 7 -> 84 ms when SIGKILL exits woke the
        daemon first). Nothing new: a retry already due stays due (this drain used to cancel the
        retries read_available() had just set: the next line the kernel printed, the oom_reaper's
        a few ms after the kill line, was what woke the daemon instead). read_available() then
        goes on with the retries."""
        if self._ring():
            self._wake_at = time.monotonic()

    def take_kmsg_lines(self) -> list:
        """The kernel's records the doorbell read since the last call (KernelLine, their position
        kmsg's sequence number: never saved, they are not the journal's), in the kernel's order."""
        lines = list(self._kmsg_lines)
        self._kmsg_lines.clear()
        return lines

    def _doorbell_retry(self) -> None:
        """Reads again soon while the journal lacks a record the kernel logged."""
        now = time.monotonic()
        if self._progress:  # journald is writing (a burst): wait from here, briefly again
            self._progress = False
            self._rung_at, self._retry = now, DOORBELL_FIRST
        if self._have_us >= self._rung_us or now - self._rung_at > DOORBELL_GIVE_UP:
            self._rung_at = 0.0
            self._wake_at = None
            return
        self._wake_at = now + self._retry
        self._retry = min(DOORBELL_MAX, self._retry * 2)

    def _reopen(self) -> None:
        """A new reading handle at the last cursor, so the old one's mapped pages go and the
        journal's current files are seen."""
        old = self._reader
        old.close()
        self._reader = None
        files = active_files(self.path) if self._at_end and self._live is None else None
        self._active_only = bool(files)
        end = None
        if not files:
            files, end = self._history_files()
        if self._cursor is None:  # nothing read yet: from where it started
            self._open_reader(self._start_cursor, self._start_inclusive, files, end)
        else:
            self._open_reader(self._cursor, False, files, end)
        self.reopened += 1
        log.debug("journal reopened at the last cursor (%d times)", self.reopened)

    def _line_here(self, r, cursor: str) -> "KernelLine | KillerLine | None":
        if field(r, "_TRANSPORT") not in (b"kernel", b"driver"):
            return killer_line_here(r, cursor)
        message_id = field(r, "MESSAGE_ID")
        if message_id is not None and message_id.decode("ascii", "replace").replace("-", "") == MISSED_KERNEL_MESSAGES_ID:
            self.missed += 1
            log.warning("journald reports it missed kernel messages (%s); an OOM kill among them "
                        "cannot be recorded", (field(r, "MESSAGE") or b"").decode("utf-8", "replace"))
            return None
        return kernel_line_here(r, cursor)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._live is not None:
            self._live.close()
            self._live = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._close_old_watches()
        if self._kmsg is not None:
            os.close(self._kmsg)
            self._kmsg = None
        self._wake_at = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
