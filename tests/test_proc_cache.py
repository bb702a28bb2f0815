"""Tests of procs.connector, procs.procfs and procs.cache, against real processes and the real connector.

The tests marked as needing root run real processes and subscribe to the kernel's process
events connector; without root they skip, or fail when the CI environment variable is set
(a CI run that silently skipped them would prove nothing). The others build a fixture /proc
tree from this machine's own /proc/self/stat line, as earlyoom's and prometheus_client's
tests do.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from oom_journal.procs.cache import (
    NOT_FOUND,
    SOURCE_EXEC,
    SOURCE_FORK,
    SOURCE_PROC,
    SOURCE_SCAN,
    ProcessCache,
)
from oom_journal.procs.connector import (
    NLMSG_DONE,
    PROC_CN_MCAST_LISTEN,
    ConnectorUnavailable,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
    decode,
    decode_messages,
    encode_mcast_op,
)
from oom_journal.procs.procfs import kernel_comm, parse_stat, read_memory_cgroup, split_cmdline
from oom_journal.procs import event_filter

# Real stat lines of this machine, the templates of the fixtures' stat files: a user
# process (this one) and a kernel thread (kthreadd, pid 2, with PF_KTHREAD in its flags).
with open("/proc/self/stat", "rb") as _f:
    REAL_STAT = _f.read()
with open("/proc/2/stat", "rb") as _f:
    KTHREAD_STAT = _f.read()


def need_root() -> None:
    """Skip (fail under CI) unless root: these tests subscribe to the connector and read
    every process's /proc files."""
    if os.geteuid() != 0:
        reason = ("needs root: subscribes to the process events connector (CAP_NET_ADMIN "
                  "before Linux 6.6) and reads every process's /proc/PID files")
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: not skipping)")
        pytest.skip(reason)


def need_connector() -> None:
    need_root()
    try:
        ProcConnector().close()
    except ConnectorUnavailable as e:
        reason = f"process events connector unavailable here: {e.reason}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: not skipping)")
        pytest.skip(reason)


@pytest.fixture
def live_cache():
    need_connector()
    cache = ProcessCache(exit_grace=60.0)
    cache.start()
    assert cache.stats()["connector"] == "active"
    yield cache
    cache.stop()


