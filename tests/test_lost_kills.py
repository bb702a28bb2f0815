"""Nothing lost silently (issue 16): a stalled journald, an overrun kernel buffer, a stopped daemon.

journald is stopped with SIGSTOP for a few seconds only, and always continued in a finally; the
kernel's printk_devkmsg sysctl is saved and restored in a finally. Every kill is a real one in a
memory cgroup of the test's own.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

from conftest import MESSAGE_ID, _journald_pids, journal_entries, kill_in, wait_for_entries

PRINTK_DEVKMSG = Path("/proc/sys/kernel/printk_devkmsg")


def young_argv(token: str) -> list:
    """A victim that allocates as soon as it runs (-S: no site import): it lives some 10 ms."""
    return ["/usr/bin/python3", "-S", "-c", "b = b'x' * (256 << 20)", f"young-{token}", "y" * 2000]


@contextlib.contextmanager
def journald_stopped():
    """SIGSTOP journald (every instance, by pid) for the block; SIGCONT whatever happens."""
    pids = _journald_pids()
    assert pids, "journald must run for this test"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@contextlib.contextmanager
def devkmsg_writes_allowed():
    """printk_devkmsg=on: userspace writes to /dev/kmsg are not rate-limited; restored after."""
    saved = PRINTK_DEVKMSG.read_text().strip()
    try:
        PRINTK_DEVKMSG.write_text("on\n")
        yield
    finally:
        PRINTK_DEVKMSG.write_text(saved + "\n")


def overrun_kernel_buffer(token: str, size: int = 1 << 20) -> None:
    """Writes more than the kernel's log buffer (128 KiB here; 1 MiB written) into /dev/kmsg."""
    line = f"<6>oomj-test-overrun {token} ".encode() + b"o" * 900 + b"\n"
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        for _ in range(size // len(line) + 1):
            os.write(fd, line)
    finally:
        os.close(fd)


def ours(daemon, pid, timeout=20.0):
    return wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[daemon], timeout=timeout)


def test_a_stall_without_overrun_keeps_a_young_victims_command_line(memcg, daemon_factory):
    """journald stopped with its socket's queue full (a busy journald: every sender waits) while
    two young victims are killed one after the other: the first one's kill line, read from the
    doorbell, is written during the stall; the second one's exec must still be read at once."""
    d = daemon_factory("--source", "journal").start()
    cg = memcg()
    first, second = young_argv(uuid.uuid4().hex), young_argv(uuid.uuid4().hex)
    with journald_stopped():
        fill_journald_queue()
        pid1 = kill_in(cg, first)
        time.sleep(3.5)  # the daemon gives up waiting for journald and writes (EAGAIN: it retries)
        pid2 = kill_in(cg, second)
        time.sleep(1)
    e1, e2 = ours(d, pid1), ours(d, pid2)
    assert [e["OOM_CMDLINE"] for e in e1 + e2] == [" ".join(first), " ".join(second)], [
        e.get("OOM_CMDLINE_NOTE") for e in e1 + e2]
    time.sleep(2)  # the journal's own copies of the kill lines are read by now: still one entry each
    for pid in (pid1, pid2):
        assert len(journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])) == 1
    assert d.proc.poll() is None and d.stop() == 0


def test_journald_stopped_and_the_kernel_buffer_overrun_the_kill_is_recorded_once(memcg, daemon_factory):
    """Issue 16's scenario: journald stopped, a real kill, then more written into /dev/kmsg than the
    kernel's buffer holds, so journald never reads the kill line ("Missed N kernel messages").
    The doorbell read it (or, when the daemon was busy and the overrun reached the doorbell's
    reader too, the counters and the exit identify it): one entry, with the full command line,
    marked as the second witness's."""
    d = daemon_factory("--source", "journal").start()
    cg = memcg()
    time.sleep(2)  # this boot's journal read from its start: idle now, as a daemon mostly is
    token = uuid.uuid4().hex
    argv = young_argv(token)
    with devkmsg_writes_allowed():
        with journald_stopped():
            pid = kill_in(cg, argv)
            overrun_kernel_buffer(token)
            time.sleep(4)
    (e,) = ours(d, pid)
    assert e["OOM_CMDLINE"] == " ".join(argv)
    assert e["OOM_KERNEL_REPORT"] == "lost" and e["OOM_WITNESS"] in ("kmsg", "exit"), e
    print("recorded by the witness:", e["OOM_WITNESS"])
    assert e["OOM_CGROUP"] == cg.kernel_path and e["OOM_UNIT"] == cg.unit
    # journald missed the kill line (its oldest records were overwritten before it read again)
    missed = journal_entries("MESSAGE_ID=e9bf28e6e834481bb6f48f548ad13606", "_TRANSPORT=driver")
    assert missed, "journald did not miss kernel messages: the overrun did not happen"
    time.sleep(3)
    assert len(journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])) == 1
    d.wait_for_status("from the second witness", timeout=10)
    assert d.proc.poll() is None and d.stop() == 0


