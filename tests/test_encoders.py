"""One encoder per way text leaves the daemon, each tested with the same hostile names: a newline
(with an assignment or a forged log line behind it), a carriage return, NUL, ANSI/OSC escapes,
Slack's <!channel>, line separators, bidi overrides, and bytes that are not UTF-8.

sd_notify goes to a real bound AF_UNIX datagram socket (as python-systemd tests notify()), the
log formatter through Python's logging, JSON through json.loads and str.splitlines (what a
JSON-lines reader does). The journal, syslog, Slack and terminal encoders have theirs in
test_hostile.py, test_sink_syslog.py, test_sink_slack.py and test_history.py; the end-to-end test
with real kills of processes bearing these names is test_hostile.py."""
from __future__ import annotations

import json
import logging
import socket

import pytest

from oom_journal.app import notify
from oom_journal.app.log import OneLineFormatter
from oom_journal.text import json_line, printable

NOT_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")
HOSTILE = ["\nMAINPID=4242\n", "\rSTOPPING=1\r", "a\0READY=1", "\x1b[2J\x1b]0;pwned\x07", "<!channel> <@U1>",
           "x\u2028y\u2029z\x85", "\u202eevil\u202c", NOT_UTF8 + "\nWATCHDOG=trigger", "\x7f\x9b31m"]


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


@pytest.mark.parametrize("name", HOSTILE)
def test_notify_sends_each_value_as_one_printable_line(notify_socket, monkeypatch, name):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # sdnotify reads the socket from the environment
    notifier = notify.Notifier({"NOTIFY_SOCKET": path})
    notifier.notify("READY=1", f"STATUS=last: pid 7 ({name})")
    lines = sock.recv(65536).decode("utf-8").split("\n")
    assert lines[0] == "READY=1" and lines[1].startswith("STATUS=last: pid 7 (") and len(lines) == 2, lines
    assert lines[1].isprintable()
    assert lines[1] == "STATUS=last: pid 7 (" + printable(name) + ")"


def test_notify_refuses_what_is_not_an_assignment():
    with pytest.raises(ValueError):
        notify.encode("STATUS=ok", "\nMAINPID=1")
    with pytest.raises(ValueError):
        notify.encode("status=lower case is no variable")


def test_notify_cuts_a_long_value():
    data = notify.encode("STATUS=" + "x" * 10_000)
    assert len(data) == len("STATUS=") + notify.MAX_VALUE_CHARS * 1 + 2  # "…" is 3 bytes, one x less


@pytest.mark.parametrize("priority_prefix", [True, False])
@pytest.mark.parametrize("name", HOSTILE + ["x\n<0>sshd[1]: Accepted password for root"])
def test_a_log_record_is_one_line_whatever_it_quotes(name, priority_prefix):
    formatter = OneLineFormatter("%(message)s", priority_prefix=priority_prefix)
    record = logging.LogRecord("oom_journal", logging.INFO, __file__, 1, "recorded %s", (name,), None)
    text = formatter.format(record)
    assert len(text.splitlines()) == 1 and text.isprintable(), text
    assert text == ("<6>" if priority_prefix else "") + "recorded " + printable(name)


def test_a_traceback_keeps_its_lines_each_with_the_priority():
    formatter = OneLineFormatter("%(message)s", priority_prefix=True)
    try:
        raise ValueError("bad\n<0>forged")
    except ValueError:
        import sys

        record = logging.LogRecord("oom_journal", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).split("\n")
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines), lines
    assert lines[-1] == "<3>ValueError: bad\\x0a<0>forged"


@pytest.mark.parametrize("name", HOSTILE)
def test_json_is_one_line_that_reads_back_exactly(name):
    doc = {"comm": name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), "pid": 1}
    text = json_line(doc)
    assert len(text.splitlines()) == 1, text  # str.splitlines splits at \x85, \u2028, \u2029 too
    assert "\u202e" not in text and "\u202c" not in text  # nothing a terminal reorders
    assert json.loads(text) == doc
    text.encode("utf-8")  # valid UTF-8


def test_json_never_emits_invalid_utf8_for_a_stray_surrogate():
    text = json_line({"a": "x" + NOT_UTF8, "b": "\ud800"})
    assert json.loads(text) == {"a": "x\\xff\\xfe", "b": "\ud800"}
    text.encode("utf-8")
