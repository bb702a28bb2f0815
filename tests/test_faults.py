"""Faults while running: each with the real thing (journald, /dev/kmsg, a full disk, no connector).

Every test ends by showing that the daemon still records a real kill, from its own journal entry.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid


from conftest import JOURNAL_SOCKET, JOURNALD, MESSAGE_ID, _journald_pids, kill_in, victim_argv, wait_for_entries


def recorded(daemon, pid, timeout=15.0):
    return wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[daemon], timeout=timeout)


def test_no_process_event_connector_falls_back_to_scanning_and_says_so(memcg, daemon_factory):
    """In a network namespace of its own the kernel sends it no process events (cn_proc only
    serves the initial namespaces): the cache must say so and find processes by scanning."""
    d = daemon_factory("--process-refresh", "0.2", prefix=["unshare", "--net"]).start()
    assert "exec events: unavailable" in d.messages[-1] or "unavailable" in d.log.read_text()
    assert "falling back to /proc scanning" in d.log.read_text()
    cg = memcg()
    # The victim lives ~1 s before it allocates: long enough for a scan to read it.
    argv = ["/usr/bin/python3", "-c", "import time; time.sleep(1); b = b'x' * (256 << 20)", "scan-" + uuid.uuid4().hex]
    pid = kill_in(cg, argv)
    (e,) = recorded(d, pid)
    assert (e.get("OOM_CMDLINE"), e["OOM_CMDLINE_SOURCE"]) == (" ".join(argv), "scan"), e.get("OOM_CMDLINE_NOTE")
    assert d.stop() == 0


def test_journald_restarted_under_the_daemon(memcg, daemon_factory):
    d = daemon_factory("--source", "journal").start()
    old = _journald_pids()
    assert old, "journald must run for this test"
    for pid in old:
        os.kill(pid, signal.SIGTERM)  # by pid; the journald fixture started it, or the machine did
    deadline = time.monotonic() + 10
    while _journald_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    cg = memcg()
    pid = kill_in(cg, victim_argv("during-restart-" + uuid.uuid4().hex, 10))  # while journald is down
    subprocess.Popen([JOURNALD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    while not (JOURNAL_SOCKET.exists() and _journald_pids()):
        assert time.monotonic() < deadline + 10, "journald did not come back"
        time.sleep(0.05)
    (e,) = recorded(d, pid, timeout=30)
    assert e["OOM_CMDLINE_SOURCE"] == "exec-event"
    pid2 = kill_in(cg, victim_argv("after-restart-" + uuid.uuid4().hex, 10))
    assert len(recorded(d, pid2)) == 1
    assert d.proc.poll() is None and d.stop() == 0


def test_journal_rotated_under_the_daemon(memcg, daemon_factory):
    """journald starts new files (`journalctl --rotate`, as it does by itself at its size limits):
    the daemon's reading handle has no inotify fd of its own (see sources/journal.py), so it must
    be reopened when the watching handle reports files added; a kill after the rotation is in the
    new file only. (This rotates the machine's journal: nothing is lost, archived files stay.)"""
    d = daemon_factory("--source", "journal").start()
    cg = memcg()
    before = kill_in(cg, victim_argv("before-rotate-" + uuid.uuid4().hex, 10))
    assert len(recorded(d, before)) == 1
    subprocess.run(["journalctl", "--rotate"], check=True, capture_output=True, timeout=60)
    after = kill_in(cg, victim_argv("after-rotate-" + uuid.uuid4().hex, 10))
    (e,) = recorded(d, after)
    assert e["OOM_CMDLINE_SOURCE"] == "exec-event"
    assert d.proc.poll() is None and d.stop() == 0


def test_kmsg_overrun_is_reported_and_reading_goes_on(memcg, daemon_factory):
    """The kernel's own flood: an OOM report lists every task of the cgroup (vm.oom_dump_tasks),
    so a cgroup of 1,500 sleeping processes makes one report of ~140 KB, more than this kernel's
    128 KiB log buffer, while the daemon is stopped (SIGSTOP) and cannot read. (Writing to
    /dev/kmsg from a test cannot do it: userspace writes are rate-limited, printk_devkmsg.)"""
    d = daemon_factory("--source", "kmsg").start()
    cg = memcg(limit_mib=400)
    crowd = cg.run(["sh", "-c", "for i in $(seq 1500); do sleep 120 & done; wait"])
    deadline = time.monotonic() + 30
    while len((cg.path / "cgroup.procs").read_text().split()) < 1501:
        assert time.monotonic() < deadline, "could not start the crowd"
        time.sleep(0.1)
    lost = "kernel messages were lost before oom-journal read them (/dev/kmsg overrun"
    # The kernel prints at most 10 reports in 5 s (oom_rs ratelimit in mm/oom_kill.c); if kills
    # just before this test used them up, this report is not printed: try again after 5 s.
    for _attempt in range(3):
        os.kill(d.pid, signal.SIGSTOP)
        try:
            argv = ["/usr/bin/python3", "-c", "b = b'x' * (1 << 30)", "after-overrun-" + uuid.uuid4().hex]
            pid = kill_in(cg, argv)
        finally:
            os.kill(d.pid, signal.SIGCONT)
        assert len(recorded(d, pid)) == 1  # the kill line comes last, after what was lost
        if lost in d.log.read_text():
            break
        time.sleep(5)
    assert lost in d.log.read_text(), d.log.read_text()[-3000:]
    crowd.kill()
    assert d.stop() == 0


def test_state_directory_full_then_freed(memcg, daemon_factory, tmp_path):
    """A tiny tmpfs as the state directory, filled up: the journal entry is still written, the
    problem shows in STATUS, and once there is room again the state catches up."""
    state = tmp_path / "tiny"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "oomj-test", str(state)], check=True)
    d = daemon_factory("--state-dir", str(state))
    try:
        filler = state / "filler"
        filler.touch()  # before the daemon: its open cannot be what finds the disk full
        d.start()
        written = 0
        try:
            f = open(filler, "wb")
        except OSError as e:
            # Seen again (2 of 10 runs after the journal tests, not in 13 since): ENOSPC from
            # this open(O_TRUNC) of an empty file, once just after an open of it had succeeded.
            # Cause unknown; say what the file system held then.
            df = subprocess.run(["df", "-k", str(state)], capture_output=True, text=True).stdout
            held = {p.name: p.stat().st_size for p in state.iterdir()}
            mounts = [line for line in open("/proc/self/mountinfo") if "oomj" in line]
            raise AssertionError(f"{e!r} opening the filler at READY: {df} {held} {mounts}") from e
        with f:  # fill the rest of the 16 MiB
            try:
                while True:
                    written += f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        # Once in CI (2026-12-02) the tmpfs was full already at READY (the filler's open failed:
        # ENOSPC), not reproduced since: say what held it, if it happens again.
        held = {p.name: p.stat().st_size for p in state.iterdir() if p.name != "filler"}
        assert written > 0, f"the state directory was full before the test filled it: {held}"
        cg = memcg()
        pid = kill_in(cg, victim_argv("disk-full-" + uuid.uuid4().hex, 10))
        (e,) = recorded(d, pid)
        assert e["OOM_CMDLINE_SOURCE"] == "exec-event"
        d.wait_for_status("PROBLEM", timeout=15)
        filler.unlink()
        # (SQLite may get its commit through on a retry before this, once its rollback freed
        # room: either way the problem must clear and the kill stay recorded once.)
        # Committed (STATUS names the last kill committed), nothing pending: no later write can come.
        d.wait_for(lambda line: line.startswith("STATUS=") and "PROBLEM" not in line
                   and f"last: pid {pid} (" in line, timeout=20)
        assert d.proc.poll() is None
        assert len(recorded(d, pid)) == 1  # not written again when the commit went through
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.kill()  # it holds the database open: the mount cannot go before it
        subprocess.run(["umount", str(state)], check=False)


