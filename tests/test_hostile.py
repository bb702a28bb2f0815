"""Hostile processes, for real: what any user can name a process or put in its argv must end up
exact in the journal entry (binary-safe) and inert in the human message."""
from __future__ import annotations

import os
import signal
import uuid

import pytest

from conftest import MESSAGE_ID, wait_for_entries

ALLOC = "b = b'x' * (256 << 20)"


def kill_bytes(cg, argv: list, executable=None) -> int:
    proc = cg.run(argv, executable=executable)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    return proc.pid


@pytest.mark.parametrize("source", ["journal", "kmsg"])
def test_hostile_argv_and_comm_are_exact_and_inert(source, memcg, daemon_factory, tmp_path):
    # The comm is the executable's file name (15 bytes): a newline, ESC, parentheses, invalid UTF-8.
    name = b"x)\n(\x1b[31m\xff y"
    exe = os.path.join(os.fsencode(str(tmp_path)), name)
    os.symlink(b"/usr/bin/python3", exe)
    d = daemon_factory("--source", source).start()
    cg = memcg()
    argv = [exe, b"-c", ALLOC.encode(), b"tok-" + uuid.uuid4().hex.encode(),
            b"new\nline", b"tab\there", b"\x1b]0;pwned\x07\x1b[2J", b"\xff\xfe not utf-8", b"(a) b (", b"",
            b"\nOOM_UNIT=sshd.service\nPRIORITY=0\n_UID=1234",  # a field of its own, if the journal encoder split it
            b"A" * 100_000, b"B" * 100_000]
    pid = kill_bytes(cg, argv)
    (e,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])
    assert e["OOM_ARGV"] == b"\0".join(argv)  # exact, 200 KB, every byte
    assert e["OOM_CMDLINE"] == b" ".join(argv)
    assert e["OOM_ARGC"] == str(len(argv))
    comm = e["OOM_COMM"]
    assert (comm if isinstance(comm, bytes) else comm.encode()) == name[:15]
    message = e["MESSAGE"]
    assert isinstance(message, str) and message.isprintable(), message[:300]
    assert "new\\x0aline" in message and "\\x1b]0;pwned\\x07" in message and "\\xff\\xfe" in message
    assert e["OOM_CMDLINE_SOURCE"] == "exec-event"
    # The journal's encoder: a value with a newline is sent length-prefixed, so it adds no field.
    assert e["OOM_UNIT"] == cg.unit and e["PRIORITY"] == "3" and e["_UID"] == "0"
    assert d.stop() == 0


def test_a_process_that_rewrites_its_argv_is_reported_as_it_was_executed(memcg, daemon_factory):
    """perl's `$0 = ...` overwrites the argv area after exec (what `ps` then shows). oom-journal
    reports the command line as executed, read at the exec event: it says what was run."""
    d = daemon_factory().start()
    cg = memcg()
    token = "rewrite-" + uuid.uuid4().hex
    argv = ["/usr/bin/perl", "-e", '$0 = "innocent"; select(undef, undef, undef, 0.3); my $x = "y" x (256 << 20);', token]
    pid = kill_bytes(cg, argv)
    (e,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])
    assert e["OOM_CMDLINE"] == " ".join(argv)
    assert d.stop() == 0


# Process names (the kernel's comm, at most 15 bytes, set with prctl(PR_SET_NAME) as any user can)
# that once steered the root daemon or would steer a sink: a second sd_notify assignment
# (MAINPID= made systemd's watchdog kill another pid: reproduced), a forged log or syslog line,
# a cleared terminal, a Slack broadcast, a JSON-lines split, bytes that are not UTF-8.
HOSTILE_COMMS = [b"\nMAINPID=4242\n", b"\nSTOPPING=1\n", b"\r\x1b[2J<!channel>", b"\xe2\x80\xa8x\xff\nREADY=1"]
SET_NAME_AND_ALLOC = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, bytes.fromhex(sys.argv[1]), 0, 0, 0); "
                      "import time; time.sleep(0.3); b = b'x' * (256 << 20)")
