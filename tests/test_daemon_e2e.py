"""The daemon end to end: real kernel OOM kills, real journald, the console script as a user runs it.

Asserts on what a user sees: `journalctl -o json MESSAGE_ID=...` and `journalctl -u UNIT`.
"""
from __future__ import annotations

import signal
import json
import subprocess
import time
import uuid
from datetime import datetime

import pytest

from conftest import MESSAGE_ID, journal_entries, kill_in, victim_argv, wait_for_entries


def entries_for(pid: int, writers) -> list:
    return journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=writers)


@pytest.mark.parametrize("source", ["journal", "kmsg"])
def test_real_kill_is_one_journal_entry_with_full_cmdline(source, memcg, daemon_factory):
    daemon = daemon_factory("--source", source).start()
    assert any("READY=1" in m.split("\n") for m in daemon.messages)
    daemon.wait_caught_up()
    cg = memcg()
    argv = victim_argv(uuid.uuid4().hex)
    pid = kill_in(cg, argv)

    entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[daemon])
    daemon.wait_idle(last_pid=pid)  # recorded, nothing pending: a duplicate write came before this
    entries = entries_for(pid, [daemon])
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["OOM_CMDLINE"] == " ".join(argv)
    assert e["OOM_ARGV"] == b"\0".join(a.encode() for a in argv)
    assert e["OOM_CMDLINE_SOURCE"] == "exec-event"
    assert e["OOM_COMM"] == "python3"
    assert e["OOM_UNIT"] == cg.unit
    assert e["OBJECT_SYSTEMD_UNIT"] == cg.unit
    assert e["OOM_CGROUP"] == cg.kernel_path
    assert e["OOM_CONSTRAINT"] == "CONSTRAINT_MEMCG"
    assert e["OOM_REASON"] == "Memory cgroup out of memory"
    assert e["PRIORITY"] == "3"
    assert e["SYSLOG_IDENTIFIER"] == "oom-journal"
    assert int(e["OOM_ANON_RSS_KB"]) > 0
    assert e["OOM_EVENT_ID"].startswith(e["_BOOT_ID"] + "-")
    assert e["MESSAGE"].startswith(f"Memory cgroup out of memory: killed process {pid} (python3) of {cg.unit}: /usr/bin/python3 -c")

    # What a user types: journalctl -u UNIT shows the kill.
    out = subprocess.run(["journalctl", "-b", "--no-pager", "-o", "json", "-u", cg.unit],
                         capture_output=True, text=True).stdout
    assert f'"OOM_PID":"{pid}"' in out.replace(" ", "")
    assert daemon.stop() == 0
    assert "STOPPING=1" in "\n".join(daemon.messages)


def test_victim_killed_tens_of_ms_after_exec_has_full_cmdline(memcg, daemon_factory):
    """Python dies at its first big allocation, ~20-40 ms after exec: far below any scan interval."""
    daemon = daemon_factory("--process-refresh", "3600").start()  # no scan can help: exec events must
    cg = memcg()
    argv = ["/usr/bin/python3", "-S", "-c", "b = b'x' * (256 << 20)", f"young-{uuid.uuid4().hex}", "y" * 2000]
    started = time.monotonic()
    pid = kill_in(cg, argv)
    lived = time.monotonic() - started
    entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[daemon])
    assert len(entries) == 1
    assert entries[0]["OOM_CMDLINE"] == " ".join(argv), f"victim lived {lived * 1000:.0f} ms"
    assert entries[0]["OOM_CMDLINE_SOURCE"] == "exec-event"


def test_kills_while_down_are_recorded_once_across_restarts(memcg, daemon_factory, tmp_path):
    cg = memcg()
    first = daemon_factory("--source", "journal").start()
    daemons = [first]
    before = kill_in(cg, victim_argv("before-" + uuid.uuid4().hex, 10))
    assert len(wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={before}", writers=daemons)) == 1
    first.kill()  # SIGKILL: no clean stop, no last position save

    down = [kill_in(cg, victim_argv(f"down{i}-" + uuid.uuid4().hex, 10)) for i in range(2)]

    for _ in range(2):
        d = daemon_factory("--source", "journal").start()
        daemons.append(d)
        for pid in down:
            wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=daemons)
        time.sleep(1.0)
        d.kill()
    for pid in [before] + down:
        entries = entries_for(pid, daemons)
        assert len(entries) == 1, (pid, entries)
    # Killed while nobody watched: the kernel's facts are there, the command line cannot be.
    for pid in down:
        e = entries_for(pid, daemons)[0]
        assert e["OOM_CMDLINE_SOURCE"] == "not-found"
        assert e["OOM_UNIT"] == cg.unit
        assert "command line unknown" in e["MESSAGE"]


