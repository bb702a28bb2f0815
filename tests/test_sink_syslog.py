"""The Syslog sink: records built from hostile events, sent to a REAL rsyslog.

Each rsyslog here is a private instance (Debian's rsyslogd, see ../shared/REAL-COMPONENTS.md):
its own config, work directory and pid file in tmp_path, imtcp + imudp on a free 127.0.0.1 port,
no imuxsock (it never touches /dev/log or the host's rsyslog), started by the test and stopped by
its pid. It writes every record twice: as a text line with the template of REAL-COMPONENTS.md
(to check that one record is one line), and as JSON with the fields rsyslog parsed, including the
structured data as mmpstrucdata (rsyslog's RFC 5424 SD parser) decoded it. The unix transport is
tested against sockets the test binds itself, as python-systemd tests notify().
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from datetime import timezone
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import unavailable
from oom_journal.app import config
from oom_journal.enrich.event import OomEvent, printable
from oom_journal.model import HostInfo
from oom_journal.model import KernelKill
from oom_journal.sinks import configured_sinks
from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery
from oom_journal.sinks.syslog import SyslogSink
from oom_journal.sinks.syslog.format import SD_ID, format_rfc3164, format_rfc5424, sd_params
from oom_journal.sinks.syslog.transport import _Gone, _closed_by_peer, _wait_acknowledged
from oom_journal.sinks.syslog.truncate import DATAGRAM_MAX, SD_MAX, STREAM_MAX, RecordTooLarge

HOST = HostInfo(hostname="web1", boot_id="4b280df657cf4c99b6e230a7c3f459ca", kernel="6.18.44")
EVENT_TIME = 1700000000.25  # 2023-11-14T22:13:20.250000+00:00
PID = 4242  # PROCID: the sender (the daemon); the victim's pid is 1234
OK_ = Delivery(OK)
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


class Lookup:
    def __init__(self, argv, source="exec-event", note=""):
        self.argv, self.source, self.note = argv, source, note


def make_kill(**kw) -> KernelKill:
    base = dict(reason="Memory cgroup out of memory", pid=1234, comm="java", timestamp_us=79928453, seq=881,
                uid=1000, total_vm_kb=3000000, anon_rss_kb=1992294, file_rss_kb=10, shmem_rss_kb=0,
                pgtables_kb=4000, oom_score_adj=0, constraint="CONSTRAINT_MEMCG", global_oom=False,
                oom_memcg="/system.slice/app.service", task_memcg="/system.slice/app.service",
                trigger_comm="java", trigger_gfp_mask="0xcc0(GFP_KERNEL)", trigger_order=0,
                kill_message="Memory cgroup out of memory: Killed process 1234 (java) ...")
    base.update(kw)
    return KernelKill(**base)


def document(argv, timestamp_us=79928453, **kill) -> dict:
    event = OomEvent.build(make_kill(timestamp_us=timestamp_us, **kill), HOST, Lookup(argv), event_time=EVENT_TIME)
    return json.loads(json.dumps(event.document()))  # as the outbox stores it


# What a victim can put in its argv: newline (and a would-be forged record after it), CR, ESC, tab,
# DEL, the three characters SD escapes, non-ASCII, line separator and bidi override, bytes that
# are not UTF-8, an argument with a space; and NUL (not possible inside an argument, for good measure).
HOSTILE_ARGV = [b"/usr/bin/python3", b"-c", b"line1\nline2\r\x00nul\x7fdel",
                b'] " \\ \x1b[31mred\x1b[0m \t tab \x1b]0;title\x07',
                "ünïcødé ✓ 日本 \u2028 \u202e".encode(), b"\xff\xfe",
                b"x\n<13>1 2023-01-01T00:00:00Z evilhost sshd 1 - - Accepted password for root",
                b"x]\n[x@1 a=\"b\"]", b"an argument with spaces"]


def hostile_document(**kw) -> dict:
    return document(HOSTILE_ARGV, comm="ev\nil]\"\\\x1b", **kw)


def expected_params(doc) -> dict:
    """What an RFC 5424 SD parser must give back for each field: its one-line text."""
    return {name: printable(value) for name, value in sd_params(doc)}


def sink_config(server, proto="udp", fmt="rfc5424", facility="daemon", max_size=None):
    """The configuration as the daemon loads it (the real parser and its checks)."""
    extra = ["--syslog-max-size", str(max_size)] if max_size else []
    return config.load(["-c", "/dev/null", "--syslog-server", server, "--syslog-proto", proto,
                        "--syslog-format", fmt, "--syslog-facility", facility] + extra, environ={})


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (rsyslog listens with both)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


# --- a private rsyslog --------------------------------------------------------------------------
class Rsyslog:
    TEMPLATE_TEXT = ("%timereported:::date-rfc3339% %hostname% %app-name% %procid% %msgid% "
                     "%structured-data% %msg%\\n")

    # The same fields as JSON (the property replacer's `json` option escapes a string for JSON),
    # and the SD as mmpstrucdata parsed it (a JSON object, rendered as a string here).
    TEMPLATE_JSON = "".join(
        ["{"] + [f'\\"{key}\\":\\"%{prop}%\\",' for key, prop in (
            ("ts", "timereported:::date-rfc3339,json"), ("host", "hostname:::json"),
            ("app", "app-name:::json"), ("procid", "procid:::json"), ("msgid", "msgid:::json"),
            ("pri", "pri:::json"), ("sd", "structured-data:::json"), ("msg", "msg:::json"))]
        + ['\\"parsed\\":\\"%$!rfc5424-sd:::json%\\"}\\n'])

    def __init__(self, base: Path, max_message_size=None, port=None):
        self.dir = base / f"rsyslog-{uuid.uuid4().hex[:8]}"
        (self.dir / "work").mkdir(parents=True)
        self.port = port or free_port()
        self.text, self.json = self.dir / "out.log", self.dir / "out.json"
        self.pidfile, self.conf = self.dir / "rsyslogd.pid", self.dir / "rsyslog.conf"
        size = f' maxMessageSize="{max_message_size}"' if max_message_size else ""
        self.conf.write_text(f"""
