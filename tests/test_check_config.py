"""`oom-journal check-config` and the daemon: each bad option exits 78 with ONE stderr line naming it.

Table-driven, running the real console script (as earlyoom's testsuite runs its binary).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

EXE = shutil.which("oom-journal", path=os.path.dirname(sys.executable)) or "oom-journal"


def run(args, env=None, conf=None, tmp_path=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OOM_JOURNAL_") and k != "LOGGING_LEVEL"}
    environ.update(env or {})
    return subprocess.run([EXE] + args, capture_output=True, text=True, env=environ, timeout=60)


CASES = [
    # (arguments, config file text, environment, exit code, what stderr must name)
    (["--syslog-proto", "carrier-pigeon"], None, {}, 78, "--syslog-proto"),
    (["--syslog-server", "localhost"], None, {}, 78, "--syslog-server"),
    (["--syslog-server", "127.0.0.1:99999"], None, {}, 78, "--syslog-server"),
    (["--syslog-proto", "unix", "--syslog-server", "localhost:514"], None, {}, 78, "--syslog-server"),
    (["--syslog-format", "json"], None, {}, 78, "--syslog-format"),
    (["--syslog-facility", "nope"], None, {}, 78, "--syslog-facility"),
    (["--slack-webhook", "not a url"], None, {}, 78, "--slack-webhook"),
    (["--slack-webhook", "ftp://hooks.example/x"], None, {}, 78, "--slack-webhook"),
    (["--slack-channel", "#ops"], None, {}, 78, "--slack-webhook"),
    (["--kafka-brokers", "localhost:9092"], None, {}, 78, "--kafka-topic"),
    (["--kafka-topic", "oom"], None, {}, 78, "--kafka-brokers"),
    (["--kafka-brokers", "localhost", "--kafka-topic", "oom"], None, {}, 78, "--kafka-brokers"),
    (["--kafka-brokers", "h:1", "--kafka-topic", "bad topic"], None, {}, 78, "--kafka-topic"),
    (["--kafka-brokers", "h:1", "--kafka-topic", "t", "--kafka-option", "novalue"], None, {}, 78, "--kafka-option"),
    (["--elasticsearch-server", "es:9200"], None, {}, 78, "--elasticsearch-server"),
    (["--elasticsearch-server", "http://es:9200", "--elasticsearch-user", "u"], None, {}, 78, "--elasticsearch-password"),
    (["--elasticsearch-server", "http://es:9200", "--elasticsearch-api-key", "k", "--elasticsearch-user", "u",
      "--elasticsearch-password", "p"], None, {}, 78, "--elasticsearch-api-key"),
    (["--elasticsearch-server", "http://es:9200", "--elasticsearch-ca-file", "/nonexistent"], None, {}, 78, "--elasticsearch-ca-file"),
    (["--elasticsearch-server", "http://es:9200", "--elasticsearch-index", "OOM"], None, {}, 78, "--elasticsearch-index"),
    (["--elasticsearch-server", "http://es:9200", "--elasticsearch-verify-tls", "maybe"], None, {}, 78, "--elasticsearch-verify-tls"),
    (["--source", "dmesg"], None, {}, 78, "--source"),
    (["--output", "printer"], None, {}, 78, "--output"),
    (["--process-refresh", "0"], None, {}, 78, "--process-refresh"),
    (["--process-refresh", "soon"], None, {}, 78, "--process-refresh"),
    (["--cache-max-processes", "5"], None, {}, 78, "--cache-max-processes"),
    (["--cache-max-bytes", "12 parsecs"], None, {}, 78, "--cache-max-bytes"),
    (["--log-level", "loud"], None, {}, 78, "--log-level"),
    (["--outbox-max-bytes", "10K"], None, {}, 78, "--outbox-max-bytes"),
    ([], "outbox-max-bytes = plenty\n", {}, 78, "--outbox-max-bytes"),
    (["--no-such-option"], None, {}, 78, "--no-such-option"),
    ([], "syslog-proto = carrier-pigeon\n", {}, 78, "--syslog-proto"),
    ([], "no-such-key = 1\n", {}, 78, "no-such-key"),
    ([], None, {"OOM_JOURNAL_SYSLOG_PROTO": "carrier-pigeon"}, 78, "--syslog-proto"),
    ([], None, {"OOM_JOURNAL_NO_SUCH": "1"}, 78, "OOM_JOURNAL_NO_SUCH"),
    ([], None, {"LOGGING_LEVEL": "loud"}, 78, "--log-level"),
    (["-c", "/nonexistent/oom-journal.conf"], None, {}, 78, "--config"),
    # Valid ones exit 0.
    ([], None, {}, 0, None),
    (["--syslog-server", "127.0.0.1:514", "--syslog-proto", "tcp"], None, {}, 0, None),
    ([], "syslog-server = 127.0.0.1:514\nsyslog-proto = tcp\nkafka-brokers = a:1,b:2\nkafka-topic = oom\n"
         "kafka-option = [security.protocol=SASL_SSL, sasl.mechanism=PLAIN, sasl.username=u, sasl.password=p]\n", {}, 0, None),
    ([], None, {"LOGGING_LEVEL": "DEBUG", "OOM_JOURNAL_SOURCE": "kmsg"}, 0, None),
]


@pytest.mark.parametrize("args,conf,env,code,names", CASES)
def test_check_config_exit_status(tmp_path, args, conf, env, code, names):
    if conf is not None:
        path = tmp_path / "oom-journal.conf"
        path.write_text(conf)
        args = ["-c", str(path)] + args
    elif "-c" not in args:
        args = ["-c", "/dev/null"] + args
    r = run(["check-config"] + args, env=env)
    assert r.returncode == code, r.stderr
    if code == 78:
        lines = r.stderr.splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("oom-journal: ") and names in lines[0], lines[0]
    else:
        assert r.stderr == ""
        assert "# configuration OK" in r.stdout


def test_outbox_max_bytes_is_a_size_per_sink_64m_by_default(tmp_path):
    r = run(["check-config", "-c", "/dev/null"])
    assert r.returncode == 0, r.stderr
    assert "outbox-max-bytes = 67108864" in r.stdout.splitlines()
    conf = tmp_path / "oom-journal.conf"
    conf.write_text("outbox-max-bytes = 256M\n")
    r = run(["check-config", "-c", str(conf)])
    assert r.returncode == 0 and "outbox-max-bytes = 268435456" in r.stdout.splitlines(), r.stdout + r.stderr
    r = run(["check-config", "-c", "/dev/null"], env={"OOM_JOURNAL_OUTBOX_MAX_BYTES": "1G"})
    assert "outbox-max-bytes = 1073741824" in r.stdout.splitlines()


def test_the_daemon_itself_exits_78_naming_the_option():
    r = run(["run", "-c", "/dev/null", "--syslog-proto", "carrier-pigeon"])
    assert r.returncode == 78
    assert r.stderr.strip().splitlines() == ["oom-journal: --syslog-proto: must be one of udp, tcp, unix, not 'carrier-pigeon'"]


def test_config_precedence_conf_d_env_flag(tmp_path):
    etc = tmp_path / "etc"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "oom-journal.conf").write_text("source = kmsg\nprocess-refresh = 7\nexit-grace = 9\n")
    (etc / "conf.d" / "50-local.conf").write_text("process-refresh = 8\n")
    from oom_journal.app import config

    ns = config.load([], environ={"OOM_JOURNAL_EXIT_GRACE": "11"}, config_dir=str(etc))
    assert (ns.source, ns.process_refresh, ns.exit_grace) == ("kmsg", 8.0, 11.0)
    ns = config.load(["--exit-grace", "12"], environ={"OOM_JOURNAL_EXIT_GRACE": "11"}, config_dir=str(etc))
    assert ns.exit_grace == 12.0


def test_check_config_masks_secrets(tmp_path):
    hook = "https://hooks.slack.com/services/T0/B0/SECRETSECRET"
    r = run(["check-config", "-c", "/dev/null", "--slack-webhook", hook, "--elasticsearch-server",
             "http://es:9200", "--elasticsearch-user", "u", "--elasticsearch-password", "hunter2"])
    assert r.returncode == 0, r.stderr
    assert "SECRETSECRET" not in r.stdout + r.stderr and "hunter2" not in r.stdout + r.stderr
    assert "slack-webhook = https://hooks.slack.com/****" in r.stdout


def test_shipped_default_config_is_valid():
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "config" / "oom-journal.conf"
    r = run(["check-config", "-c", str(conf)])
    assert r.returncode == 0, r.stderr


def test_secret_in_a_file_others_can_read_is_warned_about(tmp_path):
    conf = tmp_path / "oom-journal.conf"
    conf.write_text("slack-webhook = https://hooks.slack.com/services/T0/B0/SECRETSECRET\n"
                    "kafka-brokers = k:9092\nkafka-topic = oom\nkafka-option = [sasl.password=hunter2, client.id=x]\n")
    conf.chmod(0o644)
    r = run(["check-config", "-c", str(conf)])
    assert r.returncode == 0, r.stderr
    assert f"# warning: {conf} holds a secret and is readable by users other than root: chmod 600 {conf}" in r.stdout
    assert "SECRETSECRET" not in r.stdout and "hunter2" not in r.stdout
    assert "sasl.password=****" in r.stdout and "client.id=x" in r.stdout
    r = run(["check-config", "-c", "/dev/null", "--elasticsearch-server", "http://u:hunter2@es:9200"])
    assert r.returncode == 0 and "hunter2" not in r.stdout and "http://u:****@es:9200" in r.stdout
    r = run(["check-config", "-c", "/dev/null", "--elasticsearch-server", "ftp://u:hunter2@es:9200"])
    assert r.returncode == 78 and "hunter2" not in r.stderr
    conf.chmod(0o600)
    r = run(["check-config", "-c", str(conf)])
    assert "warning" not in r.stdout


@pytest.mark.parametrize("module,args,option,package", [
    ("requests", ["--slack-webhook", "https://hooks.slack.com/services/T0/B0/X"], "--slack-webhook", "python3-requests"),
    ("elasticsearch", ["--elasticsearch-server", "http://127.0.0.1:9"], "--elasticsearch-server", "python3-elasticsearch"),
    ("confluent_kafka", ["--kafka-brokers", "127.0.0.1:9", "--kafka-topic", "t"], "--kafka-brokers",
     "python3-confluent-kafka"),
])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_missing_sink_library_exits_78_naming_the_package(tmp_path, module, args, option, package, command):
    """A module that cannot be imported, as on a host without the package: a directory earlier on
    PYTHONPATH holds a module of that name that raises ImportError."""
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / f"{module}.py").write_text(f"raise ImportError({'No module named ' + module!r})\n")
    extra = ["--state-dir", str(tmp_path / "state")] if command == "run" else []
    r = run([command, "-c", "/dev/null"] + args + extra, env={"PYTHONPATH": str(blocker)})
    assert r.returncode == 78, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"oom-journal: {option}: ") and package in last, r.stderr
