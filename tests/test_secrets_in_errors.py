"""No secret in any error: malformed values of options that hold secrets, in every place a value
can come from (flag, config file, environment), at check-config, at start and on reload. Each
case exits 78 with ONE line naming the option, and the secret's text is nowhere: not on stdout,
stderr, the daemon's log, nor in any STATUS= it sends (which `systemctl status` shows to all)."""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import urllib.parse

import pytest

from oom_journal import redact

EXE = shutil.which("oom-journal", path=os.path.dirname(sys.executable)) or "oom-journal"
SECRET = "hunter2-Zq8xK"  # in every value below; no message may contain it, nor its URL-encoded form

# (option, malformed values carrying the secret): the shapes a person mistypes.
MALFORMED = [
    ("--slack-webhook", [f"https://[hooks.slack.com/services/T0/B0/{SECRET}", f"hooks.slack.com/services/{SECRET}",
                         f"ftp://hooks.slack.com/{SECRET}", f"https://hooks.slack.com:99x/{SECRET}",
                         f"https://hooks.slack.com/services/\n{SECRET}", f"{SECRET}"]),
    ("--elasticsearch-server", [f"http://u:{SECRET}@[es:9200", f"http://u:{SECRET}@es:99999", f"u:{SECRET}@es:9200",
                                f"ftp://u:{SECRET}@es", f"http://u:{SECRET}@"]),
    ("--kafka-option", [f"sasl.password: {SECRET}", f"sasl.password {SECRET}", f"={SECRET}",
                        f"sasl.password\t{SECRET}"]),
]
# Options that are secrets whole: made malformed by what surrounds them, not their own shape.
CONTEXT = {
    "--slack-webhook": [],
    "--elasticsearch-server": [],
    "--kafka-option": ["--kafka-brokers", "127.0.0.1:9092", "--kafka-topic", "oom"],
}
CASES = [(opt, value) for opt, values in MALFORMED for value in values] + [
    ("--elasticsearch-password", SECRET),  # without a user: "user and password go together"
    ("--elasticsearch-api-key", SECRET),  # with a user and password: "not both"
]
EXTRA = {
    "--elasticsearch-password": ["--elasticsearch-server", "http://es:9200"],
    "--elasticsearch-api-key": ["--elasticsearch-server", f"ftp://{SECRET}", "--elasticsearch-user", "u",
                                "--elasticsearch-password", SECRET + "x"],
}


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith("OOM_JOURNAL_") and k != "LOGGING_LEVEL"}


def _no_secret(*texts):
    for text in texts:
        assert SECRET not in text, text


def _one_line_naming(stderr: str, option: str):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert option in lines[0], lines[0]


def _ids(case):
    return f"{case[0]}={case[1]!r}"[:60]


PLACED = [(place, opt, value) for place in ("flag", "file", "env") for opt, value in CASES
          if not (place == "file" and "\n" in value)]  # a config file's value has no newline


