"""A first start's catch-up on a long boot: lines that come meanwhile are read at once (read_live),
and every line is read exactly once, history and live together (issue #18).

The boot is a private journal written by systemd-journal-remote from export-format entries, as
bench/long_boot_bench.py makes a million of them, so that this machine's kernel log stays as it is.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import unavailable
from oom_journal.sources.journal import CATCH_UP_SLICE, LIVE_PREROLL_US, JournalSource

REMOTE = "/lib/systemd/systemd-journal-remote"


def export(boot: str, mono_us: int, message: str) -> bytes:
    return (f"__REALTIME_TIMESTAMP={mono_us + 1_700_000_000_000_000}\n__MONOTONIC_TIMESTAMP={mono_us}\n"
            f"_BOOT_ID={boot}\n_TRANSPORT=kernel\nPRIORITY=6\nSYSLOG_FACILITY=0\n"
            f"_SOURCE_MONOTONIC_TIMESTAMP={mono_us}\nMESSAGE={message}\n\n").encode()


# "rotated": in a small tmpfs, where journal-remote starts a new file every ~500 KiB (its limit
# follows the file system's size): the history is then read a window of files at a time.
@pytest.fixture(params=["one-file", "rotated"])
def private_journal(tmp_path, request):
    if not os.path.exists(REMOTE):
        unavailable(f"{REMOTE} is missing (apt-get install systemd-journal-remote)")
    path = tmp_path
    if request.param == "rotated":
        if os.geteuid() != 0:
            unavailable("mounting a tmpfs needs root")
        path = tmp_path / "small"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "oomj-catch-up", str(path)], check=True)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    remote = subprocess.Popen([REMOTE, f"--output={path}/remote.journal", "-"], stdin=subprocess.PIPE)

    def write(messages, mono_from, step=1):
        remote.stdin.write(b"".join(export(boot, mono_from + i * step, m) for i, m in enumerate(messages)))
        remote.stdin.flush()

    try:
        yield path, write
    finally:
        remote.stdin.close()
        remote.wait(timeout=30)
        if path != tmp_path:
            subprocess.run(["umount", str(path)], check=False)


PAD = " " + "x" * 400  # ~1,200 entries a file in the small tmpfs


def wait_for_count(path: Path, count: int) -> None:
    from systemd import journal
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = journal.Reader(path=str(path))
        n = sum(1 for _ in r)
        r.close()
        if n >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"journal-remote wrote fewer than {count} entries")


def test_lines_after_the_start_are_read_at_once_and_every_line_once(private_journal):
    path, write = private_journal
    step = 10_000  # µs between history lines: the live handle starts LIVE_PREROLL_US before the tail
    history = [f"history line {i}{PAD}" for i in range(6 * CATCH_UP_SLICE + 17)]
    write(history, 1_000_000, step)
    wait_for_count(path, len(history))
    recent = LIVE_PREROLL_US // step + 1  # the last lines, read by the live handle (a report in them whole)
    src = JournalSource(path=str(path), kmsg_path=None, live_during_catch_up=True)
    src.open(None)
    try:
        if path.name == "small":
            assert len(os.listdir(path)) >= 3  # rotated: the windows are what is tested
        got_history = src.read_available()
        assert [line.message for line in got_history] == history[:CATCH_UP_SLICE]  # one slice
        write(["live line 0", "live line 1"], 100_000_000)
        wait_for_count(path, len(history) + 2)
        # The live lines come before the rest of the history...
        assert [line.message for line in src.read_live()] == history[-recent:] + ["live line 0", "live line 1"]
        assert src.read_live() == []
        while not src.switched_to_live:
            lines = src.read_available()
            assert lines, "the history ended without reaching the live handle's start"
            got_history += lines
        # ...which is read up to where the live handle began, and no further: nothing twice.
        assert [line.message for line in got_history] == history[:-recent]
        write(["after the switch"], 200_000_000)
        wait_for_count(path, len(history) + 3)
        assert src.read_live() == []
        deadline = time.monotonic() + 10
        after = []
        while not after and time.monotonic() < deadline:
            after = src.read_available()
        assert [line.message for line in after] == ["after the switch"]
    finally:
        src.close()


def test_without_live_reading_every_line_comes_from_read_available_in_order(private_journal):
    path, write = private_journal
    history = [f"history line {i}{PAD}" for i in range(5 * CATCH_UP_SLICE + 5)]
    write(history, 1_000_000)
    wait_for_count(path, len(history))
    src = JournalSource(path=str(path), kmsg_path=None)
    src.open(None)
    try:
        write(["live line"], 5_000_000)
        wait_for_count(path, len(history) + 1)
        assert [line.message for line in src.read_available(limit=100_000)] == history + ["live line"]
        assert src.read_live() == []
    finally:
        src.close()


def test_the_idle_reader_is_reopened_once_after_its_last_entry_and_never_asks_for_a_past_wake_up(private_journal):
    """IDLE_RELEASE_S after the reader last read an entry it is reopened (its mapped pages go):
    wake_at() asks for that wake-up, and once it is past without a read (the daemon had a write
    to retry first), no longer: a past deadline would make the daemon's select() spin."""
    path, write = private_journal
    write([f"history line {i}" for i in range(50)], 1_000_000)
    wait_for_count(path, 50)
    src = JournalSource(path=str(path), kmsg_path=None, idle_release=0.3)
    src.open(None)
    try:
        assert len(src.read_available()) == 50
        src.read_available()  # at the end: from here on the active file alone
        write(["live line"], 5_000_000)
        wait_for_count(path, 51)
        t = time.monotonic()
        assert [line.message for line in src.read_available()] == ["live line"]
        due = src.wake_at()
        assert due is not None and t < due <= time.monotonic() + 0.3, due
        reopened = src.reopened
        assert src.read_available() == [] and src.reopened == reopened  # not yet due
        time.sleep(max(0.0, due - time.monotonic()) + 0.05)
        assert src.wake_at() is None  # past: not asked for again
        assert src.read_available() == [] and src.reopened == reopened + 1  # the next read reopens it
        assert src.wake_at() is None  # nothing read since: no more wake-ups
        write(["after the reopen"], 6_000_000)
        wait_for_count(path, 52)
        assert [line.message for line in src.read_available()] == ["after the reopen"]  # nothing lost or read twice
    finally:
        src.close()