NOTIFY_VARIABLES = {"READY", "STATUS", "WATCHDOG", "RELOADING", "MONOTONIC_USEC", "STOPPING"}


def test_hostile_process_names_steer_neither_systemd_nor_any_sink(memcg, daemon_factory, all_sinks):
    """Real kills of processes bearing each name, one daemon with all four sinks (rsyslog and tansu
    for real; Elasticsearch and Slack stand-ins, as none can be had here) and a private NOTIFY_SOCKET."""
    import json

    from test_sink_syslog import SD_ID
    from test_sinks_e2e import wait_until

    from oom_journal.text import printable

    slack, es, syslog, broker = all_sinks.slack, all_sinks.es, all_sinks.syslog, all_sinks.broker
    d = daemon_factory(*all_sinks.args()).start()
    cg = memcg()
    pids = {}
    for comm in HOSTILE_COMMS:
        proc = cg.run(["/usr/bin/python3", "-c", SET_NAME_AND_ALLOC, comm.hex()])
        assert proc.wait(timeout=30) == -signal.SIGKILL
        pids[proc.pid] = comm
        (e,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={proc.pid}", writers=[d])
        got = e["OOM_COMM"] if isinstance(e["OOM_COMM"], bytes) else e["OOM_COMM"].encode()
        assert got == comm  # the journal keeps the exact bytes
        assert e["MESSAGE"].isprintable()
        shown = printable(comm.decode("utf-8", "surrogateescape"))
        d.wait_for_status(f"pid {proc.pid} ({shown})")  # STATUS= names it, escaped

    # sd_notify: every line of every datagram is one of the daemon's own assignments.
    for msg in d.drain():
        for line in msg.split("\n"):
            name, _, value = line.partition("=")
            assert name in NOTIFY_VARIABLES and value.isprintable(), repr(msg)
    assert not any(line.startswith(("MAINPID", "STOPPING")) for m in d.messages for line in m.split("\n"))

    want = set(pids)
    # Slack: one message per kill; nothing that pings, nothing raw.
    posts = wait_until(lambda: (lambda got: got if {p for p, _ in got} >= want else None)(
        [(pid, r) for r in slack.accepted() for pid in pids if f"pid {pid}" in json.dumps(r.payload)]),
        what="every kill at Slack", daemon=d)
    for _pid, r in posts:
        assert "<!channel>" not in r.body.decode() and "\x1b" not in json.dumps(r.payload, ensure_ascii=False)
    # Elasticsearch: each bulk body is action/document line pairs; no name broke a line.
    wait_until(lambda: sum(1 for i in es.indices for doc in es.docs(i).values() if doc["pid"] in want) == len(want),
               what="every kill in Elasticsearch", daemon=d)
    for req in es.requests_to("/_bulk"):
        lines = [line for line in req.body.split(b"\n") if line]
        assert len(lines) % 2 == 0 and all(json.loads(line) for line in lines)
    docs = {doc["pid"]: doc for i in es.indices for doc in es.docs(i).values() if doc["pid"] in want}
    for pid, comm in pids.items():
        assert docs[pid]["comm"] == comm.decode("utf-8", "surrogateescape").encode(
            "utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    # Kafka: each message is one JSON document that reads back as the Elasticsearch one.
    messages = wait_until(lambda: (lambda got: got if {x["pid"] for x in got} >= want else None)(
        [json.loads(m[3]) for m in broker.read("oom", len(want), timeout=2, settle=0)
         if json.loads(m[3])["pid"] in want]), what="every kill in Kafka", daemon=d)
    for doc in messages:
        assert doc["comm"] == docs[doc["pid"]]["comm"]
    # Syslog: one record per kill, and no line in rsyslog's file that a name started.
    records = wait_until(lambda: (lambda got: got if len(got) >= len(want) else None)(
        [r for r in syslog.records() if r["parsed"].get(SD_ID, {}).get("pid") in {str(p) for p in want}]),
        what="every kill at rsyslog", daemon=d)
    assert len(records) == len(want)
    for line in syslog.lines():
        assert not line.lstrip().startswith((b"MAINPID", b"STOPPING", b"READY")) and b"\x1b" not in line
    assert d.stop() == 0