@pytest.mark.parametrize("place,option,value", PLACED, ids=[f"{c[0]}:{_ids(c[1:])}" for c in PLACED])
def test_check_config_never_prints_the_secret(tmp_path, place, option, value):
    args = ["check-config"] + CONTEXT.get(option, []) + EXTRA.get(option, [])
    env = _env()
    conf = tmp_path / "oom-journal.conf"
    conf.write_text("")
    name = option[2:]
    if place == "flag":
        args += [option, value]
    elif place == "file":
        conf.write_text(f"{name} = {value}\n")
    else:
        env["OOM_JOURNAL_" + name.upper().replace("-", "_")] = value
    conf.chmod(0o600)
    r = subprocess.run([EXE] + args + ["-c", str(conf)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    _no_secret(r.stdout, r.stderr)
    named = {"--elasticsearch-password": "--elasticsearch-user", "--elasticsearch-api-key": "--elasticsearch"}
    _one_line_naming(r.stderr, named.get(option, option))


def test_a_config_file_line_that_does_not_parse_is_named_not_quoted(tmp_path):
    conf = tmp_path / "oom-journal.conf"
    conf.write_text(f"log-level = info\n={SECRET}\n")
    r = subprocess.run([EXE, "check-config", "-c", str(conf)], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 78
    _no_secret(r.stdout, r.stderr)
    assert r.stderr.strip() == f"oom-journal: --config: {conf}: line 2 is not 'option = value'"


def test_the_daemon_itself_exits_78_without_the_secret(tmp_path):
    """At start (`oom-journal run`), before anything is opened."""
    r = subprocess.run([EXE, "run", "-c", "/dev/null", "--state-dir", str(tmp_path), "--elasticsearch-server",
                        f"http://u:{SECRET}@[es:9200"], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 78, r.stderr
    _no_secret(r.stdout, r.stderr)
    _one_line_naming(r.stderr, "--elasticsearch-server")


def test_a_reload_with_a_malformed_secret_keeps_the_old_configuration_and_says_why_without_it(daemon_factory, tmp_path):
    import signal

    conf = tmp_path / "oom-journal.conf"
    conf.write_text("log-level = info\n")
    d = daemon_factory("-c", str(conf)).start()
    for text in (f"elasticsearch-server = http://u:{SECRET}@[es:9200\n",  # was a traceback and exit 1
                 f"kafka-brokers = 127.0.0.1:9092\nkafka-topic = t\nkafka-option = sasl.password: {SECRET}\n",
                 f"slack-webhook = https://[hooks.slack.com/{SECRET}\n"):
        conf.write_text(text)
        d.messages.clear()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("RELOADING=1")
        status = d.wait_for("READY=1")
        assert "reload failed" in status, status
        assert d.proc.poll() is None
        _no_secret(*d.messages)
    assert d.stop() == 0
    _no_secret(d.log.read_text())
    assert "configuration could not be checked" not in d.log.read_text()  # each had its own, named error


@pytest.mark.parametrize("url,shown", [
    ("http://u:pw@es:9200/x", "http://u:****@es:9200/x"),
    ("http://u:pw@[es:9200", "http://u:****@[es:9200"),  # urllib.parse raises on this one
    ("u:pw@es:9200", "u:****@es:9200"),
    ("http://es:9200/a@b", "http://es:9200/a@b"),  # an @ in the path is no userinfo
    ("http://es:9200", "http://es:9200"),
])
def test_mask_userinfo_does_not_need_the_url_to_parse(url, shown):
    assert redact.mask_userinfo(url) == shown


def test_scrub_removes_every_form_of_a_secret():
    secret = "pa/ss+w0rd"
    text = f"failed: https://h/{secret} and https://h/?p=pa%2Fss%2Bw0rd"
    assert redact.scrub(text, [secret]) == "failed: https://h/**** and https://h/?p=****"


def test_a_scrubber_masks_configured_secrets_of_any_length_in_every_form():
    scrubber = redact.Scrubber(["pa/ss+w0rd", "x", ""])
    assert scrubber("a pa/ss+w0rd, pa%2Fss%2Bw0rd, pa/ss%2Bw0rd") == "a ****, ****, ****"
    assert scrubber("x marks") == "**** marks"  # configured, so masked even this short
    assert redact.scrub("x marks", ["x"]) == "x marks"  # a guess at a part: too short to mask


def test_a_secret_url_is_shown_by_its_parts():
    url = "https://hooks.slack.com/services/T0AAAA/B0BBBB/abcdefghijklmnopqrstuvwx"
    scrubber = redact.Scrubber(shown=redact.secret_url_forms(url))
    assert scrubber(f"POST {url} failed") == "POST https://hooks.slack.com/**** failed"
    assert scrubber('"POST /services/T0AAAA/B0BBBB/abcdefghijklmnopqrstuvwx HTTP/1.1" 200') == \
        '"POST /**** HTTP/1.1" 200'
    assert scrubber("token abcdefghijklmnopqrstuvwx") == "token ****"
    assert scrubber(urllib.parse.quote(url, safe="")) == "https://hooks.slack.com/****"


def test_credentials_are_scrubbed_as_the_authorization_header_carries_them():
    forms = redact.credential_forms("elastic", "pw-Zq8xK", "id:key-Zq8xK")
    basic = base64.b64encode(b"elastic:pw-Zq8xK").decode()
    api = base64.b64encode(b"id:key-Zq8xK").decode()
    assert set(forms) == {"pw-Zq8xK", "id:key-Zq8xK", basic, api}
    assert redact.Scrubber(forms)(f"Basic {basic}, ApiKey {api}, pw-Zq8xK") == "Basic ****, ApiKey ****, ****"
    assert redact.credential_forms(None, None, "encodedkey") == ["encodedkey"]


def test_scrub_userinfo_masks_every_url_s_userinfo_in_a_text():
    text = "cannot reach http://elastic:pw@es:9200/ (via https://proxy@p:3128), user@example.com stays"
    assert redact.scrub_userinfo(text) == ("cannot reach http://****@es:9200/ (via https://****@p:3128), "
                                           "user@example.com stays")
