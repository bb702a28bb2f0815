"""The journal source against real journald: kernel entries, resume by cursor, auto-detection."""
import time

from oom_journal.model import KernelLine, Resume
from oom_journal.sources.journal import JournalSource, journald_collects_kernel_messages


def test_auto_detection_says_yes_with_kernel_messages_and_why_not_without(journald, tmp_path):
    ok, why = journald_collects_kernel_messages()
    assert ok, why
    (tmp_path / "empty").mkdir()
    ok, why = journald_collects_kernel_messages(str(tmp_path / "empty"))
    assert not ok and "no kernel messages" in why


def test_reads_kernel_entries_and_resumes_after_a_cursor(journald, memcg):
    src = JournalSource()
    src.open(None)
    try:
        lines = src.read_available(limit=1_000_000)
    finally:
        src.close()
    # The userspace killers' entries come in the same read (KillerLine, tests/test_userspace_*.py)
    lines = [l for l in lines if isinstance(l, KernelLine)]
    assert lines and all(isinstance(l.timestamp_us, int) and l.seq is None for l in lines)
    stamps = [l.timestamp_us for l in lines]
    assert stamps == sorted(stamps)
    last = lines[-1]
    # So that what comes after the cursor cannot be empty: lines of the kernel's own, in the
    # journal before we resume.
    from test_kmsg_source import kernel_says_something

    pid = kernel_says_something(memcg)
    deadline = time.monotonic() + 10
    again = []
    while not any(f"Killed process {pid} " in l.message for l in again) and time.monotonic() < deadline:
        src = JournalSource()
        src.open(Resume(last.position, inclusive=False))
        try:
            again = src.read_available()
        finally:
            src.close()
        time.sleep(0.1)
    assert again and any(f"Killed process {pid} " in l.message for l in again)
    assert all(l.position != last.position for l in again)
    src = JournalSource()
    src.open(Resume(last.position, inclusive=True))
    try:
        again = src.read_available()
    finally:
        src.close()
    assert again[0].position == last.position and again[0].message == last.message