global(workDirectory="{self.dir / 'work'}" net.enableDNS="off"{size})
module(load="imtcp")
module(load="imudp")
module(load="mmpstrucdata")
input(type="imtcp" address="127.0.0.1" port="{self.port}")
input(type="imudp" address="127.0.0.1" port="{self.port}")
template(name="text" type="string" string="{self.TEMPLATE_TEXT}")
template(name="json" type="string" string="{self.TEMPLATE_JSON}")
action(type="mmpstrucdata")
*.* action(type="omfile" file="{self.text}" template="text")
*.* action(type="omfile" file="{self.json}" template="json")
""")
        self.proc = None

    def start(self, timeout=15.0):
        self.log = open(self.dir / "rsyslogd.log", "ab")
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        # Ready when a UDP marker has gone through (imudp and imtcp start together) and TCP connects.
        marker = f"ready-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, (self.dir / "rsyslogd.log").read_text()
                u.sendto(f"<14>1 - - marker - READY - {marker}".encode(), ("127.0.0.1", self.port))
                if self.json.exists() and marker in self.json.read_text():
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"rsyslogd did not start: {(self.dir / 'rsyslogd.log').read_text()}")
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        """By its pid (never by name): SIGTERM, as systemd stops it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        if self.proc:
            self.log.close()

    def records(self) -> list:
        """Our records (app-name oom-journal) as rsyslog parsed them; SD as mmpstrucdata decoded it."""
        out = []
        if not self.json.exists():
            return out
        for line in self.json.read_text(encoding="utf-8").split("\n")[:-1]:  # whole lines only
            rec = json.loads(line)
            if rec["app"] != "oom-journal":
                continue
            rec["parsed"] = json.loads(rec["parsed"]) if rec["parsed"] else {}
            out.append(rec)
        return out

    def lines(self) -> list:
        """Every line of the text output but rsyslog's own messages and the readiness markers."""
        if not self.text.exists():
            return []
        return [line for line in self.text.read_bytes().split(b"\n")[:-1]
                if b" rsyslogd " not in line and b" marker " not in line]

    def wait_records(self, count=1, timeout=10.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if len(records) >= count or time.monotonic() > deadline:
                time.sleep(0.2)  # anything more (a second record, a split) has time to show too
                return self.records()
            time.sleep(0.05)


@pytest.fixture
def rsyslog(tmp_path):
    if not os.access(RSYSLOGD, os.X_OK):
        unavailable(f"{RSYSLOGD} is not installed (apt-get install rsyslog; scripts/install-deps --test)")
    made = []

    def make(max_message_size=None, port=None, start=True):
        r = Rsyslog(tmp_path, max_message_size, port)
        made.append(r)
        return r.start() if start else r

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def sinks():
    made = []

    def make(cfg, **kw):
        sink = SyslogSink(cfg, pid=PID, **kw)
        sink.open()
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


def assert_one_clean_line(server: Rsyslog, needle: str):
    """Exactly one line came out, and it carries no control character: nothing was split, no
    second record forged (rsyslog would show a raw control character it received as #NNN)."""
    lines = server.lines()
    assert len(lines) == 1, lines
    line = lines[0].decode("utf-8")
    assert line.isprintable() or set(c for c in line if not c.isprintable()) <= {"\ufeff"}, repr(line)
    assert "#012" not in line and "#033" not in line and "#000" not in line
    assert needle in line and "evilhost sshd" in line  # the would-be forged record is inside, as text


def assert_record(rec: dict, doc: dict):
    """The record as rsyslog parsed it: header fields, SD params, message."""
    assert rec["app"] == "oom-journal" and rec["msgid"] == "OOM_KILL" and rec["procid"] == str(PID)
    assert rec["host"] == "web1" and rec["pri"] == str(3 * 8 + 3)  # daemon.err
    assert rec["ts"] == "2023-11-14T22:13:20.250000+00:00"  # the kill's time, not the arrival's
    assert rec["sd"].startswith(f"[{SD_ID} ")
    params = rec["parsed"][SD_ID]
    assert params["pid"] == "1234" and params["event_id"] == doc["event_id"]
    assert params["cmdline"] == printable(doc["cmdline"])
    assert "\\x0a" in params["cmdline"] and "]" in params["cmdline"] and "\\x1b" in params["cmdline"]
    assert params == expected_params(doc)  # every field, each exactly
    message = doc["message"]
    assert rec["msg"] == ("\ufeff" + message if not message.isascii() else message)


# --- the record, built ------------------------------------------------------------------------
def test_rfc5424_record_layout():
    doc = document([b"java", b"-Xmx2g", b"-jar", b"app.jar"])
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=DATAGRAM_MAX).decode("ascii")
    head = f"<27>1 2023-11-14T22:13:20.250000+00:00 web1 oom-journal {PID} OOM_KILL [{SD_ID} "
    assert record.startswith(head)
    assert ' schema="1" event_id="4b280df657cf4c99b6e230a7c3f459ca-79928453-1234" ' in record
    assert ' pid="1234" comm="java" cmdline="java -Xmx2g -jar app.jar" ' in record
    assert ' global_oom="false" ' in record and ' trigger.gfp_mask="0xcc0(GFP_KERNEL)" ' in record
    assert "argv." not in record  # cmdline.split(" ") gives the argv back: not sent twice
    assert "container_id" not in record  # null fields are left out, as in the journal
    assert "message=" not in record and "truncated=" not in record
    # An all-ASCII message goes without a BOM (valid MSG-ANY, RFC 5424 §6.4)
    assert record.endswith('"] Memory cgroup out of memory: killed process 1234 (java) of app.service: '
                           "java -Xmx2g -jar app.jar; anon-rss 1.9 GiB")