def test_unusable_state_directory_at_start_still_records_kills(memcg, daemon_factory, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    d = daemon_factory("--state-dir", str(blocker / "state")).start()
    assert "PROBLEM" in d.messages[-1] and "not persisted" in d.messages[-1]
    cg = memcg()
    pid = kill_in(cg, victim_argv("no-state-" + uuid.uuid4().hex, 10))
    assert len(recorded(d, pid)) == 1
    assert d.stop() == 0


def test_sigterm_during_a_stuck_delivery_stops_cleanly_and_keeps_the_event(memcg, daemon_factory):
    """Elasticsearch stand-in (no real one here) that stalls every request."""
    from es_standin import StandinElasticsearch

    es = StandinElasticsearch().start()
    try:
        es.stall_next_requests(100, seconds=60, path="/_bulk")
        d = daemon_factory("--elasticsearch-server", es.url).start()
        cg = memcg()
        pid = kill_in(cg, victim_argv("stuck-" + uuid.uuid4().hex, 10))
        (entry,) = recorded(d, pid)
        deadline = time.monotonic() + 15
        while not es.requests_to("/_bulk"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - started < 20  # bounded by the sink's own timeout
        es.stop()
        es = StandinElasticsearch().start()  # the server is back (a fresh one, empty)
        d2 = daemon_factory("--elasticsearch-server", es.url, "--elasticsearch-index", "oom-%Y").start()
        index = "oom-" + time.strftime("%Y", time.gmtime())
        deadline = time.monotonic() + 30
        while entry["OOM_EVENT_ID"] not in es.docs(index):
            assert time.monotonic() < deadline, "the undelivered event was not delivered after the restart"
            time.sleep(0.1)
        assert d2.stop() == 0
    finally:
        es.stop()


def overwrite_with_garbage(path) -> None:
    """The file's own bytes replaced (the same inode, as the daemon holds it open), not a new file."""
    with open(path, "r+b") as f:
        size = max(os.fstat(f.fileno()).st_size, 4096)
        f.write(os.urandom(size))


def slack_posts_for(standin, pid):
    return [r for r in standin.accepted() if r.payload and f"pid {pid}" in str(r.payload)]


def wait_until(predicate, what, timeout=30.0, daemon=None, slack=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = daemon.log.read_text()[-4000:] if daemon is not None else ""
            got = [(r.status, r.payload) for r in slack.received] if slack is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{got}\n{log}")
        time.sleep(0.1)


def test_corrupt_state_database_at_start_falls_back_to_memory_and_still_delivers(memcg, daemon_factory, tmp_path):
    """Slack stand-in (no real Slack here) as the sink."""
    from slack_standin import SlackStandin

    state = tmp_path / "corrupt"
    state.mkdir()
    (state / "state.sqlite3").write_bytes(os.urandom(8192))
    with SlackStandin() as slack:
        d = daemon_factory("--state-dir", str(state), "--slack-webhook", slack.url).start()
        assert "PROBLEM" in d.messages[-1] and "file is not a database" in d.messages[-1], d.messages[-1]
        assert "not persisted" in d.messages[-1]
        cg = memcg()
        pid = kill_in(cg, victim_argv("corrupt-at-start-" + uuid.uuid4().hex, 10))
        (e,) = recorded(d, pid)
        assert e["OOM_CMDLINE_SOURCE"] == "exec-event"
        wait_until(lambda: slack_posts_for(slack, pid), "the event at Slack", daemon=d, slack=slack)
        time.sleep(0.5)
        assert len(recorded(d, pid, timeout=0)) == 1 and len(slack_posts_for(slack, pid)) == 1
        assert d.proc.poll() is None and d.stop() == 0


def test_state_database_overwritten_while_running_falls_back_to_memory(memcg, daemon_factory, tmp_path):
    """The database, its -wal and -shm overwritten with garbage under the running daemon (and its
    sink worker's connection): the next kill is recorded once, in memory, said in STATUS, and still
    reaches the sink (Slack stand-in: no real Slack here); the kill before is not written again."""
    from slack_standin import SlackStandin

    state = tmp_path / "state-overwritten"
    with SlackStandin() as slack:
        d = daemon_factory("--state-dir", str(state), "--slack-webhook", slack.url).start()
        cg = memcg()
        before = kill_in(cg, victim_argv("before-garbage-" + uuid.uuid4().hex, 10))
        assert len(recorded(d, before)) == 1
        wait_until(lambda: slack_posts_for(slack, before), "the first event at Slack", daemon=d, slack=slack)
        files = [state / f"state.sqlite3{suffix}" for suffix in ("", "-wal", "-shm")]
        assert all(f.exists() for f in files), list(state.iterdir())
        for f in files:
            overwrite_with_garbage(f)
        after = kill_in(cg, victim_argv("after-garbage-" + uuid.uuid4().hex, 10))
        (e,) = recorded(d, after)
        assert e["OOM_CMDLINE_SOURCE"] == "exec-event"
        d.wait_for_status("PROBLEM", timeout=15)
        assert "keeping state in memory" in d.messages[-1] and "database" in d.messages[-1], d.messages[-1]
        wait_until(lambda: slack_posts_for(slack, after), "the event after the corruption at Slack", daemon=d, slack=slack)
        time.sleep(1.0)
        assert d.proc.poll() is None
        assert len(recorded(d, after, timeout=0)) == 1 and len(slack_posts_for(slack, after)) == 1
        assert len(recorded(d, before, timeout=0)) == 1  # known from the journal: not written twice
        assert len(slack_posts_for(slack, before)) == 1
        third = kill_in(cg, victim_argv("in-memory-" + uuid.uuid4().hex, 10))
        assert len(recorded(d, third)) == 1
        wait_until(lambda: slack_posts_for(slack, third), "a later event at Slack", daemon=d, slack=slack)
        assert d.stop() == 0


def test_state_database_corrupt_while_quiet_is_found_before_the_sink_worker_stops(daemon_factory, tmp_path):
    """No kill comes: the main loop's periodic check finds the garbage and moves the sink's worker
    to the in-memory store; the watchdog must keep being told all is alive."""
    from slack_standin import SlackStandin

    state = tmp_path / "state-quiet"
    with SlackStandin() as slack:
        d = daemon_factory("--state-dir", str(state), "--slack-webhook", slack.url,
                           env={"WATCHDOG_USEC": "2000000"}).start()
        # A first start reads this boot's kernel log, whose kills (earlier tests') it looks up in
        # the database: let that and the worker's first pass end, so that nothing but the periodic
        # check reads the database after the garbage.
        time.sleep(1.5)
        for f in state.iterdir():
            if f.name.startswith("state.sqlite3"):
                overwrite_with_garbage(f)
        d.wait_for_status("PROBLEM", timeout=15)  # the check runs every 5 s (POSITION_SAVE_INTERVAL)
        d.drain()
        n = len(d.messages)
        time.sleep(3)
        assert "WATCHDOG=1" in d.drain()[n:], d.log.read_text()[-3000:]
        assert "worker stopped" not in d.log.read_text()
        assert d.stop() == 0
