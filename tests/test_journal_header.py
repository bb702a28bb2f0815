"""A first start opens no archived journald file whose header names another boot (issue #18,
READY=1 on a long boot): the boot id at offset 56 of a journal file's header
(sources.journal.archived_elsewhen). Every other file is still searched: journald's active files,
its archived files of this boot or with no boot in the header, and systemd-journal-remote's files,
whatever their header says.

The journals are private, written by systemd-journal-remote (as tests/test_recorded_search.py
writes one), renamed as journald names its files, and their header's boot id rewritten. To make the
skipping observable, the files whose header names another boot do hold entries of the searched boot
(journald never writes such a file): what the searches find says which files they opened.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from conftest import MESSAGE_ID, unavailable
from oom_journal.outputs.journal import JournalWriter
from oom_journal.sources.journal import JournalSource, archived_elsewhen, header_boot_id

REMOTE = "/lib/systemd/systemd-journal-remote"
MACHINE = "0123456789abcdef0123456789abcdef"

# file name (in a machine directory, as journald's) -> header boot: "this", "other" or "zero"
FILES = {
    "system@0000000000000000000000000000000a-0000000000000001-0006000000000001.journal": "other",
    "user-1000@0000000000000000000000000000000b-0000000000000001-0006000000000002.journal": "other",
    "system@0006000000000003-00000000000000cd.journal~": "other",  # an unclean shutdown's
    "system@0000000000000000000000000000000c-0000000000000001-0006000000000004.journal": "this",
    "system@0000000000000000000000000000000d-0000000000000001-0006000000000005.journal": "zero",
    "system.journal": "other",  # still written to: its header is not trusted
    "remote@0000000000000000000000000000000e-0000000000000001-0006000000000006.journal": "other",
}
SKIPPED = {name for name, boot in FILES.items() if boot == "other" and "@" in name and not name.startswith("remote")}


def _need_remote():
    if not os.path.exists(REMOTE):
        unavailable(f"{REMOTE} is missing (apt-get install systemd-journal-remote)")


def _write(path: Path, export: str, header_boot: str) -> None:
    """A journal file of these export-format entries, its header's boot id then set to `header_boot`."""
    tmp = path.parent / "remote.journal"
    subprocess.run([REMOTE, f"--output={tmp}", "-"], input=export.encode(), check=True, capture_output=True)
    tmp.rename(path)
    with open(path, "r+b") as f:
        f.seek(56)
        f.write(bytes.fromhex(header_boot))
    assert header_boot_id(str(path)) == (None if header_boot == "0" * 32 else header_boot)


def _header(boot: str, kind: str) -> str:
    return {"this": boot, "other": uuid.uuid4().hex, "zero": "0" * 32}[kind]


def ours(boot: str, event_id: str, mono: int, incident: str) -> str:
    return (f"__REALTIME_TIMESTAMP={1_700_000_000_000_000 + mono}\n__MONOTONIC_TIMESTAMP={mono}\n"
            f"_BOOT_ID={boot}\n_TRANSPORT=journal\n_UID=0\nMESSAGE_ID={MESSAGE_ID}\nOOM_EVENT_ID={event_id}\n"
            f"OOM_KERNEL_TIMESTAMP_USEC={mono}\nOOM_INCIDENT_ID={incident}\nOOM_CGROUP=/app-{mono}.slice\n"
            f"MESSAGE=killed process\n\n")


def test_recorded_search_skips_only_journald_archives_of_another_boot(tmp_path):
    _need_remote()
    boot = uuid.uuid4().hex
    machine_dir = tmp_path / MACHINE
    machine_dir.mkdir()
    expected_ids, expected_incidents = set(), set()
    for i, (name, kind) in enumerate(sorted(FILES.items())):
        event_id, mono = f"{boot}-{1_000_000 + i}-{100 + i}", 1_000_000 + i
        _write(machine_dir / name, ours(boot, event_id, mono, f"incident-{i}"), _header(boot, kind))
        if name not in SKIPPED:
            expected_ids.add(event_id)
            expected_incidents.add((f"incident-{i}", mono))
    writer = JournalWriter(send=lambda *lines: None, journal_path=str(tmp_path))
    assert writer.recorded_event_ids(boot) == expected_ids
    assert {(inc, ts) for inc, ts, _ in writer.recent_incidents(boot)} == expected_incidents
    # The same files, none of them skipped when the header names the searched boot or none.
    assert not any(archived_elsewhen(str(machine_dir / name), None) for name in FILES)


def test_recent_incidents_are_the_newest_entries_of_all_files(tmp_path):
    """One file at a time, newest file first: the newest RECENT_INCIDENT_ENTRIES entries of ours
    of all files, as one handle on all of them steps back through, whichever file they are in."""
    _need_remote()
    from oom_journal.outputs import journal as out

    boot = uuid.uuid4().hex
    machine_dir = tmp_path / MACHINE
    machine_dir.mkdir()
    limit = out.RECENT_INCIDENT_ENTRIES
    # Three archived files of this boot, named out of their time order: the newest entries are in
    # the first name and the second; the third's are all older than the newest `limit`.
    spans = {"system@c-1-3.journal": (0, 400), "system@a-1-1.journal": (400 + limit // 2, 400 + limit + 300),
             "system@b-1-2.journal": (400, 400 + limit // 2)}
    for name, (first, last) in spans.items():
        export = "".join(ours(boot, f"{boot}-{1_000_000 + n}-{n}", 1_000_000 + n, f"incident-{n}")
                         for n in range(first, last))
        _write(machine_dir / name, export, boot)
    writer = JournalWriter(send=lambda *lines: None, journal_path=str(tmp_path))
    found = {ts for _, ts, _ in writer.recent_incidents(boot)}
    total = 400 + limit + 300
    assert found == {1_000_000 + n for n in range(total - limit, total)}


def kernel_line(boot: str, mono: int, message: str) -> str:
    return (f"__REALTIME_TIMESTAMP={1_700_000_000_000_000 + mono}\n__MONOTONIC_TIMESTAMP={mono}\n"
            f"_BOOT_ID={boot}\n_TRANSPORT=kernel\nPRIORITY=6\nSYSLOG_FACILITY=0\n"
            f"_SOURCE_MONOTONIC_TIMESTAMP={mono}\nMESSAGE={message}\n\n")


def test_journal_source_reads_every_file_but_journald_archives_of_another_boot(tmp_path):
    """The catch-up's reader (JournalSource._boot_files) on a private journal: the same files."""
    _need_remote()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")  # this_boot()
    machine_dir = tmp_path / MACHINE
    machine_dir.mkdir()
    expected = set()
    for i, (name, kind) in enumerate(sorted(FILES.items())):
        message = f"test line {i} of {name}"
        _write(machine_dir / name, kernel_line(boot, 1_000_000 + i, message), _header(boot, kind))
        if name not in SKIPPED:
            expected.add(message)
    src = JournalSource(path=str(tmp_path), kmsg_path=None)
    src.open(None)
    try:
        got = set()
        for _ in range(10):
            lines = src.read_available()
            got |= {x.message for x in lines if isinstance(getattr(x, "message", None), str)}
            if not lines:
                break
    finally:
        src.close()
    assert got == expected