@pytest.mark.parametrize("facility, pri", [("kern", 3), ("user", 11), ("daemon", 27), ("auth", 35),
                                           ("authpriv", 83), ("local0", 131), ("local7", 187)])
def test_pri_is_facility_and_severity_err(facility, pri):
    sink = SyslogSink(sink_config("127.0.0.1:514", facility=facility), pid=PID)
    assert sink.format_record(document([b"x"])).startswith(f"<{pri}>1 ".encode())


def test_hostile_text_is_one_line_escaped_and_sd_valid():
    doc = hostile_document()
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=DATAGRAM_MAX)
    assert not re.search(rb"[\x00-\x1f\x7f]", record), record  # nothing to split a record on
    text = record.decode("utf-8")
    # Escapes: one-line form first (\x0a), then RFC 5424 §6.3.3 on `"`, `\`, `]`.
    assert 'cmdline="/usr/bin/python3 -c line1\\\\x0aline2\\\\x0d\\\\x00nul\\\\x7fdel \\] \\" \\\\ ' in text
    assert 'comm="ev\\\\x0ail\\]\\"\\\\\\\\x1b"' in text
    assert "\\\\u2028" in text and "\\\\u202e" in text  # line separator and bidi override too
    assert 'argv.8="an argument with spaces"' in text  # an argument with a space: argv is sent
    assert parse_rfc5424(record)[1] == expected_params(doc)
    # A non-ASCII message is UTF-8 and starts with the BOM (RFC 5424 §6.4)
    assert b"] \xef\xbb\xbfMemory cgroup" in record


