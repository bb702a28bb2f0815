"""Young victims killed in the middle of an exec storm keep their command lines (issue #18).

A build server or CI runner execs hundreds of processes a second; the process cache reads each
exec's /proc/PID/cmdline in batches then (procs.cache _BATCH_WAIT), and a victim that dies tens
of ms after its exec must still have been read. Not timed: it asserts on the journal entries.
The storm is a bounded loop of /bin/true (a few seconds), stopped by its pid.
"""
from __future__ import annotations

import subprocess
import time
import uuid

from conftest import MESSAGE_ID, kill_in, wait_for_entries

STORM_SECONDS = 6


def test_young_victims_killed_during_an_exec_storm_keep_their_command_lines(memcg, daemon_factory):
    # No periodic scan can help: only the exec events can name these victims.
    daemon = daemon_factory("--process-refresh", "3600").start()
    cg = memcg()
    storm = subprocess.Popen(["timeout", str(STORM_SECONDS), "bash", "-c", "while :; do /bin/true; done"],
                             stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # the storm is on
        victims = []
        for i in range(5):
            # python -S dies at its first big allocation, ~20-50 ms after its exec.
            argv = ["/usr/bin/python3", "-S", "-c", "b = b'x' * (256 << 20)",
                    f"storm-victim-{i}-{uuid.uuid4().hex}", "z" * 1500]
            victims.append((kill_in(cg, argv), argv))
            assert storm.poll() is None, "the exec storm ended before the victims were killed"
    finally:
        if storm.poll() is None:
            storm.terminate()
        storm.wait(timeout=10)
    for pid, argv in victims:
        entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[daemon])
        assert len(entries) == 1, entries
        assert entries[0]["OOM_CMDLINE"] == " ".join(argv)
        assert entries[0]["OOM_CMDLINE_SOURCE"] == "exec-event"
        assert entries[0]["OOM_UNIT"] == cg.unit
    # The storm was one: the daemon's cache reported no lost exec events (ENOBUFS) meanwhile.
    assert "events lost" not in daemon.log.read_text()
