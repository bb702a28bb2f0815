"""The journal `list` and `show` read: the local one, a directory of journal files or files; whether
this user may read it (check_access), its boots (journalctl --list-boots) and which one a -b
argument names."""
from __future__ import annotations

import os
import re
from typing import Callable, Iterable, Optional

from oom_journal.sources.journal_fields import read_boot_id
from oom_journal.history.entries import CONVERTERS, entry_value
from oom_journal.history.timespec import BootSpec

# The default journal directories sd_journal_open(SD_JOURNAL_LOCAL_ONLY) reads (sd-journal.c).
LOCAL_JOURNAL_DIRS = ("/run/log/journal", "/var/log/journal")
PERMISSION_HINT = "add your user to the systemd-journal (or adm) group"


class JournalAccessError(Exception):
    """The journal cannot be read; the text says why and what to do."""


class UsageError(Exception):
    """A bad argument (exit status 2, like argparse's own errors)."""


def default_reader_factory(directory: Optional[str], files: Optional[list]):
    from systemd import journal  # type: ignore[attr-defined]  # imported here: `oom-journal run --output stdout` works without it

    if files:
        return journal.Reader(files=list(files), converters=CONVERTERS)
    if directory:
        return journal.Reader(path=directory, converters=CONVERTERS)
    return journal.Reader(converters=CONVERTERS)


def _read_machine_id(etc_root: str = "/etc") -> Optional[str]:
    try:
        with open(os.path.join(etc_root, "machine-id")) as f:
            machine = f.read().strip()
    except OSError:
        return None
    return machine if re.fullmatch(r"[0-9a-f]{32}", machine) else None


class Journal:
    """The journal to read: the local one (default), a directory of journal files, or files.

    reader_factory(directory, files) returns a systemd.journal.Reader (or an object with its
    interface); it is the seam for the journal, like the daemon's sources.
    """

    def __init__(self, directory: Optional[str] = None, files: Optional[list] = None,
                 reader_factory: Callable = default_reader_factory, proc_root: str = "/proc",
                 local_dirs: Iterable[str] = LOCAL_JOURNAL_DIRS, etc_root: str = "/etc"):
        self.directory = directory
        self.files = list(files) if files else None
        self.reader_factory = reader_factory
        self.local = not directory and not files
        self.current_boot = read_boot_id(proc_root) if self.local else None
        self.local_dirs = tuple(local_dirs)
        self.etc_root = etc_root
        self._boots: Optional[list] = None

    def describe(self) -> str:
        if self.files:
            return "the journal file" + ("s " if len(self.files) > 1 else " ") + ", ".join(self.files)
        if self.directory:
            return f"the journal in {self.directory}"
        return "the journal"

    def check_access(self) -> None:
        """Raises JournalAccessError when the journal files cannot be read.

        sd_journal_open() skips files it may not read without an error (journalctl says "No
        journal files were opened due to insufficient permissions" from sd-journal's private
        error list, which python-systemd does not expose): a user outside the systemd-journal
        group gets an empty journal, and "no OOM kills" would be a lie. So look first.
        """
        if self.files:
            for path in self.files:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as e:
                    raise JournalAccessError(self._access_message(path, e)) from e
            return
        roots = [self.directory] if self.directory else [d for d in self.local_dirs if os.path.isdir(d)]
        # sd_journal_open(SD_JOURNAL_LOCAL_ONLY) reads this machine's directory only.
        machine = None if self.directory else _read_machine_id(self.etc_root)
        if self.directory and not os.path.isdir(self.directory):
            try:
                os.listdir(self.directory)
            except OSError as e:
                raise JournalAccessError(self._access_message(self.directory, e)) from e
            raise JournalAccessError(f"cannot read the journal: {self.directory} is not a directory")
        for root in roots:
            for path in self._unreadable(root, machine):
                raise JournalAccessError(self._access_message(path, PermissionError(13, "Permission denied")))

    @staticmethod
    def _unreadable(root: str, machine: Optional[str]):
        """Journal directories and files below root that this user may not read: the files in
        it and in its machine-id directories (sd-journal's add_root_directory(): one level),
        or only in `machine`'s when given."""
        try:
            names = os.listdir(root)
        except OSError:
            yield root
            return
        for name in names:
            path = os.path.join(root, name)
            if name.endswith((".journal", ".journal~")):
                if not os.access(path, os.R_OK):
                    yield path
            elif re.fullmatch(r"[0-9a-f]{32}", name) and (machine is None or name == machine) and os.path.isdir(path):
                try:
                    subs = os.listdir(path)
                except OSError:
                    yield path
                    continue
                for sub in subs:
                    # user-UID.journal files are each user's own: only the system's matter here.
                    if sub.startswith("system") and sub.endswith((".journal", ".journal~")) \
                            and not os.access(os.path.join(path, sub), os.R_OK):
                        yield os.path.join(path, sub)

    def _access_message(self, path: str, error: OSError) -> str:
        text = f"cannot read the journal: {path}: {error.strerror or error}"
        if isinstance(error, PermissionError):
            text += f"; {PERMISSION_HINT}"
        return text

    def reader(self):
        try:
            r = self.reader_factory(self.directory, self.files)
        except ImportError as e:
            raise JournalAccessError(f"cannot read the journal: the systemd Python module is not installed "
                                     f"(apt-get install python3-systemd): {e}") from e
        except OSError as e:
            raise JournalAccessError(self._access_message(self.directory or ", ".join(self.files or []) or "journal", e)) from e
        try:
            r.data_threshold = 0  # the whole field: a command line can be longer than 64 KiB
        except AttributeError:
            pass
        return r

    def boots(self) -> list:
        """[(boot id, first entry's realtime µs)], oldest first, as journalctl --list-boots."""
        if self._boots is None:
            r = self.reader()
            try:
                found = []
                for boot in r.query_unique("_BOOT_ID"):
                    boot = str(boot).replace("-", "")
                    r.flush_matches()
                    r.add_match(_BOOT_ID=boot)
                    r.seek_head()
                    entry = r.get_next()
                    if entry:
                        found.append((boot, entry_value(entry, "__REALTIME_TIMESTAMP") or 0))
                self._boots = sorted(found, key=lambda b: b[1])
            finally:
                r.close()
        return self._boots

    def resolve_boot(self, spec: BootSpec) -> Optional[str]:
        """The boot id a -b argument names; None for 'all'. Raises UsageError if there is none."""
        if spec.all:
            return None
        if spec.boot_id is None and spec.offset == 0 and self.local and self.current_boot:
            return self.current_boot  # journalctl's shortcut for the local journal
        if spec.boot_id is not None and spec.offset == 0:
            return spec.boot_id
        ids = [b for b, _ in self.boots()]
        if not ids:
            raise UsageError(f"{self.describe()} has no boots")
        if spec.boot_id is not None:
            if spec.boot_id not in ids:
                raise UsageError(f"boot {spec.boot_id} is not in {self.describe()}")
            index = ids.index(spec.boot_id) + spec.offset
        elif spec.offset > 0:
            index = spec.offset - 1
        else:
            index = len(ids) - 1 + spec.offset
        if not 0 <= index < len(ids):
            raise UsageError(f"no boot with offset {spec.offset:+d} in {self.describe()} "
                             f"(it has {len(ids)}; see journalctl --list-boots)")
        return ids[index]