def test_rfc3164_record():
    sink = SyslogSink(sink_config("127.0.0.1:514", fmt="rfc3164", facility="local3"), pid=PID, tz=timezone.utc)
    record = sink.format_record(hostile_document()).decode()
    assert record.startswith(f"<155>Nov 14 22:13:20 web1 oom-journal[{PID}]: Memory cgroup out of memory: "
                             "killed process 1234 (ev\\x0ail]\"\\\\x1b) of app.service: /usr/bin/python3 -c line1\\x0a")
    assert record.isprintable()
    doc = document([b"x"])
    doc["time"] = "2023-01-05T01:02:03.000000+00:00"
    assert sink.format_record(doc).startswith(b"<155>Jan  5 01:02:03 web1 ")  # day padded with a space


def test_parameter_names_are_valid_and_hostname_printusascii():
    doc = document([b"x"])
    doc["a very long name with = and ] and \" in it, longer than 32"] = "v"
    doc["hostname"] = "bad host\nname"
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=DATAGRAM_MAX).decode()
    assert " bad_host_name oom-journal " in record
    names = list(parse_rfc5424(record.encode())[1])
    assert all(1 <= len(n) <= 32 and not re.search(r'[= \]"]', n) and n.isascii() for n in names), names


def test_a_long_command_line_is_shortened_to_the_datagram_bound_and_stays_valid():
    big = b"-Dx=" + b'a]"\\\n' * 4000  # 20,000 characters that all need escaping: 48 KB escaped
    doc = document([b"java", big, b"two words"])
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=DATAGRAM_MAX)
    assert DATAGRAM_MAX - 5 <= len(record) <= DATAGRAM_MAX  # cut between escapes, just under the bound
    header, params, msg = parse_rfc5424(record)
    assert params["truncated"] == "argv,cmdline"
    assert not any(n.startswith("argv.") for n in params)
    full = printable(doc["cmdline"])
    assert full.startswith(params["cmdline"]) and len(params["cmdline"]) > 3000
    assert params["pid"] == "1234" and params["event_id"] == doc["event_id"]
    assert msg == doc["message"]  # the message (2048 characters of command line) is whole
    # Over TCP the command line goes whole, but not twice: with argv (another 48 KB) the SD would
    # be over SD_MAX, so argv is dropped
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=STREAM_MAX)
    params = parse_rfc5424(record)[1]
    assert params["cmdline"] == full and params["truncated"] == "argv"


def test_the_structured_data_stays_within_rsyslogs_uint16_length():
    doc = document([b"x" * (1 << 20)])  # 1 MiB: more than the kernel lets one argument be
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=STREAM_MAX)
    sd = record[record.index(b"[" + SD_ID.encode()):record.index(b"] ") + 1]
    assert SD_MAX - 5 <= len(sd) <= SD_MAX
    _, params, msg = parse_rfc5424(record)
    assert params["truncated"] == "cmdline" and msg == doc["message"]


def test_the_message_is_cut_when_the_command_line_alone_is_not_enough():
    doc = document([b"x" * 5000])
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=1800)
    assert len(record) <= 1800
    _, params, msg = parse_rfc5424(record)
    assert params["truncated"] == "cmdline,message" and params["cmdline"] == ""
    assert msg.endswith("…") and doc["message"].startswith(msg[:-1])
    with pytest.raises(RecordTooLarge):
        format_rfc5424(doc, facility=3, procid=PID, max_bytes=300)
    record = format_rfc3164(doc, facility=3, procid=PID, max_bytes=200)
    assert len(record) <= 200 and record.decode().endswith("…")


@settings(max_examples=300, deadline=None)
@given(argv=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
       comm=st.text(max_size=15), max_bytes=st.sampled_from([1500, 3000, DATAGRAM_MAX]))
def test_any_victim_gives_one_valid_record_within_the_bound(argv, comm, max_bytes):
    doc = document(argv, comm=comm)
    record = format_rfc5424(doc, facility=3, procid=PID, max_bytes=max_bytes)
    assert len(record) <= max_bytes
    assert not re.search(rb"[\x00-\x1f\x7f]", record)
    _, params, _ = parse_rfc5424(record)
    expected = expected_params(doc)
    if "truncated" not in params:
        assert params == expected
    else:
        for name, value in params.items():
            if name != "truncated":
                assert expected[name].startswith(value), name