def test_sighup_reloads_and_keeps_old_config_when_new_is_invalid(memcg, daemon_factory, tmp_path):
    conf = tmp_path / "oom-journal.conf"
    conf.write_text("log-level = info\n")
    d = daemon_factory("-c", str(conf)).start()
    conf.write_text("syslog-proto = bogus\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("RELOADING=1")
    d.wait_for("READY=1")
    assert "reload failed" in d.messages[-1]
    assert d.proc.poll() is None
    # Still working after the failed reload:
    cg = memcg()
    pid = kill_in(cg, victim_argv("after-reload-" + uuid.uuid4().hex, 10))
    assert len(wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])) == 1
    conf.write_text("log-level = debug\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("RELOADING=1")
    msg = d.wait_for("READY=1")
    assert "reload failed" not in msg
    assert d.stop() == 0


def test_without_journald_output_events_are_json_lines_on_stdout(memcg, daemon_factory):
    """--output stdout is what a container without journald gets (auto picks it there)."""
    d = daemon_factory("--source", "kmsg", "--output", "stdout").start()
    cg = memcg()
    argv = victim_argv("stdout-" + uuid.uuid4().hex)
    began = time.time()
    pid = kill_in(cg, argv)
    deadline = time.monotonic() + 15
    doc = None
    while doc is None and time.monotonic() < deadline:
        for line in d.log.read_text().splitlines(keepends=True):
            # Only whole lines: the backlog of this boot's earlier kills is being written meanwhile.
            if line.startswith("{") and line.endswith("\n"):
                candidate = json.loads(line)
                # This kill: its pid, since the test began (a long boot reuses pids).
                if candidate["pid"] == pid and datetime.fromisoformat(candidate["time"]).timestamp() >= began - 1:
                    doc = candidate
        time.sleep(0.1)
    assert doc is not None, d.log.read_text()
    assert doc["cmdline"] == " ".join(argv) and doc["argv"] == argv
    assert doc["unit"] == cg.unit and doc["cmdline_source"] == "exec-event"
    assert doc["event_id"].startswith(doc["boot_id"] + "-")
    assert entries_for(pid, [d]) == []  # nothing went to the journal
    assert d.stop() == 0


def test_watchdog_pings_and_auto_source_says_why(daemon_factory):
    d = daemon_factory(env={"WATCHDOG_USEC": "200000"}).start()
    d.wait_for("WATCHDOG=1", timeout=5)
    d.wait_for("WATCHDOG=1", timeout=5)
    assert d.stop() == 0
    log = d.log.read_text()
    assert "reading the kernel log from the journal: journald is recording this boot's kernel messages" in log


def test_hostile_comm_is_reported_exactly(memcg, daemon_factory, tmp_path):
    """The kernel names the victim by its executable's file name: make that name hostile."""
    exe = tmp_path / "a) b ("
    exe.symlink_to("/usr/bin/python3")
    d = daemon_factory().start()
    cg = memcg()
    argv = [str(exe), "-c", "b = b'x' * (256 << 20)", "hostile-" + uuid.uuid4().hex]
    pid = kill_in(cg, argv)
    entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])
    assert len(entries) == 1
    e = entries[0]
    assert e["OOM_COMM"] == "a) b ("
    assert e["OOM_CMDLINE"] == " ".join(argv)
    assert f"killed process {pid} (a) b () of {cg.unit}" in e["MESSAGE"]


def test_a_burst_beyond_the_kernels_report_ratelimit_still_names_every_unit(memcg, daemon_factory):
    """The kernel prints its report (with the cgroup) for at most 10 kills in 5 s (oom_rs in
    mm/oom_kill.c); beyond, a kill has its kill line alone. The cgroup read at exec fills in."""
    d = daemon_factory().start()
    cg = memcg()
    pids = [kill_in(cg, ["/usr/bin/python3", "-S", "-c", "b = b'x' * (256 << 20)", f"burst-{i}-{uuid.uuid4().hex}"])
            for i in range(14)]
    for pid in pids:
        (e,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])
        assert e["OOM_UNIT"] == cg.unit and e["OBJECT_SYSTEMD_UNIT"] == cg.unit, e
        assert e["OOM_CGROUP"] == cg.kernel_path
    entries = [entries_for(pid, [d])[0] for pid in pids]
    sources = [e["OOM_CGROUP_SOURCE"] for e in entries]
    stamps = sorted(int(e["OOM_KERNEL_TIMESTAMP_USEC"]) for e in entries)
    # The kernel prints at most 10 reports in 5 s (oom_rs: DEFAULT_RATELIMIT_INTERVAL 5 s, BURST 10),
    # so of 14 kills within 5 s at least 4 had their kill line alone: the fallback must have named
    # them (and a kill whose report was printed must have taken the kernel's cgroup).
    assert stamps[-1] - stamps[0] < 5_000_000, f"the 14 kills took {(stamps[-1] - stamps[0]) / 1e6:.1f} s: no burst"
    assert sources.count("proc") >= 4 and set(sources) <= {"kernel", "proc"}, sources
    for e in entries:
        if e["OOM_CGROUP_SOURCE"] == "proc":
            assert "OOM_MEMCG" not in e  # no report was printed for it: the cgroup is the cache's
    assert d.stop() == 0
