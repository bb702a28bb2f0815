"""Kill lines that share a microsecond are different kills (found in CI, 2026-12-02).

Debian 12's kernel in qemu printed the lines of a memory.oom.group kill with one timestamp: the
victim's kill line, "Tasks in ... are going to be killed" and the next member's kill line, all at
71686265 µs (tests/fixtures/kernel-timed/). The event id was the boot and the kill line's
timestamp, so the member's kill was taken as the victim's, already recorded, and never written;
the second witness then counted one kill missing and recorded a SIGKILL exit of systemd's as it.

The kernel's lines cannot be made to share a microsecond on this machine, so they are the captured
ones, in a private journal (systemd-journal-remote, as tests/test_memory.py writes one) that the
real daemon reads through the hidden --journal-dir, at the times they had relative to each other;
the pids are moved above any this machine hands out, so no process of it is taken for a victim.
What is asserted is the daemon's output in the real journal, and `oom-journal list`.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

from conftest import MESSAGE_ID, journal_entries, unavailable, wait_for_entries
from oom_journal.history.commands import main_list

REMOTE = "/lib/systemd/systemd-journal-remote"
FIXTURE = Path(__file__).parent / "fixtures" / "kernel-timed" / "v6.1-debian12-oom-group-shared-timestamp.jsonl"
FIXTURE_PIDS = (559, 560, 561, 562)  # sh and its three python3
KILLED = (561, 559, 562)  # in the order of their kill lines


def fixture_lines() -> list:
    return [json.loads(x) for x in FIXTURE.read_text().splitlines() if x and not x.startswith("# ")]


def moved(message: str, base: int) -> str:
    return re.sub(r"\b(559|560|561|562)\b", lambda m: str(base + int(m.group(1))), message)


def write_journal(path: Path, base: int) -> None:
    """The fixture's lines as this boot's kernel log, ending 20 s ago, their pids moved by `base`."""
    this_boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    rows = fixture_lines()
    shift = time.monotonic_ns() // 1000 - 20_000_000 - rows[-1]["us"]
    real = time.time_ns() // 1000 - time.monotonic_ns() // 1000
    chunks = []
    for i, row in enumerate(rows):
        mono = row["us"] + shift
        message = moved(row["message"], base).encode()
        # journal-remote's export format: a value with a newline goes in the binary form.
        field = (b"MESSAGE=" + message if b"\n" not in message else
                 b"MESSAGE\n" + len(message).to_bytes(8, "little") + message)
        chunks.append(f"__REALTIME_TIMESTAMP={mono + real}\n__MONOTONIC_TIMESTAMP={mono + i}\n_BOOT_ID={this_boot}\n"
                      f"_TRANSPORT=kernel\nPRIORITY={row['priority']}\nSYSLOG_FACILITY=0\n"
                      f"_SOURCE_MONOTONIC_TIMESTAMP={mono}\n".encode() + field + b"\n\n")
    path.mkdir()
    subprocess.run([REMOTE, f"--output={path / 'remote.journal'}", "-"], input=b"".join(chunks),
                   check=True, capture_output=True)


def test_fixture_has_kill_lines_sharing_a_microsecond():
    rows = fixture_lines()
    at = {}
    for row in rows:
        m = re.search(r"Killed process (\d+) ", row["message"])
        if m:
            at[int(m.group(1))] = row["us"]
    assert at == {561: 71686265, 559: 71686265, 562: 71739012}


def test_kill_lines_of_one_group_kill_sharing_a_microsecond_are_each_recorded(daemon_factory, tmp_path):
    if not os.path.exists(REMOTE):
        unavailable(f"{REMOTE} is missing (apt-get install systemd-journal-remote)")
    base = 4_150_000 + (os.getpid() % 1000) * 10  # pids of this run (see test_memory.FAKE_PID)
    write_journal(tmp_path / "journal", base)
    d = daemon_factory("--source", "journal", "--journal-dir", str(tmp_path / "journal"), "--kmsg-path", "/nonexistent")
    d.start()
    try:
        for pid in KILLED:
            wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={base + pid}", timeout=15, writers=[d])
        time.sleep(1)  # nothing more comes
        entries = {}
        for pid in FIXTURE_PIDS:
            for e in journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={base + pid}", writers=[d]):
                entries.setdefault(pid, []).append(e)
    finally:
        d.stop()
    # Each kill once, under an id of its own; 560 was not killed by the kernel (systemd's SIGKILL).
    assert sorted(entries) == sorted(KILLED), entries
    assert all(len(v) == 1 for v in entries.values()), entries
    by_pid = {pid: v[0] for pid, v in entries.items()}
    ids = {pid: e["OOM_EVENT_ID"] for pid, e in by_pid.items()}
    assert len(set(ids.values())) == 3, ids
    assert by_pid[559]["OOM_KERNEL_TIMESTAMP_USEC"] == by_pid[561]["OOM_KERNEL_TIMESTAMP_USEC"]
    assert by_pid[559]["OOM_COMM"] == "sh" and by_pid[561]["OOM_COMM"] == "python3"
    assert by_pid[559]["OOM_MEMCG"] == "/system.slice/oomj-group.service"
    # One incident: the group's, named by the victim's kill.
    assert {e["OOM_INCIDENT_ID"] for e in by_pid.values()} == {ids[561]}, by_pid
    assert by_pid[559].get("OOM_GROUP") == by_pid[562].get("OOM_GROUP") == "/system.slice/oomj-group.service"
    # list: three rows, one per kill (they were one, merged by the shared id).
    out, err = io.StringIO(), io.StringIO()
    assert main_list(["--json"], stdout=out, stderr=err, environ={}) == 0, err.getvalue()
    rows = [r for r in json.loads(out.getvalue()) if r["pid"] in {base + p for p in FIXTURE_PIDS}]
    assert sorted(r["pid"] - base for r in rows) == sorted(KILLED), rows
    assert sorted(r["event_id"] for r in rows) == sorted(ids.values())