def parse_rfc5424(record: bytes):
    """A strict parser of RFC 5424 §6 (ABNF) for one SD element: (header, params, msg)."""
    m = re.match(rb"<(\d{1,3})>1 (\S+) ([\x21-\x7e]{1,255}) ([\x21-\x7e]{1,48}) ([\x21-\x7e]{1,128}) "
                 rb"([\x21-\x7e]{1,32}) ", record)
    assert m, record[:200]
    rest = record[m.end():].decode("utf-8")
    assert rest.startswith("[" + SD_ID)
    i, params = len(SD_ID) + 1, {}
    while rest[i] == " ":
        name_end = rest.index("=", i)
        name = rest[i + 1:name_end]
        assert 1 <= len(name) <= 32 and not re.search(r'[ \]"]', name) and name.isascii(), name
        assert rest[name_end + 1] == '"'
        j, value = name_end + 2, []
        while rest[j] != '"':
            if rest[j] == "\\" and rest[j + 1] in '"\\]':
                value.append(rest[j + 1])
                j += 2
            else:
                assert rest[j] not in '"]', (name, rest[j - 20:j + 20])  # unescaped in a value
                value.append(rest[j])
                j += 1
        assert name not in params
        params[name] = "".join(value)
        i = j + 1
    assert rest[i] == "]"
    msg = rest[i + 1:]
    if msg:
        assert msg[0] == " "
        msg = msg[1:]
        if msg.startswith("\ufeff"):
            msg = msg[1:]
        else:
            assert msg.isascii()  # only an ASCII message may go without the BOM
    return m.groups(), params, msg


# --- a real rsyslog -------------------------------------------------------------------------------
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_hostile_event_arrives_as_one_record_parsed_by_rsyslog(rsyslog, sinks, proto):
    server = rsyslog()
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", proto))
    doc = hostile_document()
    assert sink.deliver([doc]) == [OK_]
    records = server.wait_records(1)
    assert len(records) == 1, records
    assert_record(records[0], doc)
    assert_one_clean_line(server, doc["event_id"])


def test_rfc3164_over_udp_arrives_with_the_message(rsyslog, sinks):
    server = rsyslog()
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "udp", "rfc3164"))
    doc = hostile_document()
    assert sink.deliver([doc]) == [OK_]
    (rec,) = server.wait_records(1)
    assert rec["app"] == "oom-journal" and rec["procid"] == str(PID) and rec["host"] == "web1"
    assert rec["pri"] == "27" and rec["msg"].strip() == doc["message"]
    assert_one_clean_line(server, doc["message"])


def test_a_batch_arrives_in_order(rsyslog, sinks):
    server = rsyslog()
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "tcp"))
    docs = [document([b"prog", f"--n={n}".encode()], timestamp_us=1000 + n) for n in range(50)]
    assert sink.deliver(docs) == [OK_] * 50
    records = server.wait_records(50)
    assert [r["parsed"][SD_ID]["event_id"] for r in records] == [d["event_id"] for d in docs]


def big_document(chars: int) -> dict:
    """A command line of `chars` characters, some of each kind that needs escaping, no spaces."""
    body = 'ab]"\\\n\x1bü' + "x" * 92  # 100 characters, 112 octets once escaped
    arg = (body * (chars // 100 + 1))[: chars - len("/usr/bin/python3 -c ")]
    return document([b"/usr/bin/python3", b"-c", arg.encode()])


def test_a_long_command_line_arrives_whole_over_tcp(rsyslog, sinks):
    server = rsyslog(max_message_size="128k")  # rsyslog's default (8k) would cut it: see the sink
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "tcp", max_size=200000))
    doc = big_document(54_000)  # 60 KB once escaped: the most the SD can hold whole, about
    assert sink.deliver([doc]) == [OK_]
    (rec,) = server.wait_records(1)
    params = rec["parsed"][SD_ID]
    assert params["cmdline"] == printable(doc["cmdline"]) and "truncated" not in params
    assert_record(rec, doc)
    assert len(server.lines()) == 1


