"""A first start reads the boot's history a window of journal files at a time (issue #18: a peak
RSS independent of the journal's size; sources.journal.history_window): every entry is still read,
once, in the journal's order, across file boundaries and a resume cursor.

The journals are private, written by systemd-journal-remote into a small tmpfs, whose size makes
journal-remote rotate every ~1,150 entries (its file size limit follows the file system's size),
so one writer leaves ~18 files sharing one sequence-number id, as journald's rotations do.
"""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import unavailable
from oom_journal.model import Resume
from oom_journal.sources.journal import (JournalSource, cursor_position, cursor_seqnum, header_positions,
                                         history_window)
from oom_journal.sources.journal_fields import read_boot_id

REMOTE = "/lib/systemd/systemd-journal-remote"


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    if not os.path.exists(REMOTE):
        unavailable(f"{REMOTE} is missing (apt-get install systemd-journal-remote)")
    d = tmp_path / "journal"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "oomj-windows", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def write_kernel_lines(out: Path, first: int, count: int, boot: str, name: str = "remote.journal") -> None:
    entries = "".join(
        f"__REALTIME_TIMESTAMP={1_700_000_000_000_000 + i * 1000}\n__MONOTONIC_TIMESTAMP={1000 + i * 1000}\n"
        f"_BOOT_ID={boot}\n_TRANSPORT=kernel\nPRIORITY=6\n_SOURCE_MONOTONIC_TIMESTAMP={1000 + i * 1000}\n"
        f"MESSAGE=line {i} {'x' * 200}\n\n" for i in range(first, first + count))
    subprocess.run([REMOTE, f"--output={out / name}", "-"], input=entries.encode(), check=True, capture_output=True)


def read_all(src: JournalSource) -> list:
    got = []
    while True:
        lines = src.read_available()
        if not lines:
            return got
        got += [int(x.message.split()[1]) for x in lines]


def test_the_history_is_read_whole_and_in_order_a_window_of_files_at_a_time(small_fs):
    boot = read_boot_id()
    write_kernel_lines(small_fs, 0, 20000, boot)
    files = sorted(str(p) for p in small_fs.iterdir())
    assert len(files) >= 10, files  # the rotations the test is about
    src = JournalSource(path=str(small_fs), kmsg_path=None)
    src.open(None)
    try:
        assert read_all(src) == list(range(20000))
        # One window per archived file (the entries up to its tail lie in it alone), and the reader
        # never held more than two files at once (the window's and the active one at the end).
        assert src.windows >= len(files) - 1, (src.windows, len(files))
        assert src.widest_window <= 2, (src.windows, src.widest_window)
    finally:
        src.close()


def test_a_resume_cursor_in_the_middle_reads_on_from_there(small_fs):
    boot = read_boot_id()
    write_kernel_lines(small_fs, 0, 8000, boot)
    src = JournalSource(path=str(small_fs), kmsg_path=None)
    src.open(None)
    try:
        positions = []
        while True:
            lines = src.read_available()
            if not lines:
                break
            positions += [(int(x.message.split()[1]), x.position) for x in lines]
    finally:
        src.close()
    n, cursor = positions[4321]
    assert n == 4321
    again = JournalSource(path=str(small_fs), kmsg_path=None)
    again.open(Resume(cursor, False))
    try:
        assert read_all(again) == list(range(4322, 8000))
    finally:
        again.close()


def test_window_of_real_headers(small_fs):
    boot = read_boot_id()
    write_kernel_lines(small_fs, 0, 5000, boot)
    files = sorted(str(p) for p in small_fs.iterdir())
    archived = [f for f in files if "@" in os.path.basename(f)]
    heads = {f: header_positions(f) for f in files}
    assert len({h[0] for h in heads.values()}) == 1  # one writer: one sequence-number id
    sid = heads[files[0]][0]
    first = min(archived, key=lambda f: heads[f][1])
    assert history_window(files, None) == ([first], heads[first][2], sid)
    # Every archived file read: the active one alone, unbounded.
    last = max(heads[f][2] for f in archived)
    assert history_window(files, (sid, last)) == ([str(small_fs / "remote.journal")], None, sid)
    # A position of another writer's files says nothing of these: from the first again.
    assert history_window(files, (bytes(16), last)) == ([first], heads[first][2], sid)
    # A second writer (another id): everything at once, as before.
    write_kernel_lines(small_fs, 9000, 10, boot, name="other.journal")
    both = sorted(str(p) for p in small_fs.iterdir())
    assert history_window(both, None) == (both, None, None)


def fake_header(path: Path, seqnum_id: bytes, head: int, tail: int, n: int) -> str:
    """A journal file's header alone (all history_window reads): signature, id, counts."""
    h = bytearray(176)
    h[:8] = b"LPKSHHRH"
    h[72:88] = seqnum_id
    h[152:176] = struct.pack("<QQQ", n, tail, head)
    path.write_bytes(bytes(h))
    return str(path)


def test_window_of_interleaved_files(tmp_path):
    """journald's user files share the system file's id and interleave with it: the window holds
    every file that starts before the first one to end, and stops at that end."""
    sid = bytes(range(16))
    a = fake_header(tmp_path / "system@a.journal", sid, 1, 99, 50)  # odd numbers 1..99
    u = fake_header(tmp_path / "user-1000@u.journal", sid, 2, 200, 100)  # even numbers 2..200
    b = fake_header(tmp_path / "system@b.journal", sid, 101, 301, 100)
    live = fake_header(tmp_path / "system.journal", sid, 302, 400, 99)
    empty = fake_header(tmp_path / "system@e.journal", sid, 0, 0, 0)
    files = [a, u, b, live, empty]
    assert history_window(files, None) == ([a, u], 99, sid)
    assert history_window(files, (sid, 99)) == ([u, b], 200, sid)
    assert history_window(files, (sid, 200)) == ([b], 301, sid)
    assert history_window(files, (sid, 301)) == ([live], None, sid)
    # A file that is no journal file: everything at once.
    (tmp_path / "system@junk.journal").write_bytes(b"junk")
    assert history_window(files + [str(tmp_path / "system@junk.journal")], None)[1] is None


def test_cursor_seqnum():
    cursor = "s=dd89daf11dd9472ca47e4d9bd7d3484d;i=485;b=0123;m=3e8;t=60a24;x=9"
    assert cursor_seqnum(cursor) == 0x485
    assert cursor_position(cursor) == (bytes.fromhex("dd89daf11dd9472ca47e4d9bd7d3484d"), 0x485)
    assert cursor_position("s=zz;i=1") is None and cursor_position("i=1") is None
    assert cursor_seqnum(None) is None and cursor_seqnum("s=x;b=y") is None and cursor_seqnum("s=x;i=zz") is None