@pytest.fixture
def children():
    """Processes a test starts; killed by their own pids afterwards, never by name."""
    procs: list = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def wait_until(predicate, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for_exec(cache, pid: int, last_arg: bytes):
    """Until the cache holds pid's exec (its argv ends in last_arg), not the fork's copy of its
    parent's: Popen() returns when the child's close-on-exec pipe closes, in begin_new_exec(),
    before exec_binprm() sends the exec event, so a lookup at once can find the fork's entry
    (seen once in a full run: the parent's argv)."""
    return wait_until(lambda: (lambda r: r.found and r.argv is not None and r.argv[-1] == last_arg)(
        cache.lookup(pid, proc_comm(pid))))


def proc_comm(pid: int) -> str:
    """The kernel's comm as a log source would hand it over (surrogate escapes)."""
    with open(f"/proc/{pid}/comm", "rb") as f:
        return f.read().rstrip(b"\n").decode("utf-8", "surrogateescape")


def hostile_argv(token: str) -> list:
    """2,000+ bytes: spaces inside arguments, non-ASCII, invalid UTF-8, a unique token."""
    return [
        f"--token={token}".encode(),
        b"an argument with spaces  and  double spaces",
        "na\u00efve \u65e5\u672c\u8a9e \u2603 caf\u00e9".encode(),
        b"invalid utf-8: \xff\xfe\x80 \xc3(",
        b"",  # an empty argument must survive as one
        b"x" * 1000 + b" " + b"y" * 1000,
        b"quote ' and \" and ) ( and \\ backslash",
        b"tail",
    ]


# ---------------------------------------------------------------- fixture /proc trees

def stat_line(pid: int, comm: bytes, start: int, template: bytes = REAL_STAT,
              state: bytes = b"") -> bytes:
    """A real stat line with another pid, comm, start time (field 22) and maybe state."""
    fields = template[template.rfind(b")") + 2:].split(b" ")
    fields[19] = str(start).encode()
    if state:
        fields[0] = state
    return b"%d (%s) " % (pid, comm) + b" ".join(fields)


def make_proc(root, pid: int, comm: bytes, cmdline: bytes, start: int = 1000,
              stat: bool = True, cmd: bool = True, template: bytes = REAL_STAT,
              state: bytes = b""):
    d = root / str(pid)
    d.mkdir()
    if stat:
        (d / "stat").write_bytes(stat_line(pid, comm, start, template, state))
    if cmd:
        (d / "cmdline").write_bytes(cmdline)
    return d


def replace_proc(root, pid: int, comm: bytes, cmdline: bytes, start: int):
    """A recycled pid: a new directory (so a new inode, as procfs gives a new process)
    renamed over the old one."""
    new = make_proc(root, 10**9 + pid, comm, cmdline, start)
    (new / "stat").write_bytes(stat_line(pid, comm, start))
    old = root / str(pid)
    for f in old.iterdir():
        f.unlink()
    os.rename(new, old)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fixture_cache(root, **kw) -> ProcessCache:
    kw.setdefault("use_connector", False)
    kw.setdefault("scan_interval", 3600.0)
    return ProcessCache(proc_root=str(root), **kw)


# ---------------------------------------------------------------- parsing, table-driven

@pytest.mark.parametrize("raw, argv", [
    (b"", None),
    (b"sleep\x0060\x00", [b"sleep", b"60"]),
    (b"a\x00\x00", [b"a", b""]),  # an empty last argument
    (b"\x00", [b""]),  # argc 0: the kernel supplies argv[0] = ""
    (b"nginx: worker process", [b"nginx: worker process"]),  # setproctitle, no NUL
    (b"x\x00with space\x00\xff\xfe\x00", [b"x", b"with space", b"\xff\xfe"]),
])
def test_split_cmdline(raw, argv):
    assert split_cmdline(raw) == argv


@pytest.mark.parametrize("comm", [
    b"bash", b"foo) Z (bar", b"a b  c", b")", b"((", b"x\xffy", b"tab\tnl\n", b"",
    b"kworker/0:1-events_unbound",  # kernel workers: longer than 15 in stat
])
def test_parse_stat_hostile_comm(comm):
    st = parse_stat(stat_line(4242, comm, 987654))
    assert (st.comm, st.start_time, st.state) == (comm, 987654, b"R")


def test_parse_stat_shares_one_comm_object_and_stays_bounded_under_many_names():
    """Every entry of the same name holds one bytes object (the footprint with 10,000 processes);
    anyone names their processes, so the table of names stays bounded and stays correct."""
    from oom_journal.procs import procfs

    a, b = parse_stat(stat_line(1, b"shared-name", 5)), parse_stat(stat_line(2, b"shared-name", 6))
    assert a.comm == b"shared-name" and a.comm is b.comm
    for i in range(procfs._COMMS_MAX * 2 + 10):
        name = f"n{i}".encode()
        assert parse_stat(stat_line(3, name, 7)).comm == name
        assert len(procfs._COMMS) <= procfs._COMMS_MAX


@pytest.mark.parametrize("data", [b"", b"4242 (unterminated S 1 2", b"4242 (x) S 1 2 3\n",
                                  b"garbage"])
def test_parse_stat_rejects_non_stat(data):
    assert parse_stat(data) is None


@pytest.mark.parametrize("given, expected", [
    ("python3", b"python3"),
    ("py\udcffthon", b"py\xffthon"),  # a surrogate-escaped byte is that byte
    ("a-very-long-comm-name", b"a-very-long-com"),  # the kernel prints at most 15 bytes
    (b"raw bytes", b"raw bytes"),
    ("\u65e5\u672c\u8a9e\u65e5\u672c\u8a9e", "\u65e5\u672c\u8a9e\u65e5\u672c\u8a9e".encode()[:15]),
])
def test_kernel_comm(given, expected):
    assert kernel_comm(given) == expected


# ---------------------------------------------------------------- fixture tree: the scan

def test_fixture_tree_hostile_entries(tmp_path):
    make_proc(tmp_path, 100, b"foo) Z (bar", b"/usr/bin/foo\x00--x\x00", start=11)
    make_proc(tmp_path, 101, b"with  spaces", b"a b\x00c\x00", start=12)
    make_proc(tmp_path, 102, b"nginx", b"nginx: master process /usr/sbin/nginx", start=13)
    make_proc(tmp_path, 103, b"kthreadd", b"", start=2, template=KTHREAD_STAT)  # empty cmdline
    make_proc(tmp_path, 107, b"defunct", b"", start=15, state=b"Z")  # a zombie: empty too
    make_proc(tmp_path, 108, b"execing", b"", start=16)  # mid-execve(): argv not set up yet
    (tmp_path / "104").mkdir()  # vanished between readdir and open
    make_proc(tmp_path, 105, b"half", b"", stat=True, cmd=False)  # vanished mid-read
    make_proc(tmp_path, 106, b"py\xffthon", b"python3\x00\xff\x00", start=14)
    (tmp_path / "self").symlink_to("100")
    (tmp_path / "sys").mkdir()
    (tmp_path / "meminfo").write_text("MemTotal: 1 kB\n")
    cache = fixture_cache(tmp_path)
    cache.start()
    try:
        r = cache.lookup(100, "foo) Z (bar")
        assert (r.argv, r.source, r.start_time, r.comm) == (
            [b"/usr/bin/foo", b"--x"], SOURCE_SCAN, 11, "foo) Z (bar")
        assert cache.lookup(101, "with  spaces").argv == [b"a b", b"c"]
        assert cache.lookup(102, "nginx").argv == [b"nginx: master process /usr/sbin/nginx"]
        for pid, comm in ((103, "kthreadd"), (107, "defunct")):
            r = cache.lookup(pid, comm)
            assert r.source == NOT_FOUND and r.argv is None
            assert f"pid {pid} is cached but its command line was empty" in r.note
        for pid in (104, 105):
            r = cache.lookup(pid, "x")
            assert r.source == NOT_FOUND and "not in the cache" in r.note
        r = cache.lookup(106, "py\udcffthon")  # as the log source hands a non-UTF-8 comm over
        assert r.source == SOURCE_SCAN and r.argv == [b"python3", b"\xff"]
        assert r.comm == "py\udcffthon"
        st = cache.stats()
        assert st["entries"] == 6 and st["scans"] == 1 and st["thread_errors"] == 0
        assert st["connector"].startswith("disabled")
        # The process caught mid-exec was not cached with an empty argv: it is read again.
        r = cache.lookup(108, "execing")
        assert r.source == NOT_FOUND and "not in the cache" in r.note
        (tmp_path / "108" / "cmdline").write_bytes(b"/bin/execing\x00--now\x00")
        assert cache.rescan()
        for f in (tmp_path / "108").iterdir():
            f.unlink()  # gone before the lookup: only the cache has it
        r = cache.lookup(108, "execing")
        assert (r.source, r.argv) == (SOURCE_SCAN, [b"/bin/execing", b"--now"])
    finally:
        cache.stop()


def test_comm_mismatch_is_not_returned(tmp_path):
    make_proc(tmp_path, 4242, b"bash", b"bash\x00-l\x00", start=500)
    cache = fixture_cache(tmp_path)
    cache.start()
    try:
        (tmp_path / "4242" / "cmdline").unlink()  # gone from /proc, still cached
        r = cache.lookup(4242, "python3")
        assert r.argv is None and r.source == NOT_FOUND
        assert "comm mismatch: cached 'bash', kernel 'python3'" in r.note
        assert cache.lookup(4242, "bash").argv == [b"bash", b"-l"]
    finally:
        cache.stop()


def test_kernel_comm_compared_on_15_bytes(tmp_path):
    make_proc(tmp_path, 77, b"a-very-long-name-of-a-kworker", b"w\x00", start=3)
    cache = fixture_cache(tmp_path)
    cache.start()
    try:
        assert cache.lookup(77, "a-very-long-nam").argv == [b"w"]
        assert cache.lookup(77, "a-very-long-nax").source == NOT_FOUND
    finally:
        cache.stop()


def test_recycled_pid_gets_its_own_cmdline(tmp_path):
    make_proc(tmp_path, 4242, b"bash", b"bash\x00old\x00", start=500)
    cache = fixture_cache(tmp_path)
    cache.start()
    try:
        replace_proc(tmp_path, 4242, b"bash", b"bash\x00new\x00", start=900)
        assert cache.rescan()
        r = cache.lookup(4242, "bash")
        assert (r.argv, r.start_time, r.source) == ([b"bash", b"new"], 900, SOURCE_SCAN)
        # Recycled as another program, and the /proc entry gone again before the lookup:
        # the new comm is cached, the old cmdline is not returned for the kernel's comm.
        replace_proc(tmp_path, 4242, b"java", b"java\x00-jar\x00x.jar\x00", start=1300)
        assert cache.rescan()
        (tmp_path / "4242" / "cmdline").unlink()
        (tmp_path / "4242" / "stat").unlink()
        r = cache.lookup(4242, "bash")
        assert r.source == NOT_FOUND and "cached 'java', kernel 'bash'" in r.note
        assert cache.lookup(4242, "java").argv == [b"java", b"-jar", b"x.jar"]
    finally:
        cache.stop()


def test_scan_reads_only_unknown_pids(tmp_path):
    make_proc(tmp_path, 10, b"known", b"known\x00first\x00", start=5)
    cache = fixture_cache(tmp_path)
    cache.start()
    try:
        # Same directory (same inode): the scan must not read it again. If it did, the
        # missing cmdline would make it vanish, and the new comm would be cached.
        (tmp_path / "10" / "cmdline").unlink()
        (tmp_path / "10" / "stat").write_bytes(stat_line(10, b"changed", 5))
        make_proc(tmp_path, 11, b"newcomer", b"newcomer\x00", start=6)
        assert cache.rescan()
        r = cache.lookup(10, "known")
        assert (r.argv, r.source, r.note) == ([b"known", b"first"], SOURCE_SCAN, "")
        assert cache.lookup(11, "newcomer").source == SOURCE_SCAN
        assert cache.stats()["scans"] == 2
        # After lost events (verify), stat is read again: comm changed, so cmdline too.
        (tmp_path / "10" / "cmdline").write_bytes(b"changed\x00second\x00")
        assert cache.rescan(verify=True)
        assert cache.lookup(10, "changed").argv == [b"changed", b"second"]
        assert cache.stats()["verify_scans"] == 1
    finally:
        cache.stop()


def test_scan_marks_missing_pids_exited_and_grace_expires(tmp_path):
    clock = FakeClock()
    make_proc(tmp_path, 20, b"victim", b"victim\x00--big\x00", start=7)
    make_proc(tmp_path, 21, b"other", b"other\x00", start=8)
    cache = fixture_cache(tmp_path, clock=clock, exit_grace=30.0)
    cache.start()
    try:
        for f in (tmp_path / "20").iterdir():
            f.unlink()
        (tmp_path / "20").rmdir()
        assert cache.rescan()
        r = cache.lookup(20, "victim")
        assert r.argv == [b"victim", b"--big"] and "exited" in r.note
        assert cache.stats()["exited"] == 1
        clock.now += 29.0
        assert cache.rescan()
        assert cache.lookup(20, "victim").argv == [b"victim", b"--big"]
        clock.now += 2.0
        assert cache.rescan()
        r = cache.lookup(20, "victim")
        assert r.source == NOT_FOUND and "not in the cache" in r.note and "gone" in r.note
        assert cache.stats()["entries"] == 1
    finally:
        cache.stop()


# ---------------------------------------------------------------- bounds

def test_max_entries_enforced(tmp_path):
    for pid in range(1000, 1050):
        make_proc(tmp_path, pid, b"p%d" % pid, b"p%d\x00" % pid, start=pid)
    cache = fixture_cache(tmp_path, max_entries=20)
    cache.start()
    try:
        st = cache.stats()
        assert st["entries"] == 20 and st["evictions"] == 30
    finally:
        cache.stop()


def test_exited_entries_are_evicted_first(tmp_path):
    for pid in range(100, 110):
        make_proc(tmp_path, pid, b"old", b"old\x00%d\x00" % pid, start=pid)
    cache = fixture_cache(tmp_path, max_entries=10)
    cache.start()
    try:
        gone = [101, 104, 107]
        for pid in gone:
            for f in (tmp_path / str(pid)).iterdir():
                f.unlink()
            (tmp_path / str(pid)).rmdir()
        assert cache.rescan()
        assert cache.stats()["exited"] == 3
        for pid in (200, 201, 202):
            make_proc(tmp_path, pid, b"new", b"new\x00%d\x00" % pid, start=pid)
        assert cache.rescan()
        st = cache.stats()
        assert st["entries"] == 10 and st["evictions"] == 3 and st["exited"] == 0
        for pid in gone:
            assert cache.lookup(pid, "old").source == NOT_FOUND
        for pid in set(range(100, 110)) - set(gone):
            assert cache.lookup(pid, "old").argv == [b"old", b"%d" % pid]
        for pid in (200, 201, 202):
            assert cache.lookup(pid, "new").source == SOURCE_SCAN
        # Full of live entries now: the oldest goes.
        make_proc(tmp_path, 300, b"newest", b"newest\x00", start=300)
        assert cache.rescan()
        assert cache.stats()["entries"] == 10
        assert cache.lookup(300, "newest").source == SOURCE_SCAN
    finally:
        cache.stop()


def test_max_cmdline_bytes_enforced(tmp_path):
    for pid in range(500, 520):
        make_proc(tmp_path, pid, b"big", b"big\x00" + b"z" * 996, start=pid)  # 1,000 bytes
    make_proc(tmp_path, 600, b"huge", b"huge\x00" + b"h" * 20000, start=600)
    cache = fixture_cache(tmp_path, max_cmdline_bytes=5000)
    cache.start()
    try:
        st = cache.stats()
        assert st["bytes"] <= 5000 and st["bytes"] == 5000
        assert st["evictions"] == 15
        # One cmdline larger than the whole budget is not stored (nor read past the limit).
        for f in (tmp_path / "600").iterdir():
            f.unlink()
        (tmp_path / "600").rmdir()
        r = cache.lookup(600, "huge")
        assert r.source == NOT_FOUND and "larger than max_cmdline_bytes" in r.note
    finally:
        cache.stop()


def test_reconfigure_enforces_smaller_bounds(tmp_path):
    for pid in range(700, 730):
        make_proc(tmp_path, pid, b"p", b"p\x00" + b"a" * 98, start=pid)  # 100 bytes each
    cache = fixture_cache(tmp_path)
    cache.start()
    try:
        assert cache.alive()
        assert cache.stats()["entries"] == 30
        cache.reconfigure(max_entries=20)
        assert wait_until(lambda: cache.stats()["entries"] == 20)
        cache.reconfigure(max_cmdline_bytes=1000)
        assert wait_until(lambda: cache.stats()["bytes"] == 1000)
        assert cache.stats()["evictions"] == 20
        with pytest.raises(ValueError, match="max_entries"):
            cache.reconfigure(max_entries=0)
        assert cache.stats()["entries"] == 10  # a bad value changes nothing
    finally:
        cache.stop()
    assert not cache.alive()


def test_constructor_rejects_bad_bounds():
    for kw in ({"max_entries": 0}, {"max_cmdline_bytes": 0}, {"scan_interval": 0},
               {"exit_grace": -1}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            ProcessCache(**kw)


def test_missing_proc_root_fails_start(tmp_path):
    cache = fixture_cache(tmp_path / "nonexistent")
    with pytest.raises(FileNotFoundError):
        cache.start()
    cache.stop()


# ---------------------------------------------------------------- connector unavailable

def test_connector_unavailable_falls_back_to_scanning(tmp_path, caplog):
    def no_netlink(family, type_, proto):
        raise OSError(errno.EPROTONOSUPPORT, os.strerror(errno.EPROTONOSUPPORT))

    make_proc(tmp_path, 31, b"svc", b"svc\x00--flag\x00", start=9)
    cache = fixture_cache(tmp_path, use_connector=True,
                          connector_factory=lambda: ProcConnector(socket_factory=no_netlink))
    with caplog.at_level(logging.WARNING, logger="oom_journal.procs.cache"):
        cache.start()
    try:
        status = cache.stats()["connector"]
        assert status.startswith("unavailable: socket(AF_NETLINK, SOCK_DGRAM, NETLINK_CONNECTOR)")
        assert "EPROTONOSUPPORT" in status
        assert any("connector unavailable: " in m and "falling back to /proc scanning" in m
                   for m in caplog.messages)
        assert cache.lookup(31, "svc").argv == [b"svc", b"--flag"]
    finally:
        cache.stop()


def test_connector_bind_refused_is_unavailable():
    class RefusingBind(socket.socket):
        def bind(self, address):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    with pytest.raises(ConnectorUnavailable,
                       match="bind to the CN_IDX_PROC multicast group: EPERM"):
        ProcConnector(socket_factory=RefusingBind)


def test_connector_without_acknowledgement_is_unavailable():
    # What a process outside the initial namespaces sees: the kernel drops its LISTEN
    # silently (cn_proc_mcast_ctl). Here the request is swallowed before it is sent.
    need_root()

    class Swallowing(socket.socket):
        def send(self, data, flags=0):
            return len(data)

    t = time.monotonic()
    with pytest.raises(ConnectorUnavailable, match="no acknowledgement of PROC_CN_MCAST_LISTEN "
                                                   "within 0.2 s"):
        ProcConnector(socket_factory=Swallowing, ack_timeout=0.2)
    assert time.monotonic() - t < 2.0


def test_encode_listen_request_layout():
    msg = encode_mcast_op(PROC_CN_MCAST_LISTEN, ack=7, port=99)
    # nlmsghdr(16) + cn_msg(20) + enum(4), host byte order.
    assert len(msg) == 40
    assert int.from_bytes(msg[0:4], sys.byteorder) == 40
    assert int.from_bytes(msg[4:6], sys.byteorder) == NLMSG_DONE
    assert int.from_bytes(msg[12:16], sys.byteorder) == 99
    assert [int.from_bytes(msg[i:i + 4], sys.byteorder) for i in (16, 20, 24, 28)] == [1, 1, 0, 7]
    assert int.from_bytes(msg[32:34], sys.byteorder) == 4
    assert int.from_bytes(msg[36:40], sys.byteorder) == PROC_CN_MCAST_LISTEN


# ---------------------------------------------------------------- the real connector

class RecordingSocket(socket.socket):
    """A real netlink socket that keeps a copy of every datagram it receives."""

    datagrams: list = []

    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        n, addr = super().recvfrom_into(buffer, nbytes, flags)
        RecordingSocket.datagrams.append(bytes(buffer[:n]))
        return n, addr


def _events_of(conn, pids, until, timeout=5.0):
    """Events of the connector about these pids (any tgid field), until until(events) or timeout."""
    seen = []

    def done():
        while True:
            events = conn.receive()
            if events is None:
                break
            seen.extend(e for e in events if getattr(e, "tgid", getattr(e, "child_tgid", None)) in pids)
        return until(seen)

    wait_until(done, timeout=timeout)
    return seen


THREADS_THEN_EXIT = "import threading, sys; t = threading.Thread(target=lambda: None); t.start(); t.join(); sys.exit(int(sys.argv[1]))"


@pytest.mark.parametrize("filtered", [True, False])
def test_event_filter_drops_thread_events_and_exits_without_a_signal(filtered):
    """The kernel, through the socket's BPF program, no longer sends a thread's fork and exit nor
    a process's exit without a signal; every signal exit (SIGKILL, SIGTERM) and every process
    fork and exec still come. Unfiltered, all of them come (the filter is what drops them)."""
    need_connector()
    conn = ProcConnector(filtered=filtered)
    try:
        assert conn.filtered is filtered and conn.filter_error is None
        clean = subprocess.Popen([sys.executable, "-c", THREADS_THEN_EXIT, "0"])
        status = subprocess.Popen([sys.executable, "-c", THREADS_THEN_EXIT, "3"])
        killed = subprocess.Popen(["sleep", "30"])
        termed = subprocess.Popen(["sleep", "30"])
        assert clean.wait() == 0 and status.wait() == 3
        killed.kill()
        termed.terminate()
        assert killed.wait() == -signal.SIGKILL and termed.wait() == -signal.SIGTERM
        pids = {clean.pid, status.pid, killed.pid, termed.pid}

        def exits(seen):
            return {e.tgid: e.exit_code for e in seen if isinstance(e, ExitEvent) and e.pid == e.tgid}

        want = 4 if not filtered else 2
        seen = _events_of(conn, pids, lambda seen: len(exits(seen)) >= want)
        time.sleep(0.2)
        seen += _events_of(conn, pids, lambda seen: False, timeout=0.2)
    finally:
        conn.close()
    got = exits(seen)
    thread_forks = [e for e in seen if isinstance(e, ForkEvent) and e.child_pid != e.child_tgid]
    thread_exits = [e for e in seen if isinstance(e, ExitEvent) and e.pid != e.tgid]
    process_forks = {e.child_tgid for e in seen if isinstance(e, ForkEvent) and e.child_pid == e.child_tgid}
    execs = {e.tgid for e in seen if isinstance(e, ExecEvent)}
    assert process_forks == pids and execs == pids
    assert got[killed.pid] & 0x7F == signal.SIGKILL and got[termed.pid] & 0x7F == signal.SIGTERM
    if filtered:
        assert set(got) == {killed.pid, termed.pid}, got
        assert not thread_forks and not thread_exits
    else:
        assert set(got) == pids and got[status.pid] == 3 << 8
        assert {e.child_tgid for e in thread_forks} == {clean.pid, status.pid}
        assert {e.tgid for e in thread_exits} == {clean.pid, status.pid}


def test_event_filter_program():
    # Jumps are offsets from the next instruction, to the labels' instructions.
    prog = event_filter.assemble([(0x15, "b", "a", 7), "a", (0x06, 0, 0, 0), "b", (0x06, 0, 0, 1)])
    assert prog == [(0x15, 1, 0, 7), (0x06, 0, 0, 0), (0x06, 0, 0, 1)]
    # A host-order word as the big-endian load reads it.
    assert event_filter.as_loaded(0x80000000) == int.from_bytes((0x80000000).to_bytes(4, sys.byteorder), "big")
    # Every path ends in a return; loads stay within an exit event (52 + 16 bytes).
    assert event_filter.PROGRAM[-1][0] == event_filter.PROGRAM[-2][0] == 0x06
    assert max(k for code, _, _, k in event_filter.PROGRAM if code == 0x20) + 4 <= 52 + 16


def test_decode_real_connector_datagrams():
    need_connector()
    RecordingSocket.datagrams = []
    # Unfiltered: /bin/true's exit is one the filter drops (test_event_filter_...).
    conn = ProcConnector(socket_factory=RecordingSocket, filtered=False)
    try:
        before = time.monotonic_ns()
        child = subprocess.Popen(["/bin/true"])
        child.wait()
        after = time.monotonic_ns()
        seen = []

        def got_exit():
            while True:
                events = conn.receive()
                if events is None:
                    break
                seen.extend(events)
            return any(isinstance(e, ExitEvent) and e.tgid == child.pid for e in seen)

        assert wait_until(got_exit, timeout=5.0)
    finally:
        conn.close()
    # Decode the captured bytes again, away from the socket.
    captured = [ev for d in RecordingSocket.datagrams for ev in decode(d)]
    mine = [e for e in captured if getattr(e, "tgid", getattr(e, "child_tgid", None)) == child.pid]
    kinds = [type(e) for e in mine]
    assert ForkEvent in kinds and ExecEvent in kinds and ExitEvent in kinds
    assert kinds.index(ForkEvent) < kinds.index(ExecEvent) < kinds.index(ExitEvent)
    fork = next(e for e in mine if isinstance(e, ForkEvent))
    assert fork.child_pid == fork.child_tgid == child.pid and fork.parent_tgid == os.getpid()
    exec_ = next(e for e in mine if isinstance(e, ExecEvent))
    assert exec_.pid == exec_.tgid == child.pid
    # The kernel's timestamps are CLOCK_MONOTONIC, the clock procs.cache orders reads by.
    assert before <= exec_.timestamp_ns <= after
    # Several messages in one datagram, and a truncated tail, decode safely.
    d = next(d for d in RecordingSocket.datagrams if any(
        isinstance(e, ExecEvent) and e.tgid == child.pid for e in decode(d)))
    assert decode(d + d) == decode(d) * 2
    assert decode(d + d[:50]) == decode(d)
    assert decode(d[:20]) == []
    # The one-message fast path gives exactly what the general decoder gives, kind included.
    for d in RecordingSocket.datagrams:
        fast, slow = decode(d), decode_messages(d, len(d))
        assert fast == slow and [type(e) for e in fast] == [type(e) for e in slow]
    # A message that is not the process connector's (another cb_id) is not an event either way.
    other = bytearray(d)
    other[16:20] = (7).to_bytes(4, sys.byteorder)
    assert decode(other) == decode_messages(other, len(other)) == []


@pytest.mark.parametrize("text, expected", [
    (b"12:memory:/system.slice/a.service\n0::/\n", "/system.slice/a.service"),
    (b"9:name=systemd:/x\n8:pids:/y\n4:cpu,memory:/z w\n1:cpuset:/\n", "/z w"),
    (b"4:memory,cpu:/first\n", "/first"),
    (b"3:nomemory:/no\n2:memoryx:/no\n0::/unified\n", "/unified"),  # not the memory controller
    (b"0::/user.slice/user-0.slice\n", "/user.slice/user-0.slice"),  # pure cgroup v2
    (b"5:memory:/bad\xff\xfename\n", "/bad\udcff\udcfename"),
    (b"1:cpu:/\n", None),
])
def test_memory_cgroup_line(tmp_path, text, expected):
    # cgroup(7): "hierarchy-ID:controller-list:cgroup-path", the v2 hierarchy's ID 0 and its
    # controller list empty.
    f = tmp_path / "cgroup"
    f.write_bytes(text)
    assert read_memory_cgroup(str(f)) == expected


def test_exec_event_exact_argv_also_after_exit(live_cache, children):
    token = uuid.uuid4().hex
    args = hostile_argv(token)
    assert sum(len(a) for a in args) > 2000
    p = subprocess.Popen([sys.executable.encode(), b"-c", b"import sys; sys.stdin.read()",
                          *args], stdin=subprocess.PIPE)
    children.append(p)
    expected = [sys.executable.encode(), b"-c", b"import sys; sys.stdin.read()", *args]
    assert wait_for_exec(live_cache, p.pid, expected[-1])
    comm = proc_comm(p.pid)
    r = live_cache.lookup(p.pid, comm)
    with open(f"/proc/{p.pid}/stat", "rb") as f:
        start = parse_stat(f.read()).start_time
    # The exec's read skips the stat: the start time is the fork event's (a tick later at most),
    # the comm is read by the next scan; the exec event vouches meanwhile (no caveat).
    assert (r.argv, r.source, r.comm, r.note) == (expected, SOURCE_EXEC, None, "")
    assert 0 <= r.start_time - start <= 1
    assert live_cache.rescan()
    r = live_cache.lookup(p.pid, comm)
    assert (r.argv, r.source, r.comm, r.start_time) == (expected, SOURCE_EXEC, comm, start)
    p.stdin.close()
    assert p.wait() == 0
    assert wait_until(lambda: "exited" in live_cache.lookup(p.pid, comm).note)
    r = live_cache.lookup(p.pid, comm)
    assert (r.argv, r.source) == (expected, SOURCE_EXEC)


def test_process_living_20ms_after_exec_is_found_after_exit(live_cache):
    # bash's `exec -a NAME` sets argv[0]: the final argv is the unique name and "0.02".
    found = []
    for i in range(20):
        name = f"short-lived-{uuid.uuid4().hex}-{i} with space"
        p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 0.02', name])
        assert p.wait() == 0
        r = live_cache.lookup(p.pid, "sleep")
        found.append((r.source, r.argv == [name.encode(), b"0.02"], r.note))
    assert all(f == (SOURCE_EXEC, True, "the process has exited") for f in found), found


class SlowConnector(ProcConnector):
    """The real connector, read by a thread that takes 20 ms per datagram: a thread behind
    (by far more than spawning a process takes, even on a loaded machine)."""

    delay = 0.02

    def receive(self):
        events = super().receive()
        if events is not None:
            time.sleep(self.delay)
        return events


def test_lookup_waits_for_queued_exec_events(children):
    need_connector()
    cache = ProcessCache(connector_factory=SlowConnector)
    cache.start()
    try:
        # 30 events queued (fork, exec, exit of 10 processes): ~600 ms of backlog.
        for _ in range(10):
            subprocess.run(["/bin/true"], check=True)
        token = f"--waited-for={uuid.uuid4().hex}"
        argv = [sys.executable, "-c", "import sys; sys.stdin.read()", token]
        # Popen returns once the child's execve() succeeded: its exec event is queued now.
        p = subprocess.Popen(argv, stdin=subprocess.PIPE)
        children.append(p)
        comm = os.path.basename(sys.executable)[:15]
        r = cache.lookup(p.pid, comm, wait=5.0)
        # Without the barrier the cache would not have it yet and /proc would answer ("proc").
        assert (r.source, r.argv) == (SOURCE_EXEC, [a.encode() for a in argv]), r
        # With no wait at all, only /proc can answer while the thread is behind.
        for _ in range(10):
            subprocess.run(["/bin/true"], check=True)
        q = subprocess.Popen(argv + ["second"], stdin=subprocess.PIPE)
        children.append(q)
        # A vfork parent resumes before the child's argv is in place (see _read_entry).
        assert wait_until(lambda: open(f"/proc/{q.pid}/cmdline", "rb").read(), interval=0)
        r = cache.lookup(q.pid, comm, wait=0)
        assert r.source == SOURCE_PROC, r
    finally:
        cache.stop()


class BehindConnector:
    """A stand-in for the connector that is never empty and always 25 ms behind: each receive()
    is one exec event (of a pid that does not exist) stamped 25 ms ago, after 1 ms. A storm the
    thread is behind in, without a real one's timing (a real storm's reader either keeps up,
    and the socket empties, or falls ever further behind)."""

    filter_error = None

    def __init__(self):
        self._fd = os.eventfd(1, os.EFD_NONBLOCK)  # always readable
        self._pid = 1 << 30

    def fileno(self):
        return self._fd

    def receive(self):
        time.sleep(0.001)
        self._pid += 1
        return [ExecEvent(self._pid, self._pid, time.monotonic_ns() - 25_000_000)]

    def close(self):
        os.close(self._fd)


class CountingCondition(threading.Condition):
    notified = 0

    def notify_all(self):
        CountingCondition.notified += 1
        super().notify_all()


def test_a_barrier_in_a_storm_is_woken_once_not_at_every_datagram(tmp_path):
    # A lookup's barrier waits for an event stamped 20 ms after it (_BARRIER_SLACK_NS) while the
    # storm keeps the socket full: the thread applies 20+ datagrams meanwhile, and woke the
    # waiting thread at each of them (in a bench-like storm with 10 kills in 10 s that cost the
    # cache thread 66-68 us per exec instead of 52-54).
    cache = ProcessCache(proc_root=str(tmp_path), connector_factory=BehindConnector, scan_interval=3600)
    cache._cond = CountingCondition(cache._lock)
    cache.start()
    try:
        time.sleep(0.1)
        woken = []
        for _ in range(5):
            CountingCondition.notified = 0
            assert cache._barrier(5.0)
            woken.append(CountingCondition.notified)
    finally:
        cache.stop()
    assert cache.stats()["exec_events"] > 200  # 45 ms of events for each barrier
    assert max(woken) <= 2, woken


class SlowishConnector(SlowConnector):
    delay = 0.005  # 200 datagrams/s: far below what a shell loop of /bin/true produces


def test_barrier_completes_while_events_keep_coming(children):
    # The socket never empties while a shell execs /bin/true in a loop and the thread takes
    # 5 ms per event: the barrier must end on the events' kernel timestamps, not at `wait`.
    need_connector()
    cache = ProcessCache(connector_factory=SlowishConnector)
    cache.start()
    try:
        storm = subprocess.Popen(["/bin/bash", "-c", "while :; do /bin/true; done"])
        children.append(storm)
        time.sleep(0.05)
        argv = [sys.executable, "-c", "import sys; sys.stdin.read()", f"--{uuid.uuid4().hex}"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE)
        children.append(p)
        t = time.monotonic()
        r = cache.lookup(p.pid, os.path.basename(sys.executable)[:15], wait=10.0)
        elapsed = time.monotonic() - t
        assert (r.source, r.argv) == (SOURCE_EXEC, [a.encode() for a in argv]), r
        assert elapsed < 5.0, f"the barrier waited {elapsed:.1f} s"
        storm.kill()
    finally:
        cache.stop()


class GatedConnector(ProcConnector):
    """The real connector with the smallest receive queue the kernel allows (about ten
    events), read only when the gate is open: a reader that stalls long enough to overflow."""

    gate = threading.Event()

    def __init__(self):
        super().__init__(rcvbuf=4096)

    def receive(self):
        self.gate.wait()
        return super().receive()


def test_lost_events_trigger_a_verify_scan(children):
    need_connector()
    GatedConnector.gate = threading.Event()
    GatedConnector.gate.set()  # open while start() scans: its scan drains events every 128 pids
    cache = ProcessCache(connector_factory=GatedConnector, scan_interval=3600)
    cache.start()
    GatedConnector.gate.clear()
    try:
        for _ in range(40):  # ~120 events into a queue of ~10: ENOBUFS
            subprocess.run(["/bin/true"], check=True)
        name = f"during-loss-{uuid.uuid4().hex}"
        p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 30', name])
        children.append(p)
        assert wait_until(lambda: proc_comm(p.pid) == "sleep")
        GatedConnector.gate.set()
        assert wait_until(lambda: cache.stats()["verify_scans"] >= 1)
        st = cache.stats()
        assert st["lost_events"] >= 1 and st["connector"] == "active"
        # Its exec event was lost or not, the cache has it now: by event or by the verify scan.
        r = cache.lookup(p.pid, "sleep", wait=0)
        assert r.source in (SOURCE_EXEC, SOURCE_SCAN) and r.argv == [name.encode(), b"30"], r
    finally:
        GatedConnector.gate.set()
        cache.stop()


class BrokenConnector(ProcConnector):
    """The real connector, subscribed, whose socket then fails."""

    def receive(self):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_connector_failing_later_falls_back_to_scanning(children, caplog):
    need_connector()
    cache = ProcessCache(connector_factory=BrokenConnector, scan_interval=0.2)
    with caplog.at_level(logging.WARNING, logger="oom_journal.procs.cache"):
        cache.start()
        assert wait_until(lambda: cache.stats()["connector"].startswith("unavailable"))
    try:
        assert cache.stats()["connector"] == (
            "unavailable: receive failed: [Errno 5] Input/output error")
        assert any(m.startswith("connector unavailable: receive failed")
                   and m.endswith("falling back to /proc scanning") for m in caplog.messages)
        name = f"after-failure-{uuid.uuid4().hex}"
        p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 30', name])
        children.append(p)
        assert wait_until(lambda: proc_comm(p.pid) == "sleep")
        # A periodic scan may have read it as bash, before its exec (a scan reads new pids only, and
        # an exec keeps the /proc inode; 1 run in ~20 here): a verify scan (at most one a second,
        # and the connector's failure asked for one already) reads it again.
        assert wait_until(lambda: cache.rescan(verify=True) and cache.lookup(p.pid, "sleep").found, timeout=3.0)
        p.kill()
        p.wait()
        r = cache.lookup(p.pid, "sleep")
        assert (r.source, r.argv) == (SOURCE_SCAN, [name.encode(), b"30"]), r.note
        assert cache.stats()["thread_errors"] == 0
    finally:
        cache.stop()


def test_fork_without_exec_inherits_parent_argv(live_cache, children):
    token = uuid.uuid4().hex
    code = ("import os, sys\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    sys.stdin.read(); os._exit(0)\n"
            "print(pid, flush=True); sys.stdin.read(); os.waitpid(pid, 0)\n")
    argv = [sys.executable, "-c", code, f"--fork-token={token}"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    children.append(p)
    child = int(p.stdout.readline())
    comm = proc_comm(child)
    r = live_cache.lookup(child, comm)
    assert (r.source, r.argv) == (SOURCE_FORK, [a.encode() for a in argv])
    # Its start time from the fork event's timestamp: stat's, or a tick later (_NS_PER_TICK).
    with open(f"/proc/{child}/stat", "rb") as f:
        assert 0 <= r.start_time - parse_stat(f.read()).start_time <= 1
    p.stdin.close()
    p.wait()


def test_prctl_comm_change_is_followed(live_cache, children):
    # PR_SET_NAME = 15; a name with ')', a space and a byte that is not UTF-8.
    code = ("import ctypes, sys\n"
            "ctypes.CDLL(None).prctl(15, b'ev) il\\xff', 0, 0, 0)\n"
            "print('renamed', flush=True); sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code, "renamer"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    children.append(p)
    assert p.stdout.readline() == b"renamed\n"
    assert proc_comm(p.pid) == "ev) il\udcff"
    r = live_cache.lookup(p.pid, "ev) il\udcff")
    assert r.source == SOURCE_EXEC and r.argv[-1] == b"renamer" and r.comm == "ev) il\udcff"
    p.stdin.close()
    p.wait()
    r = live_cache.lookup(p.pid, os.path.basename(sys.executable))
    assert r.source == NOT_FOUND and r.note.startswith(
        "comm mismatch: cached 'ev) il\\xff', kernel ")


def test_process_predating_start_is_found_by_scan(children):
    need_connector()
    name = f"predates-start-{uuid.uuid4().hex}"
    p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 30', name])
    children.append(p)
    assert wait_until(lambda: proc_comm(p.pid) == "sleep")
    cache = ProcessCache()
    cache.start()
    try:
        r = cache.lookup(p.pid, "sleep")
        assert (r.source, r.argv) == (SOURCE_SCAN, [name.encode(), b"30"]), r.note
        p.kill()
        p.wait()
        assert wait_until(lambda: "exited" in cache.lookup(p.pid, "sleep").note)
        assert cache.lookup(p.pid, "sleep").argv == [name.encode(), b"30"]
    finally:
        cache.stop()


def test_without_connector_the_scan_finds_later_processes(children):
    need_root()
    cache = ProcessCache(use_connector=False, scan_interval=0.2)
    cache.start()
    try:
        assert cache.stats()["connector"] == "disabled (use_connector=False)"
        name = f"found-by-scan-{uuid.uuid4().hex}"
        p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 30', name])
        children.append(p)
        assert wait_until(lambda: proc_comm(p.pid) == "sleep")
        scans = cache.stats()["scans"]
        assert wait_until(lambda: cache.stats()["scans"] >= scans + 2, timeout=5.0)
        p.kill()
        p.wait()
        # Gone from /proc: only the scan can have it.
        r = cache.lookup(p.pid, "sleep")
        assert (r.source, r.argv) == (SOURCE_SCAN, [name.encode(), b"30"]), r.note
        assert wait_until(lambda: "exited" in cache.lookup(p.pid, "sleep").note, timeout=5.0)
    finally:
        cache.stop()


@pytest.mark.parametrize("program", ["sleep", "python"])
def test_without_connector_a_process_the_scan_read_before_its_exec_is_read_again(children, program):
    """A scan alone does not see an exec (/proc/PID keeps its inode). A fork the scan read before
    it exec'd holds its parent's command line: CI (stop 21) recorded test_faults' scan victim
    without one, read as pytest's fork, comm 'python' against the kernel's 'python3'. The next
    scans must read it again, also when the new program has the old comm ("python" here)."""
    need_root()
    cache = ProcessCache(use_connector=False, scan_interval=0.1)
    cache.start()
    try:
        name = f"execs-later-{uuid.uuid4().hex}"
        exe = "/bin/sleep" if program == "sleep" else sys.executable
        args = ["30"] if program == "sleep" else ["-c", "import time; time.sleep(30)"]
        code = f"import os, sys, time; time.sleep(0.8); os.execv({exe!r}, [sys.argv[1], *{args!r}])"
        p = subprocess.Popen([sys.executable, "-c", code, name])
        children.append(p)
        before = proc_comm(p.pid)
        # Read by a scan as it is before its exec.
        assert wait_until(lambda: (lambda r: r.found and r.argv[:2] == [sys.executable.encode(), b"-c"])(
            cache.lookup(p.pid, before)), timeout=5.0)
        assert wait_until(lambda: open(f"/proc/{p.pid}/cmdline", "rb").read().startswith(name.encode()))
        after = proc_comm(p.pid)
        scans = cache.stats()["scans"]
        assert wait_until(lambda: cache.stats()["scans"] >= scans + 2, timeout=5.0)
        p.kill()
        p.wait()
        r = cache.lookup(p.pid, after)
        assert (r.source, r.argv) == (SOURCE_SCAN, [name.encode(), *[a.encode() for a in args]]), r.note
    finally:
        cache.stop()


def test_without_connector_a_young_process_read_again_as_a_zombie_keeps_its_command_line(children):
    """The second read of a young process (above) must not replace what the first read with the
    nothing a dying process shows: CI (session 7) recorded a container's OOM victim, 2 s old,
    without its command line, read again while it exited (its cmdline empty, its comm the same)."""
    need_root()
    cache = ProcessCache(use_connector=False, scan_interval=0.1)
    cache.start()
    try:
        name = f"young-zombie-{uuid.uuid4().hex}"
        p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 30', name])
        children.append(p)
        assert wait_until(lambda: proc_comm(p.pid) == "sleep")
        # Read by a scan (a lookup of a live process would also read /proc itself).
        assert wait_until(lambda: [s.cmdline for s in cache.seen_as(b"sleep") if s.pid == p.pid]
                          == [name.encode() + b"\x0030\x00"], timeout=5.0)
        os.kill(p.pid, signal.SIGKILL)  # not reaped: a zombie, whose cmdline is empty
        assert wait_until(lambda: open(f"/proc/{p.pid}/stat", "rb").read().split(b") ", 1)[1][:1] == b"Z")
        scans = cache.stats()["scans"]
        assert wait_until(lambda: cache.stats()["scans"] >= scans + 3, timeout=5.0)
        assert [s.cmdline for s in cache.seen_as(b"sleep") if s.pid == p.pid] == [name.encode() + b"\x0030\x00"]
        r = cache.lookup(p.pid, "sleep")
        assert (r.source, r.argv) == (SOURCE_SCAN, [name.encode(), b"30"]), r.note
    finally:
        cache.stop()


def test_lookup_reads_proc_for_a_live_uncached_process(children):
    need_root()
    # A cache that has not scanned yet knows nothing: only /proc at lookup time can answer.
    name = f"live-{uuid.uuid4().hex}"
    p = subprocess.Popen(["bash", "-c", 'exec -a "$0" sleep 30', name])
    children.append(p)
    assert wait_until(lambda: proc_comm(p.pid) == "sleep")
    cache = ProcessCache(use_connector=False, scan_interval=3600)
    r = cache.lookup(p.pid, "sleep")
    assert (r.source, r.argv) == (SOURCE_PROC, [name.encode(), b"30"])
    r = cache.lookup(p.pid, "bash")
    assert r.source == NOT_FOUND and f"comm mismatch: /proc/{p.pid} has 'sleep'" in r.note


def test_stop_is_idempotent_and_releases_fds(children):
    need_connector()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        cache = ProcessCache()
        cache.start()
        assert cache.stats()["connector"] == "active"
        cache.stop()
        cache.stop()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert cache.stats()["connector"] == "closed"
    assert cache.lookup(1, proc_comm(1)).found  # still answers from what it holds


def test_a_sigkilled_process_is_handed_out_with_its_comm_though_its_exec_read_no_stat(live_cache, children):
    # The exec's read skipped the stat (its comm unknown then); at the SIGKILL exit the zombie's
    # stat still names it: the second witness's record of a lost kill needs the comm.
    token = uuid.uuid4().hex
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", token], stdin=subprocess.PIPE)
    children.append(p)
    assert wait_for_exec(live_cache, p.pid, token.encode())
    comm = proc_comm(p.pid).encode()
    assert live_cache.lookup(p.pid, comm).comm is None  # not read yet: no scan since
    since = time.monotonic_ns()
    os.kill(p.pid, signal.SIGKILL)  # not reaped until p.wait(): a zombie meanwhile
    assert wait_until(lambda: any(k.pid == p.pid for k in live_cache.killed_since(since)))
    k = next(k for k in live_cache.killed_since(since) if k.pid == p.pid)
    assert (k.comm, k.source) == (comm, SOURCE_EXEC) and k.cmdline.split(b"\0")[-2] == token.encode()
    p.wait()


def test_killed_fd_becomes_readable_at_a_sigkill_exit_and_not_at_a_normal_one(live_cache, children):
    """The daemon's second witness reads the kernel's counters when killed_fd says a process died
    of SIGKILL (an OOM victim, maybe), instead of every second; a normal exit does not wake it."""
    fd = live_cache.killed_fd()
    assert fd >= 0 and live_cache.events_active()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while poller.poll(0):  # whatever the machine's processes did before
        os.eventfd_read(fd)
    since = time.monotonic_ns()
    quiet = subprocess.Popen([sys.executable, "-c", "pass"])
    children.append(quiet)
    quiet.wait()
    killed = live_cache.killed_since(since)  # after a barrier: the exit event is in
    # Readable only if some other process of the machine died of SIGKILL meanwhile.
    assert quiet.pid not in [k.pid for k in killed]
    assert bool(poller.poll(0)) == bool(killed), killed
    while poller.poll(0):
        os.eventfd_read(fd)
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    children.append(p)
    assert wait_for_exec(live_cache, p.pid, b"import sys; sys.stdin.read()")
    os.kill(p.pid, signal.SIGKILL)
    assert poller.poll(5000), "killed_fd not readable after a SIGKILL exit"
    assert os.eventfd_read(fd) >= 1
    assert any(k.pid == p.pid for k in live_cache.killed_since(0))
    p.wait()
    live_cache.stop()
    assert live_cache.killed_fd() == -1
