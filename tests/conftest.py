"""Shared test machinery: real journald, real memory cgroups, the real daemon.

Tests that need root, the kernel or journald skip (with the reason) when run by hand without
them, but FAIL when CI is set: in CI they must run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
JOURNALD = "/lib/systemd/systemd-journald"
MESSAGE_ID = "5ce425e9fe7448d7b3e56b5a76b5911a"


def unavailable(reason: str):
    """Skip by hand, fail in CI: a test that cannot run in CI is a broken CI."""
    if IN_CI:
        pytest.fail(f"cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def root():
    if os.geteuid() != 0:
        unavailable("needs root (real OOM kills in a memory cgroup, /dev/kmsg, the process-event connector)")


def _journald_pids():
    out = subprocess.run(["pgrep", "-x", "systemd-journal"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="session")
def journald(root):
    """A running journald that records kernel messages (started here if none runs; see
    ../shared/REAL-COMPONENTS.md: journald runs without systemd as PID 1)."""
    started = None
    if not (_journald_pids() and JOURNAL_SOCKET.exists()):
        if not os.path.exists(JOURNALD):
            unavailable(f"{JOURNALD} is not installed (apt-get install systemd)")
        started = subprocess.Popen([JOURNALD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not JOURNAL_SOCKET.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not JOURNAL_SOCKET.exists():
            started.kill()
            unavailable("systemd-journald did not start")
    # journald must be recording kernel messages for the journal source.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["journalctl", "-k", "-b", "-n", "1", "-q"], capture_output=True, text=True).stdout:
            break
        time.sleep(0.1)
    else:
        unavailable("journald records no kernel messages")
    yield
    # Left running: it holds the journal the later tests and the developer read; it was started
    # by pid in its own session and is no server on any port.


def journal_entries(*matches, boot=True, writers=None) -> list:
    """Entries from journalctl -o json (the user's view), with binary fields as bytes.

    writers: only entries written by these daemons (Daemon objects): another test run on the
    same machine (a developer's, beside CI's) has daemons of its own that record the same kills.
    """
    # --all: fields over 64 KiB would otherwise be shown as null.
    cmd = ["journalctl", "--no-pager", "--all", "-o", "json"] + (["-b"] if boot else []) + list(matches)
    out = subprocess.run(cmd, capture_output=True, check=False).stdout
    entries = []
    for line in out.splitlines():
        entry = json.loads(line)
        for k, v in entry.items():
            if isinstance(v, list) and all(isinstance(x, int) for x in v):
                entry[k] = bytes(v)  # journalctl's form of a binary (non-UTF-8, NUL) field
        if writers is None or _written_by(entry, writers):
            entries.append(entry)
    return entries


def _written_by(entry: dict, writers) -> bool:
    """By one of these daemons: its pid, and after it started (pids repeat within a boot: an
    earlier daemon of the same pid wrote entries of its own, maybe for a victim of the same pid)."""
    for w in writers:
        if entry.get("_PID") == str(w.pid) and int(entry.get("__REALTIME_TIMESTAMP", 0)) >= w.started_us:
            return True
    return False


def wait_for_entries(*matches, count=1, timeout=15.0, writers=None) -> list:
    deadline = time.monotonic() + timeout
    while True:
        entries = journal_entries(*matches, writers=writers)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def remove_cgroup(path: Path, attempts: int = 100) -> None:
    """Kills what is left in a cgroup a test made (only its own processes can be there), then
    removes it; a cgroup is busy for a moment after its last process died."""
    for _ in range(attempts):
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


class MemoryCgroup:
    """A cgroup v1 memory cgroup named like a systemd unit, with a small limit."""

    def __init__(self, limit_mib=32):
        self.unit = f"oomj-test-{uuid.uuid4().hex[:12]}.service"
        self.path = MEMCG_ROOT / "system.slice" / self.unit
        self.created_parent = not self.path.parent.exists()
        self.path.mkdir(parents=True)
        (self.path / "memory.limit_in_bytes").write_text(str(limit_mib << 20))
        self.kernel_path = "/system.slice/" + self.unit  # how the kernel names it

    def run(self, argv, **kwargs) -> subprocess.Popen:
        procs = str(self.path / "cgroup.procs")

        def enter():  # in the child, before exec: the whole process lives in the cgroup
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return subprocess.Popen(argv, preexec_fn=enter, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)

    def remove(self):
        remove_cgroup(self.path)
        if self.created_parent:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass  # another test's cgroup is still in it


@pytest.fixture
def memcg(root):
    if not (MEMCG_ROOT / "memory.limit_in_bytes").exists():
        unavailable("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    made = []

    def make(limit_mib=32):
        cg = MemoryCgroup(limit_mib)
        made.append(cg)
        return cg

    yield make
    for cg in made:
        cg.remove()


VICTIM_SCRIPT = "import sys; b = b'x' * (256 << 20)"


def victim_argv(token: str, extra_len=2100) -> list:
    """A long, unique argv: spaces inside arguments, non-ASCII, 2,000+ characters."""
    return ["/usr/bin/python3", "-c", VICTIM_SCRIPT, f"--token={token}", "an argument with spaces",
            "ünïcødé ✓ 日本", "--padding=" + "p" * extra_len]


def kill_in(cg: MemoryCgroup, argv) -> int:
    """Runs argv in the cgroup, waits for the kernel to kill it; returns its pid."""
    proc = cg.run(argv)
    rc = proc.wait(timeout=30)
    assert rc == -signal.SIGKILL, f"expected an OOM kill (SIGKILL), got exit status {rc}"
    return proc.pid


class Daemon:
    """The real daemon as a user runs it: its console script, with a private NOTIFY_SOCKET."""

    def __init__(self, tmp: Path, args=(), env=None, prefix=()):
        self.tmp = tmp
        self.args = list(args)
        self.prefix = list(prefix)  # e.g. ["unshare", "--net"]: run the daemon under it
        self.env = env or {}
        self.proc = None
        self.messages = []
        self.log = tmp / f"daemon-{uuid.uuid4().hex[:6]}.log"

    def start(self, timeout=30.0):
        sock_path = str(self.tmp / f"notify-{uuid.uuid4().hex[:8]}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sock_path)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, **self.env)
        env.pop("JOURNAL_STREAM", None)
        exe = shutil.which("oom-journal", path=os.path.dirname(sys.executable)) or "oom-journal"
        self.logf = open(self.log, "ab")
        self.started_us = int(time.time() * 1e6)
        # -c /dev/null: never the host's /etc/oom-journal, unless the test gives its own file.
        config = [] if "-c" in self.args else ["-c", "/dev/null"]
        state = [] if "--state-dir" in self.args else ["--state-dir", str(self.tmp / "state")]
        self.proc = subprocess.Popen([*self.prefix, exe, "run", *config, *state] + self.args,
                                     env=env, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        self.wait_for("READY=1", timeout)
        return self

    def wait_idle(self, last_pid=None, timeout=30.0) -> str:
        """Waits until the daemon says nothing is in flight: a STATUS= whose last recorded kill is
        `last_pid` (if given: its entry, and any second write of it, came before that STATUS) and
        every sink "ok" with nothing waiting (no retry can come later). A count taken then is
        final: no fixed sleep needed. (Not the daemon's total: a first start also records kills of
        this boot that no journal entry has yet, e.g. other tests' kills in containers.)"""
        import re

        def idle(line: str) -> bool:
            if not line.startswith("STATUS="):
                return False
            if last_pid is not None and f"last: pid {last_pid} (" not in line:
                return False
            sinks = line.split("; sinks: ", 1)[1].split("; PROBLEM", 1)[0] if "; sinks: " in line else ""
            states = re.findall(r"(\w+): (\w+)((?:, \d+ \w+)*)", sinks)
            return all(state == "ok" and "waiting" not in extra for _, state, extra in states)

        return self.wait_for(idle, timeout)

    def wait_caught_up(self, timeout=60.0) -> None:
        """A first start from the journal reads this boot's kernel log after READY=1, and may record
        (or complete) kills of it that no entry had: wait until it is done, so that the test's own
        kills are the last recorded (wait_idle(last_pid=...); CI, 2026-12-02: the catch-up's
        completions of session 3's lost kills came after the test's kills). No-op for /dev/kmsg."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text(errors="replace")
            if "from the journal" not in text or "kernel log is read up to the entries that came after the start" in text:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon's catch-up did not end within {timeout} s\n{text[-4000:]}")
            time.sleep(0.05)

    def wait_for_status(self, text: str, timeout=10.0) -> str:
        """Waits for a STATUS= notification containing text."""
        return self.wait_for(lambda line: line.startswith("STATUS=") and text in line, timeout)

    def wait_for(self, assignment, timeout=30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
            self.sock.settimeout(0.2)
            try:
                msg = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            self.messages.append(msg)
            lines = msg.split("\n")
            if (any(map(assignment, lines)) if callable(assignment) else assignment in lines):
                return msg
        raise AssertionError(f"no {assignment} within {timeout}s; got {self.messages}\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def drain(self) -> list:
        """Notifications sent so far and not yet read."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return self.messages

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        self.drain()
        self.close()
        return self.proc.returncode

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=15)
        self.close()

    def close(self):
        self.sock.close()
        self.logf.close()


@pytest.fixture
def daemon_factory(tmp_path, journald):
    made = []

    def make(*args, env=None, prefix=()):
        d = Daemon(tmp_path, args, env, prefix)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


class AllSinks:
    """The four sinks' servers, started on loopback: rsyslog and tansu for real, the Elasticsearch
    and Slack stand-ins (none of those can be had here); args() configures a daemon for all four."""

    def __init__(self, tmp: Path):
        from es_standin import StandinElasticsearch
        from kafka_broker import TansuBroker
        from slack_standin import SlackStandin
        from test_sink_syslog import RSYSLOGD, Rsyslog

        if not os.access(RSYSLOGD, os.X_OK):
            pytest.fail(f"{RSYSLOGD} is not installed (scripts/install-deps --test installs it)")
        why = TansuBroker.available()
        if why:
            pytest.fail(why)
        self.slack, self.es = SlackStandin().start(), StandinElasticsearch().start()
        self.syslog, self.broker = Rsyslog(tmp).start(), TansuBroker(tmp).start()
        self.broker.create_topic("oom")

    def args(self) -> list:
        return ["--slack-webhook", self.slack.url, "--elasticsearch-server", self.es.url,
                "--kafka-brokers", self.broker.bootstrap, "--kafka-topic", "oom",
                "--syslog-server", f"127.0.0.1:{self.syslog.port}", "--syslog-proto", "tcp"]

    def stop(self) -> None:
        for server in (self.slack, self.es, self.syslog, self.broker):
            server.stop()


@pytest.fixture
def all_sinks(tmp_path):
    sinks = AllSinks(tmp_path)
    yield sinks
    sinks.stop()
