"""Userspace killers' lines into the real journald, read by the real daemon (this machine has no
systemd as PID 1, so no real systemd-oomd; earlyoom and nohang are not installed here: the lines are
earlyoom 1.7's and nohang 0.2.0's documented ones, sent by processes with the identity each killer
has: comm `earlyoom` and an exe named earlyoom, comm `nohang`; real killers run in the Debian 12 VM,
tests/test_vm.py). The victims are real processes the cache knows.

Trust: the same line from nobody, with the same comm and exe name, must not make an event
(sources/killers.py); from root it does. Replayed lines pass the same check as real ones: only
root (or the killer's system unit) can send them, and root can kill anything anyway.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import MESSAGE_ID, journal_entries, victim_argv, wait_for_entries
from oom_journal.history.commands import main_list, main_show
from es_standin import StandinElasticsearch
from slack_standin import SlackStandin
from test_history import run, run_json
from test_sinks_e2e import wait_until
from test_trust import AS_NOBODY

SEND = ("import sys, systemd.journal as j\n"
        "for m in sys.argv[2:]: j.send(m, SYSLOG_IDENTIFIER=sys.argv[1])\n")


@pytest.fixture
def killer_bin():
    """A directory nobody can read with `earlyoom` (a copy of the Python interpreter: its exe's
    name and its comm are earlyoom's) and `nohang` (a script: comm nohang, as the real one)."""
    d = tempfile.mkdtemp(prefix="oomj-killers-")
    os.chmod(d, 0o755)
    shutil.copy(os.path.realpath("/usr/bin/python3"), os.path.join(d, "earlyoom"))
    script = os.path.join(d, "nohang")
    with open(script, "w") as f:
        f.write("#!/usr/bin/python3\n" + SEND)
    os.chmod(script, 0o755)
    yield d
    shutil.rmtree(d)


def send(exe: str, identifier: str, *messages, as_nobody=False):
    argv = [exe] + (["-c", SEND] if exe.endswith("earlyoom") else []) + [identifier, *messages]
    # The copied interpreter finds its library by PYTHONHOME (its own path is not /usr/bin).
    env = dict(os.environ, PYTHONHOME="/usr", PYTHONPATH="/usr/lib/python3/dist-packages")
    subprocess.run((AS_NOBODY if as_nobody else []) + argv, check=True, timeout=30, env=env)


def earlyoom_line(pid: int) -> str:
    return f'sending SIGTERM to process {pid} uid 0 "python3": badness 1240, VmRSS 187 MiB'


def nohang_block(pid: int, argv) -> list:
    return ["Victim status (found in 12ms):",
            f"  PID: {pid}, name: python3, state: S (sleeping), EUID: 0, badness: 900, oom_score: 900",
            "  cgroup_v2: /", "  cmdline: " + " ".join(argv)[:60],
            "Implementing a corrective action:", "  Sending SIGTERM to the victim", "The victim died in 0.02s"]


def test_userspace_killers_lines_become_events_and_forgeries_do_not(daemon_factory, killer_bin):
    began_us = time.monotonic_ns() // 1000
    token = uuid.uuid4().hex
    argvs = {name: victim_argv(f"{name}-{token}", 300)[:1] + ["-c", "import time; time.sleep(60)", f"--{name}-{token}"]
             for name in ("forged", "earlyoom", "nohang", "relog")}
    es, slack = StandinElasticsearch().start(), SlackStandin().start()
    d = daemon_factory("--elasticsearch-server", es.url, "--elasticsearch-index", "oom-us",
                       "--slack-webhook", slack.url).start()
    victims = {name: subprocess.Popen(argv) for name, argv in argvs.items()}
    try:
        time.sleep(0.5)  # the cache reads each at its exec
        earlyoom, nohang = os.path.join(killer_bin, "earlyoom"), os.path.join(killer_bin, "nohang")
        pid = {name: p.pid for name, p in victims.items()}
        # nobody: earlyoom's identifier through logger, and through a binary named earlyoom
        subprocess.run(AS_NOBODY + ["logger", "--journald"], check=True, timeout=30,
                       input=f"SYSLOG_IDENTIFIER=earlyoom\nMESSAGE={earlyoom_line(pid['forged'])}\n".encode())
        send(earlyoom, "earlyoom", earlyoom_line(pid["forged"]), as_nobody=True)
        send(nohang, "nohang", *nohang_block(pid["forged"], argvs["forged"]), as_nobody=True)
        # nohang's re-log of a kernel kill: not a kill of its own
        send(nohang, "nohang", f"kmsg: Out of memory: Killed process {pid['relog']} (python3) total-vm:1kB, "
                               "anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:1kB oom_score_adj:0")
        # root, with the killers' identities
        send(earlyoom, "earlyoom", "low memory! at or below SIGTERM limits: mem 50.00%, swap 100.00%",
             earlyoom_line(pid["earlyoom"]))
        send(nohang, "nohang", *nohang_block(pid["nohang"], argvs["nohang"]))
        assert len(journal_entries("SYSLOG_IDENTIFIER=earlyoom", "_UID=65534")) >= 2 or \
            len(wait_for_entries("SYSLOG_IDENTIFIER=earlyoom", "_UID=65534", count=2)) >= 2  # the forgeries are real

        (e,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid['earlyoom']}", writers=[d])
        assert e["OOM_KILLER"] == "earlyoom" and e["OOM_KILLER_MESSAGE"] == earlyoom_line(pid["earlyoom"])
        assert e["OOM_ARGV"] == "\0".join(argvs["earlyoom"]).encode() and e["OOM_CMDLINE_SOURCE"] == "exec-event"
        assert e["OOM_EVENT_ID"].split("-")[1:3] == ["earlyoom", e["OOM_KERNEL_TIMESTAMP_USEC"]]
        (n,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid['nohang']}", writers=[d])
        assert n["OOM_KILLER"] == "nohang" and n["OOM_ARGV"] == "\0".join(argvs["nohang"]).encode()
        # read in journal order: the forged lines and the re-log came before these
        assert journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid['forged']}", writers=[d]) == []
        assert journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid['relog']}", writers=[d]) == []
        # Since this test began: over a boot the suites filled all day, an earlier kernel kill can have
        # had the same pid (pid reuse: seen in CI).
        assert [x for x in journal_entries(f"MESSAGE_ID={MESSAGE_ID}", "OOM_KILLER=kernel", f"OOM_PID={pid['earlyoom']}")
                if int(x["__MONOTONIC_TIMESTAMP"]) >= began_us] == []
        # every sink gets the same document, killer and all
        for entry, killer in ((e, "earlyoom"), (n, "nohang")):
            doc = wait_until(lambda entry=entry: es.docs("oom-us").get(entry["OOM_EVENT_ID"]), what="the document", daemon=d)
            assert doc["killer"] == killer and doc["pid"] == int(entry["OOM_PID"]) and doc["cmdline"] == entry["OOM_CMDLINE"]
            wait_until(lambda entry=entry: [r for r in slack.accepted() if r.payload and
                                            f"pid {entry['OOM_PID']}" in json.dumps(r.payload)], what="Slack", daemon=d)
        assert pid["forged"] not in {x["pid"] for x in es.docs("oom-us").values()}
        assert d.stop() == 0
    finally:
        for p in victims.values():
            p.kill()
            p.wait()
        es.stop()
        slack.stop()

    ours = {e["OOM_EVENT_ID"], n["OOM_EVENT_ID"]}
    listed = {x["event_id"]: x for x in run_json(main_list, "-b", "--killer", "earlyoom")}
    assert e["OOM_EVENT_ID"] in listed and n["OOM_EVENT_ID"] not in listed
    assert listed[e["OOM_EVENT_ID"]]["killer"] == "earlyoom"
    assert ours.isdisjoint(x["event_id"] for x in run_json(main_list, "-b", "--killer", "kernel"))
    rc, out, _ = run(main_show, e["OOM_EVENT_ID"])  # its id has no kill line's µs of its own
    assert rc == 0 and "Killer: earlyoom" in out and earlyoom_line(pid["earlyoom"]) in out, out
    rc, out, _ = run(main_list, "-b", "--killer", "nohang", "--full")
    assert rc == 0 and any(line.split()[4:5] == ["nohang"] and f"--nohang-{token}" in line for line in out.splitlines()), out
    # A first start of the boot (a state directory of its own) reads this boot's log again: those
    # kills are in the journal already, not written twice; a kill after its start is recorded (and,
    # read in order, says the older lines were read by then).
    d2 = daemon_factory().start()
    after = subprocess.Popen(argvs["earlyoom"][:-1] + [f"--after-{token}"])
    try:
        time.sleep(0.5)
        send(os.path.join(killer_bin, "earlyoom"), "earlyoom", earlyoom_line(after.pid))
        (a,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={after.pid}", writers=[d2])
        assert a["OOM_KILLER"] == "earlyoom" and f"--after-{token}".encode() in a["OOM_ARGV"]
    finally:
        after.kill()
        after.wait()
    assert d2.stop() == 0
    assert len(journal_entries(f"OOM_EVENT_ID={e['OOM_EVENT_ID']}", "_UID=0")) == 1
    assert len(journal_entries(f"OOM_EVENT_ID={n['OOM_EVENT_ID']}", "_UID=0")) == 1
