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
