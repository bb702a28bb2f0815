"""/dev/kmsg records: parsing, escapes, continuation lines, sequence gaps; and the real device."""
import pytest

from oom_journal.model import Resume
from oom_journal.sources.kmsg import KmsgSource, parse_record

KILL = (b"Memory cgroup out of memory: Killed process 2045 (python3) total-vm:75160kB, anon-rss:65152kB, "
        b"file-rss:6644kB, shmem-rss:0kB, UID:0 pgtables:188kB oom_score_adj:0")


def test_parse_record_with_continuation_lines():
    line = parse_record(b"3,1234,79928453,-;" + KILL + b"\n SUBSYSTEM=memory\n DEVICE=+x\n")
    assert (line.seq, line.timestamp_us, line.priority, line.position) == (1234, 79928453, 3, 1234)
    assert line.message == KILL.decode()


def test_parse_record_undoes_kernel_escapes_and_keeps_non_utf8_bytes():
    # The kernel escapes bytes < 0x20, >= 0x7f and '\\' as \xNN (printk.c, msg_add_ext_text).
    line = parse_record(b"6,1,2,-;Killed process 9 (a\\x0ab\\x5c\\xff) total-vm:1kB")
    assert line.message.encode("utf-8", "surrogateescape") == b"Killed process 9 (a\nb\\\xff) total-vm:1kB"


@pytest.mark.parametrize("record", [b"", b"garbage", b"x,y,z;msg", b"6,1;msg", b"14,5,6,-;user says Killed process 1 (x)"])
def test_records_that_are_not_the_kernels_are_dropped(record):
    # The last one has facility user (14 >> 3 == 1): written into /dev/kmsg by a process.
    assert parse_record(record) is None


def _source_over(records, tmp_path, resume=None):
    """A KmsgSource opened with its public open(resume) on a FIFO that is fed one record per
    read_available(), as /dev/kmsg returns one record per read(2)."""
    import os

    fifo = str(tmp_path / "kmsg")
    os.mkfifo(fifo)
    src = KmsgSource(fifo)
    src.open(resume)
    writer = os.open(fifo, os.O_WRONLY)
    lines = []
    try:
        for r in records:
            os.write(writer, r)
            lines += src.read_available()
    finally:
        os.close(writer)
        src.close()
        os.unlink(fifo)
    return src, lines


def test_sequence_gaps_are_counted_as_lost(tmp_path):
    recs = [b"6,10,1,-;a", b"6,11,2,-;b", b"6,15,3,-;c"]
    src, lines = _source_over(recs, tmp_path)
    assert [l.message for l in lines] == ["a", "b", "c"]
    assert src.lost == 3


def test_resume_skips_what_was_read_and_counts_what_was_overwritten(tmp_path):
    src, lines = _source_over([b"6,10,1,-;a", b"6,11,2,-;b", b"6,12,3,-;c"], tmp_path, Resume(10, inclusive=False))
    assert [l.message for l in lines] == ["b", "c"] and src.lost == 0
    src, lines = _source_over([b"6,20,1,-;x"], tmp_path, Resume(15, inclusive=True))
    assert [l.message for l in lines] == ["x"] and src.lost == 5


def test_real_dev_kmsg_reads_records_in_order(root, memcg):
    src = KmsgSource()
    src.open(None)
    try:
        lines = src.read_available(limit=100000)
    finally:
        src.close()
    assert lines, "the kernel log buffer is never empty after boot"
    seqs = [l.seq for l in lines]
    assert seqs == sorted(seqs)
    # Re-opening after the last one read gives what came since, and nothing older. So that "what
    # came since" cannot be empty, the kernel is made to log lines of its own (a userspace write
    # into /dev/kmsg has facility user, which the reader drops): an OOM kill in a small cgroup.
    pid = kernel_says_something(memcg)
    src = KmsgSource()
    src.open(Resume(seqs[-1], inclusive=False))
    try:
        again = src.read_available(limit=100000)
    finally:
        src.close()
    assert again and all(l.seq > seqs[-1] for l in again)
    assert any(f"Killed process {pid} " in l.message for l in again)


def kernel_says_something(memcg) -> int:
    """Lines the kernel itself logs: an OOM kill in a 16 MiB cgroup of the test's own."""
    from conftest import kill_in

    return kill_in(memcg(16), ["/usr/bin/python3", "-c", "b = b'x' * (64 << 20)"])
