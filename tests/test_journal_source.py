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


def test_a_doorbell_rung_outside_a_read_asks_for_a_read_at_once(journald):
    """The daemon also drains /dev/kmsg when something else woke it (a SIGKILL exit, which an OOM
    victim's comes with its kill line): the records it drained no longer make the doorbell's fd
    readable, so the source must ask to be read now (wake_at), or the kill line waits for
    journald's own notification, up to 250 ms later (bench/run's kill storm: p50 7 -> 84 ms)."""
    import uuid

    src = JournalSource()
    src.open(None)
    try:
        deadline = time.monotonic() + 120
        while src.read_available(limit=1_000_000) and time.monotonic() < deadline:
            pass  # this boot's journal read: at its end now
        src.ring()
        src.read_available()
        # A record of root's (the kernel files it under LOG_USER: no kill line can be forged so);
        # the doorbell rings for any new record, whoever wrote it.
        with open("/dev/kmsg", "w") as f:
            f.write(f"oomj-test-doorbell {uuid.uuid4().hex}\n")
        src.ring()
        wake = src.wake_at()
        assert wake is not None and wake <= time.monotonic(), wake
    finally:
        src.close()


def test_a_retry_for_a_record_the_journal_lacks_survives_a_drain_that_found_nothing(journald):
    """journald stopped (SIGSTOP, continued whatever happens): the doorbell rang, the journal
    lacks the record, so read_available() schedules a retry; the daemon's drain of /dev/kmsg
    that follows in the same turn (nothing new) must not cancel it. It did: the retries never
    ran, and the next kernel line (the oom_reaper's, a few ms after a kill line) was what made
    the daemon read the journal again, or nothing did for up to 250 ms."""
    import uuid
    from test_lost_kills import journald_stopped

    src = JournalSource()
    src.open(None)
    try:
        deadline = time.monotonic() + 120
        while src.read_available(limit=1_000_000) and time.monotonic() < deadline:
            pass
        with journald_stopped():
            with open("/dev/kmsg", "w") as f:
                f.write(f"oomj-test-retry {uuid.uuid4().hex}\n")
            src.ring()
            src.read_available()  # the journal lacks it (journald is stopped): a retry is due
            due = src.wake_at()
            assert due is not None and due <= time.monotonic() + 0.1, due
            src.ring()  # nothing new
            assert src.wake_at() == due
    finally:
        src.close()