def test_a_128k_command_line_over_tcp_is_cut_to_what_rsyslog_parses(rsyslog, sinks):
    """rsyslog keeps the SD's length in 16 bits: an SD over 65535 octets would arrive mangled
    and unparsed. A 128 KiB command line arrives as one valid record, its cmdline cut, marked."""
    server = rsyslog(max_message_size="128k")
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "tcp", max_size=200000))
    doc = big_document(128 << 10)
    assert len(doc["cmdline"]) == 128 << 10
    assert sink.deliver([doc]) == [OK_]
    (rec,) = server.wait_records(1)
    params = rec["parsed"][SD_ID]
    assert params["truncated"] == "cmdline"
    assert printable(doc["cmdline"]).startswith(params["cmdline"]) and len(params["cmdline"]) > 50_000
    assert params["pid"] == "1234" and params["kernel_timestamp_us"] == "79928453"  # all after the cut too
    assert SD_MAX - 5 <= len(rec["sd"].encode()) <= SD_MAX
    assert rec["msg"] == "\ufeff" + doc["message"] and rec["msgid"] == "OOM_KILL"
    assert len(server.lines()) == 1  # one frame, one record: no split, no second record


def test_by_default_a_tcp_record_fits_a_default_rsyslog(rsyslog, sinks):
    """--syslog-max-size defaults to 8096: a default rsyslog would split a longer TCP frame and
    parse its rest, the victim's command line, as a second (forged) record."""
    server = rsyslog()
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "tcp"))
    doc = big_document(128 << 10)
    assert sink.deliver([doc]) == [OK_]
    (rec,) = server.wait_records(1)
    assert "cmdline" in rec["parsed"][SD_ID]["truncated"]
    assert len(server.lines()) == 1


def test_a_128k_command_line_over_udp_is_shortened_and_a_default_rsyslog_takes_it_whole(rsyslog, sinks):
    server = rsyslog()  # rsyslog's default maxMessageSize: the datagram bound is chosen for it
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "udp"))
    doc = big_document(128 << 10)
    assert DATAGRAM_MAX - 10 <= len(sink.format_record(doc)) <= DATAGRAM_MAX
    assert sink.deliver([doc]) == [OK_]
    (rec,) = server.wait_records(1)
    params = rec["parsed"][SD_ID]
    assert params["truncated"] == "cmdline"
    assert printable(doc["cmdline"]).startswith(params["cmdline"]) and len(params["cmdline"]) > 3000
    assert params["pid"] == "1234" and params["kernel_timestamp_us"] == "79928453"  # all after the cut too
    assert rec["msg"] == "\ufeff" + doc["message"]  # whole, to its last word
    assert rec["msg"].endswith("; anon-rss 1.9 GiB")
    assert len(server.lines()) == 1


def test_tcp_reconnects_after_rsyslog_restarts_and_loses_nothing(rsyslog, sinks):
    server = rsyslog()
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "tcp"))
    first, second = document([b"one"], timestamp_us=1), document([b"two"], timestamp_us=2)
    assert sink.deliver([first]) == [OK_]
    assert [r["parsed"][SD_ID]["event_id"] for r in server.wait_records(1)] == [first["event_id"]]
    server.stop()
    again = rsyslog(port=server.port)  # the same port, a new process: the old connection is dead
    outcomes = sink.deliver([second])
    retries = 0
    while outcomes[0].outcome == RETRY and retries < 1:
        retries += 1
        outcomes = sink.deliver([second])
    assert outcomes == [OK_], outcomes  # after at most one RETRY
    (rec,) = again.wait_records(1)  # OK means it arrived: never OK while lost
    assert rec["parsed"][SD_ID]["event_id"] == second["event_id"]


def test_tcp_server_gone_is_retry_never_ok(rsyslog, sinks):
    server = rsyslog()
    sink = sinks(sink_config(f"127.0.0.1:{server.port}", "tcp"))
    assert sink.deliver([document([b"one"], timestamp_us=1)]) == [OK_]
    server.stop()  # FIN to our connection; a write would still "succeed" locally
    docs = [document([b"two"], timestamp_us=2), document([b"three"], timestamp_us=3)]
    started = time.monotonic()
    outcomes = sink.deliver(docs)
    assert time.monotonic() - started < 2
    assert [o.outcome for o in outcomes] == [RETRY, RETRY], outcomes
    assert "refused" in outcomes[0].error and str(server.port) in outcomes[0].error


def test_tcp_server_down_is_retry_quickly(sinks):
    port = free_port()  # nothing listens
    sink = sinks(sink_config(f"127.0.0.1:{port}", "tcp"))
    started = time.monotonic()
    outcomes = sink.deliver([document([b"x"], timestamp_us=n) for n in range(5)])
    assert time.monotonic() - started < 2
    assert [o.outcome for o in outcomes] == [RETRY] * 5
    assert outcomes[0].error == f"tcp 127.0.0.1:{port}: connection refused"
    assert sink.probe() == f"tcp 127.0.0.1:{port}: connection refused"