def test_daemon_stopped_during_a_kill_and_an_overrun_records_it_once_from_the_counters(memcg, daemon_factory):
    """kmsg source, the daemon itself stopped (SIGSTOP) while the kill happens and the kernel's
    buffer is overrun: the kill line is gone before it reads again. The victim ran before the stop,
    so the cache knew its command line; the connector's queued exit event (SIGKILL) and the
    cgroup's oom_kill counter identify it once the daemon runs again."""
    d = daemon_factory("--source", "kmsg").start()
    cg = memcg()
    token = uuid.uuid4().hex
    argv = ["/usr/bin/python3", "-S", "-c", "import time; time.sleep(1); b = b'x' * (256 << 20)",
            f"stopped-{token}", "z" * 2000]
    proc = cg.run(argv)
    time.sleep(0.5)  # its exec is read
    # journald stopped as well, so that no reader keeps the kill line: a journal-source daemon of an
    # older version, started later in this boot, would record it again (it does not know -lost- ids).
    with devkmsg_writes_allowed(), journald_stopped():
        os.kill(d.pid, signal.SIGSTOP)
        try:
            assert proc.wait(timeout=30) == -signal.SIGKILL
            overrun_kernel_buffer(token)
        finally:
            os.kill(d.pid, signal.SIGCONT)
    (e,) = ours(d, proc.pid)
    assert e["OOM_KERNEL_REPORT"] == "lost" and e["OOM_WITNESS"] == "exit", e
    assert e["OOM_CMDLINE"] == " ".join(argv)
    assert e["OOM_CGROUP"] == cg.kernel_path and e["OOM_UNIT"] == cg.unit
    assert "kernel messages were lost before oom-journal read them" in d.log.read_text()
    time.sleep(3)
    assert len(journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={proc.pid}", writers=[d])) == 1
    assert d.proc.poll() is None and d.stop() == 0


def fill_journald_queue(socket_path: str = "/run/systemd/journal/socket") -> int:
    """Sends datagrams to a stopped journald until its socket's queue is full (net.unix.
    max_dgram_qlen: 10 here): any blocking sender then waits. Returns how many were sent."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent = 0
    try:
        while sent < 100_000:
            try:
                s.sendto(b"MESSAGE=oomj-test queue filler\nSYSLOG_IDENTIFIER=oomj-test\n", socket_path)
            except BlockingIOError:
                return sent
            sent += 1
    finally:
        s.close()
    raise AssertionError("journald's queue never filled")


WRITER_UNDER_FULL_QUEUE = r"""
import sys, threading, time
from oom_journal.enrich.event import OomEvent
from oom_journal.model import HostInfo, KernelKill
from oom_journal.outputs.journal import JournalWriter

token = sys.argv[1]
kill = KernelKill(reason="Memory cgroup out of memory", pid=424242, comm="writer-test", timestamp_us=1)
host = HostInfo("h", "0" * 32, "k")
event = OomEvent.build(kill, host, event_time=time.time())
event.event_id = "writer-test-" + token
done = []

def write():  # as the daemon's main thread does: retry until journald takes it
    w = JournalWriter()
    while True:
        try:
            w.write(event)
            done.append(time.monotonic())
            return
        except OSError:
            time.sleep(0.05)

threading.Thread(target=write, daemon=True).start()
ticks, end = 0, time.monotonic() + 1.5
while time.monotonic() < end:  # the process cache's thread, in miniature
    time.sleep(0.001)
    ticks += 1
print("ticks", ticks, flush=True)
while not done:
    time.sleep(0.05)
print("written", flush=True)
"""


def test_a_journal_write_blocked_by_a_full_journald_does_not_stop_other_threads(journald, tmp_path):
    """python-systemd's journal.sendv() does not release the interpreter's lock (its extension
    has no PyEval_SaveThread: `nm -D _journal*.so`), and sd_journal_sendv() blocks while
    journald's socket queue is full: the whole daemon, its process cache's exec reads included,
    stopped until journald read again."""
    import subprocess
    import sys

    token = uuid.uuid4().hex
    script = tmp_path / "writer.py"
    script.write_text(WRITER_UNDER_FULL_QUEUE)
    with journald_stopped():
        fill_journald_queue()
        proc = subprocess.Popen([sys.executable, str(script), token], stdout=subprocess.PIPE, text=True,
                                cwd=str(Path(__file__).parent.parent))
        try:
            time.sleep(2.5)
        finally:
            pass  # journald continues in journald_stopped()'s finally
    out, _ = proc.communicate(timeout=30)
    ticks = int(out.split("ticks ", 1)[1].split()[0])
    assert ticks > 500, out  # ~1,400 with the lock released; 0-2 when the write holds it
    assert "written" in out
    assert len(wait_for_entries("OOM_EVENT_ID=writer-test-" + token)) == 1


def test_the_journal_socket_writes_binary_and_large_entries_exactly(journald):
    """The native protocol of our own (outputs/journal_socket.py): newlines, NULs and non-UTF-8 in
    a value, and an entry larger than a datagram (through a sealed memfd), read back exactly."""
    from oom_journal.outputs.journal_socket import JournalSocket

    token = uuid.uuid4().hex
    binary = b"a\nb\0c\xff\n" * 10
    large = (b"L" * 1000 + b"\n") * 4000  # 4 MB: beyond any datagram
    s = JournalSocket()
    try:
        s.send(b"MESSAGE=oomj-test socket " + token.encode(), b"OOMJ_TEST=" + token.encode(),
               b"OOMJ_BINARY=" + binary, b"OOMJ_LARGE=" + large)
    finally:
        s.close()
    (e,) = wait_for_entries(f"OOMJ_TEST={token}")
    assert e["OOMJ_BINARY"] == binary and e["OOMJ_LARGE"] == large.decode() and e["_UID"] == "0"


def test_a_kill_while_the_daemon_was_down_and_its_line_overwritten_is_counted(memcg, daemon_factory):
    """kmsg source, the daemon not running (SIGTERM) while a kill happens and the kernel's buffer is
    overrun: after the restart its kill line is gone and nothing of the victim is known (the cache
    of the new process never saw it, and the connector's exit event went to no one). The kernel's
    count, against the one the first run saved, says a kill is missing: one entry that counts it."""
    d = daemon_factory("--source", "kmsg").start()
    time.sleep(1.5)  # its accounting point is saved
    assert d.stop() == 0
    cg = memcg()
    token = uuid.uuid4().hex
    # journald stopped too: no reader at all keeps the kill line (journald would otherwise have
    # it, and a later journal-source daemon would read it: a kill counted can't be matched to it).
    with devkmsg_writes_allowed():
        with journald_stopped():
            pid = kill_in(cg, young_argv(token))
            overrun_kernel_buffer(token)
            time.sleep(0.5)
    d2 = daemon_factory("--source", "kmsg").start()
    entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", "OOM_WITNESS=counter", writers=[d2], timeout=20)
    assert len(entries) == 1, entries
    (e,) = entries
    assert e["OOM_UNSEEN_KILLS"] == "1" and e["OOM_KERNEL_REPORT"] == "lost" and "OOM_PID" not in e
    assert "where the last run left off" in d2.log.read_text()  # the count the first run saved
    assert not journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d, d2])
    d2.wait_for_status("from the second witness", timeout=10)
    time.sleep(2)
    assert len(journal_entries(f"MESSAGE_ID={MESSAGE_ID}", "OOM_WITNESS=counter", writers=[d2])) == 1
    assert d2.stop() == 0