def test_tcp_server_that_never_reads_is_retry_within_the_timeout(sinks):
    """A server that accepts and never reads: the write blocks once the buffers are full, and
    what was written is never acknowledged as read. Bounded by the timeout, all RETRY."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        sink = sinks(sink_config(f"127.0.0.1:{listener.getsockname()[1]}", "tcp"), timeout=1.5)
        docs = [document([b"x" * 60_000], timestamp_us=n) for n in range(100)]  # 6 MB: over the buffers
        started = time.monotonic()
        outcomes = sink.deliver(docs)
        assert time.monotonic() - started < 3
        assert {o.outcome for o in outcomes} == {RETRY}
        assert "timed out" in outcomes[0].error
    finally:
        for conn, _ in accepted:
            conn.close()
        listener.close()


def tcp_pair():
    """A connected TCP pair on 127.0.0.1: (our end, the server's end)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    return ours, theirs


def test_connection_check_sees_what_the_server_did():
    ours, theirs = tcp_pair()
    with ours, theirs:
        assert _closed_by_peer(ours) is None  # open, nothing happened
        theirs.sendall(b"chatter")  # a syslog server does not talk: discarded, still open
        time.sleep(0.05)
        assert _closed_by_peer(ours) is None and _closed_by_peer(ours) is None
        theirs.shutdown(socket.SHUT_WR)  # FIN, as rsyslog stopping
        time.sleep(0.05)
        assert _closed_by_peer(ours) == "closed by the server"
    ours, theirs = tcp_pair()
    with ours:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()  # RST
        time.sleep(0.05)
        assert _closed_by_peer(ours) == "connection reset by peer"


def test_acknowledgement_wait():
    ours, theirs = tcp_pair()
    with ours, theirs:
        ours.sendall(b"x" * 1000)
        _wait_acknowledged(ours, time.monotonic() + 2)  # the peer's kernel has it: returns
    with socket.socket() as listener:  # a peer whose window is full: never acknowledged
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
        with ours, theirs:
            ours.setblocking(False)
            try:
                while True:
                    ours.send(b"x" * 65536)
            except BlockingIOError:
                pass
            started = time.monotonic()
            with pytest.raises(socket.timeout):
                _wait_acknowledged(ours, started + 0.5)
            assert 0.4 < time.monotonic() - started < 1.5
            # The server resets the connection: the count of unacknowledged octets stays as it
            # was, yet the wait ends at once (not at the deadline) with the reason.
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            theirs.close()
            started = time.monotonic()
            with pytest.raises(_Gone, match="connection reset by peer"):
                _wait_acknowledged(ours, started + 5)
            assert time.monotonic() - started < 0.5


def test_tcp_never_writes_on_a_connection_the_server_has_finished(sinks):
    """The server half-closes the first connection (FIN) but would still read it: the sink must
    see the FIN before writing and use a new connection, so the first one receives nothing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    received = {1: bytearray(), 2: bytearray()}
    conns = []

    def serve():
        for n in (1, 2):
            conn, _ = listener.accept()
            conns.append(conn)
            if n == 1:
                conn.shutdown(socket.SHUT_WR)
            threading.Thread(target=lambda c=conn, k=n: [received[k].extend(b) for b in iter(lambda: c.recv(65536), b"")],
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        sink = sinks(sink_config(f"127.0.0.1:{listener.getsockname()[1]}", "tcp"))
        assert sink.probe() is None  # connection 1, kept
        time.sleep(0.1)  # its FIN arrives
        doc = document([b"after-fin"])
        assert sink.deliver([doc]) == [OK_]
        time.sleep(0.1)
        record = sink.format_record(doc)
        assert bytes(received[1]) == b"" and bytes(received[2]) == b"%d %s" % (len(record), record)
    finally:
        for conn in conns:
            conn.close()
        listener.close()


def test_udp_refused_by_icmp_is_retry(sinks):
    """Nobody listens: the first datagram goes (UDP cannot tell), the ICMP port unreachable it
    draws makes the next send fail: that record is RETRY, not OK."""
    port = free_port()
    sink = sinks(sink_config(f"127.0.0.1:{port}", "udp"))
    assert sink.deliver([document([b"one"])]) == [OK_]
    time.sleep(0.05)
    (outcome,) = sink.deliver([document([b"two"])])
    assert outcome.outcome == RETRY and outcome.error == f"udp 127.0.0.1:{port}: connection refused"


def test_probe(rsyslog, sinks, tmp_path):
    server = rsyslog()
    assert sinks(sink_config(f"127.0.0.1:{server.port}", "tcp")).probe() is None
    assert sinks(sink_config(f"127.0.0.1:{server.port}", "udp")).probe().startswith("UDP: not checkable")
    missing = tmp_path / "no-such-socket"
    assert sinks(sink_config(str(missing), "unix")).probe() == f"unix {missing}: no such file or directory"
    assert server.records() == []  # a probe sends no event


def test_describe_and_configured():
    cfg = sink_config("logs.example:6514", "tcp", facility="local4")
    assert [type(s) for s in configured_sinks(cfg)] == [SyslogSink]
    assert SyslogSink(cfg).describe() == "syslog rfc5424 over tcp to logs.example:6514 (facility local4)"
    assert configured_sinks(config.load(["-c", "/dev/null"], environ={})) == []
    assert SyslogSink.name == "syslog" and SyslogSink.option == "--syslog-server"


def test_dns_failure_is_retry(sinks):
    sink = sinks(sink_config("no-such-host.invalid:514", "udp"))
    (outcome,) = sink.deliver([document([b"x"])])
    assert outcome.outcome == RETRY and "no-such-host.invalid" in outcome.error


def test_a_record_that_can_never_fit_fails_and_the_rest_go(sinks):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    try:
        sink = sinks(sink_config(f"127.0.0.1:{receiver.getsockname()[1]}", "udp"), datagram_max=900)
        small = {"event_id": "e1", "time": "2023-11-14T22:13:20+00:00", "hostname": "h", "message": "m"}
        huge = dict(small, event_id="e2", **{f"field_{n}": n for n in range(200)})  # names alone: over 900
        outcomes = sink.deliver([huge, small])
        assert outcomes[0].outcome == FAILED and "900" in outcomes[0].error
        assert outcomes[1] == OK_
        assert b'event_id="e1"' in receiver.recv(65536)
    finally:
        receiver.close()


# --- unix sockets -------------------------------------------------------------------------------
def test_unix_datagram_socket(sinks, tmp_path):
    path = str(tmp_path / "log")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    try:
        sink = sinks(sink_config(path, "unix", "rfc3164"))
        assert sink.probe() is None
        docs = [hostile_document(), big_document(128 << 10)]
        assert sink.deliver(docs) == [OK_, OK_]
        first, second = receiver.recv(1 << 20), receiver.recv(1 << 20)
        assert first == sink.format_record(docs[0]) and first.startswith(b"<27>Nov 14 ")
        assert f"oom-journal[{PID}]: ".encode() + docs[0]["message"].encode() in first
        assert second == sink.format_record(docs[1]) and len(second) <= DATAGRAM_MAX
        assert second.endswith(b"; anon-rss 1.9 GiB")
    finally:
        receiver.close()


def test_unix_datagram_receiver_restarts(sinks, tmp_path):
    """A syslog daemon restarts and binds /dev/log anew: the connected socket is refused; the
    sink connects again (once) in the same call."""
    path = str(tmp_path / "log")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    sink = sinks(sink_config(path, "unix"))
    assert sink.deliver([document([b"one"])]) == [OK_]
    receiver.close()
    os.unlink(path)
    assert sink.deliver([document([b"lost"])])[0].outcome == RETRY  # nobody there: not OK
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    try:
        assert sink.deliver([document([b"two"])]) == [OK_]
        assert b'cmdline="two"' in receiver.recv(65536)
    finally:
        receiver.close()


def test_unix_stream_socket_records_end_with_nul(sinks, tmp_path):
    path = str(tmp_path / "log")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    received = bytearray()

    def serve():
        conn, _ = listener.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    reader = threading.Thread(target=serve, daemon=True)
    reader.start()
    try:
        sink = sinks(sink_config(path, "unix"))
        docs = [hostile_document(), document([b"second"])]
        assert sink.deliver(docs) == [OK_, OK_]
        sink.close()
        reader.join(5)
        assert bytes(received) == sink.format_record(docs[0]) + b"\0" + sink.format_record(docs[1]) + b"\0"
    finally:
        listener.close()


