"""The Slack sink against a STAND-IN for Slack's incoming webhooks (tests/slack_standin.py).

There is no Slack here (no internet, and Slack ships no server), so the stand-in answers as Slack's
webhooks are documented to: 200 ok, 4xx with a one-word reason, 429 with Retry-After, and it
checks each message against Block Kit's limits. Every assertion is on what it received: the raw
JSON body, the arrival times, the answers.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import socket
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oom_journal.app import config
from oom_journal.enrich.event import OomEvent
from oom_journal.model import HostInfo
from oom_journal.sinks import configured_sinks
from oom_journal.sinks.base import FAILED, OK, RETRY, SinkUnavailable
from oom_journal.sinks.slack import SlackSink
from slack_standin import SlackStandin, validate_payload
from test_event import HOST, Lookup, kill

HOSTILE_ARGV = [b"/usr/bin/python3", b"-c", b"print(1)", b"<!channel>", b"<!here>", b"<@U024BE7LH>",
                b"<https://evil.example|click me>", b"&amp;", b"```", b"`rm -rf /`", b"two\nlines",
                b"\x1b[31mred\x1b[0m", b"*bold* _it_ ~strike~ :fire:", b"\xff\xfe", b"<!subteam^S123>"]


def cfg(url, channel=None):
    """The configuration as the daemon loads it: the real option parser."""
    argv = ["-c", "/dev/null", "--slack-webhook", url] + (["--slack-channel", channel] if channel else [])
    return config.load(argv, environ={})


def document(argv=(b"java", b"-Xmx2g", b"-jar", b"app.jar"), host=HOST, **kill_fields):
    event = OomEvent.build(kill(**kill_fields), host, Lookup(list(argv) if argv else None),
                           event_time=1700000000.25)
    return json.loads(json.dumps(event.document()))  # as the outbox hands it back


@pytest.fixture
def standin():
    with SlackStandin() as s:
        yield s


@pytest.fixture
def make_sink():
    made = []

    def make(url, channel=None, **kw):
        sink = SlackSink(cfg(url, channel), **kw)
        sink.open()
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


def text_fields(node):
    """Every `text` string of a Slack message, top level and in blocks."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                yield value
            else:
                yield from text_fields(value)
    elif isinstance(node, list):
        for item in node:
            yield from text_fields(item)


def assert_neutral(payload, raw: str):
    """Nothing in the message can ping, link or break out: & < > only as entities, no control
    characters but our own line breaks, every mrkdwn object verbatim."""
    assert "<!" not in raw and "<@" not in raw and "<#" not in raw and "<http" not in raw
    for text in text_fields(payload):
        assert "<" not in text and ">" not in text, text
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), text
        assert not [c for c in text if c != "\n" and (ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0)], text
    for block in payload["blocks"]:
        for obj in [block.get("text")] + block.get("fields", []) + block.get("elements", []):
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                assert obj["verbatim"] is True


def command_line_section(payload) -> str:
    (text,) = [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section" and "text" in b]
    return text


# --- what Slack receives ---------------------------------------------------------------------
def test_hostile_process_is_neutralised(standin, make_sink):
    host = HostInfo(hostname="web1<!here>&", boot_id=HOST.boot_id, kernel=HOST.kernel)
    doc = document(HOSTILE_ARGV, host=host, comm="<!channel>`\x1b",
                   task_memcg="/system.slice/evil<@U1>&x.service", oom_memcg="/system.slice")
    (result,) = make_sink(standin.url).deliver([doc])
    assert result.outcome == OK and not result.error, result
    (rec,) = standin.received
    assert rec.status == 200, (rec.answer, rec.problem)
    raw = rec.body.decode("ascii")  # the sink sends ASCII JSON
    payload = json.loads(raw)
    assert_neutral(payload, raw)

    code = command_line_section(payload)
    m = re.fullmatch(r"\*Command line\* \(15 arguments\)\n```([^`]*)```", code)
    assert m, code
    shown = m.group(1)
    for expected in ("&lt;!channel&gt;", "&lt;!here&gt;", "&lt;@U024BE7LH&gt;",
                     "&lt;https://evil.example|click me&gt;", "&amp;amp;", "&lt;!subteam^S123&gt;",
                     "\u02cb\u02cb\u02cb", "\u02cbrm -rf /\u02cb", "two\\x0alines", "\\x1b[31mred",
                     "*bold* _it_ ~strike~ :fire:", "\\xff\\xfe"):
        assert expected in shown, expected
    header = payload["blocks"][0]["text"]
    assert header == {"type": "plain_text", "emoji": False,
                      "text": "OOM kill: &lt;!channel&gt;`\\x1b (pid 1234) on web1&lt;!here&gt;&amp;"}
    fields = "\n".join(f["text"] for f in payload["blocks"][1]["fields"])
    assert "*Unit*\n`evil&lt;@U1&gt;&amp;x.service`" in fields
    assert "*Process*\n`&lt;!channel&gt;\u02cb\\x1b` pid 1234, uid 1000, `oom_score_adj` 0" in fields
    assert "*Reason*\nMemory cgroup out of memory (`CONSTRAINT_MEMCG`)" in fields
    assert "*Memory*\nanon-rss 1.9 GiB" in fields
    assert payload["text"].startswith("[web1&lt;!here&gt;&amp;] Memory cgroup out of memory: killed process 1234")
    context = " ".join(e["text"] for e in payload["blocks"][-1]["elements"])
    assert f"event `{doc['event_id']}`" in context and "2023-11-14 22:13:20 UTC" in context
    assert "channel" not in payload  # none configured: the webhook's own


def test_long_command_line_is_shortened_for_display_only(standin, make_sink):
    argv = [b"java", b"<!channel>", b"-Dpad=" + b"x" * (128 << 10), b"--last-arg"]
    doc = document(argv)
    assert len(doc["cmdline"]) > 128 << 10
    (result,) = make_sink(standin.url).deliver([doc])
    assert result.outcome == OK, result
    (rec,) = standin.received
    payload = rec.payload
    assert_neutral(payload, rec.body.decode("ascii"))
    code = command_line_section(payload)
    assert len(code) <= 3000
    assert code.startswith("*Command line* (4 arguments)\n```java '&lt;!channel&gt;' -Dpad=xxx")
    assert "…```\n_shortened for display: " in code and "--last-arg" not in code
    assert f" of {len(shlex.join(doc['argv'])):,} characters shown" in code  # as shown: shell-quoted
    assert code.endswith(f"`journalctl OOM_EVENT_ID={doc['event_id']}`")
    context = " ".join(e["text"] for e in payload["blocks"][-1]["elements"])
    assert f"`{doc['event_id']}`" in context


def test_shortening_never_splits_an_entity_or_escape(standin, make_sink):
    # Every character expands: '<' to 4, '&' to 5, ESC to 4 characters.
    doc = document([b"<&\x1b" * 50_000], host=HostInfo("<" * 64, HOST.boot_id, HOST.kernel), comm="<" * 15)
    (result,) = make_sink(standin.url).deliver([doc])
    assert result.outcome == OK, (result, standin.received[0].problem)
    payload = standin.received[0].payload
    assert_neutral(payload, standin.received[0].body.decode("ascii"))
    code = command_line_section(payload)
    body = re.search(r"```(.*)```", code).group(1)
    assert re.fullmatch(r"'(&lt;&amp;\\x1b)+(&lt;|&lt;&amp;|&lt;&amp;\\x1b)?…", body), body[-40:]
    assert len(payload["blocks"][0]["text"]["text"]) <= 150


# --- outcomes ---------------------------------------------------------------------------------
def test_429_retry_after_then_ok(standin, make_sink):
    sink = make_sink(standin.url)
    standin.respond_next(429, "rate_limited", {"Retry-After": "2"})
    (first,) = sink.deliver([document()])
    assert first.outcome == RETRY and first.retry_after == 2
    assert "HTTP 429: rate_limited" in first.error
    # Asked again before the 2 s are up (the worker would not, but a restart might): no post.
    (early,) = sink.deliver([document()])
    assert early.outcome == RETRY and 0 < early.retry_after <= 2
    assert len(standin.received) == 1
    time.sleep(first.retry_after)
    (second,) = sink.deliver([document()])
    assert second.outcome == OK
    assert [r.status for r in standin.received] == [429, 200]


def test_no_service_is_failed_without_the_url(standin, make_sink):
    token = "WrongTokenWrongToken1234"
    url = standin.url_with_path(f"/services/T0STANDIN/B0STANDIN/{token}")
    sink = make_sink(url)
    (result,) = sink.deliver([document()])
    assert result.outcome == FAILED
    assert "HTTP 404: no_service" in result.error and "make a new one" in result.error
    assert token not in result.error and "/services" not in result.error
    assert sink.describe() == "slack webhook http://127.0.0.1/****"
    assert standin.received[0].path.endswith(token)  # it did reach "Slack"


@pytest.mark.parametrize("status, reason, headers, outcome", [
    (400, "invalid_payload", {}, FAILED),
    (400, "user_not_found", {}, FAILED),
    (403, "action_prohibited", {}, FAILED),
    (404, "channel_not_found", {}, FAILED),
    (410, "channel_is_archived", {}, FAILED),
    (408, "", {}, RETRY),
    (500, "rollup_error", {}, RETRY),
    (503, "<html>Service Unavailable</html>", {}, RETRY),
    (429, "rate_limited", {}, RETRY),  # no Retry-After: the worker's own backoff
    (302, "", {"Location": "https://elsewhere.example/"}, FAILED),
])
def test_answers_are_classified(standin, make_sink, status, reason, headers, outcome):
    sink = make_sink(standin.url)
    standin.respond_next(status, reason, headers)
    (result,) = sink.deliver([document()])
    assert result.outcome == outcome, result
    assert f"HTTP {status}" in result.error
    assert reason.split("<")[0] in result.error
    assert standin.token not in result.error and standin.path not in result.error
    if status == 429:
        assert result.retry_after is None
    assert len(standin.received) == 1  # a redirect is not followed


def test_a_retry_ends_the_round(standin, make_sink):
    sink = make_sink(standin.url)
    standin.respond_next(503, "rollup_error")
    results = sink.deliver([document(), document(), document()])
    assert [r.outcome for r in results] == [RETRY] * 3
    assert len(standin.received) == 1


def test_a_failed_event_does_not_hold_up_the_next(standin, make_sink):
    sink = make_sink(standin.url, interval=0.05)
    standin.respond_next(400, "invalid_payload")
    results = sink.deliver([document(), document()])
    assert [r.outcome for r in results] == [FAILED, OK]


def test_server_down_is_retry_in_bounded_time(make_sink):
    with SlackStandin() as gone:
        url, token = gone.url, gone.token
    sink = make_sink(url)
    start = time.monotonic()
    results = sink.deliver([document(), document(), document()])
    assert time.monotonic() - start < 3
    assert [r.outcome for r in results] == [RETRY] * 3
    assert results[0].error == "cannot reach Slack: Connection refused"
    assert all(token not in r.error and "/services" not in r.error for r in results)


@pytest.fixture
def silent_server():
    """A TCP port that takes connections and never answers: Slack hanging."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"http://127.0.0.1:{s.getsockname()[1]}/services/T0/B0/SilentSecretToken12345"
    s.close()


def test_no_answer_is_retry_within_the_timeout(make_sink, silent_server):
    sink = make_sink(silent_server, timeout=1.0)
    start = time.monotonic()
    results = sink.deliver([document(), document()])
    elapsed = time.monotonic() - start
    assert [r.outcome for r in results] == [RETRY, RETRY]
    assert 0.9 < elapsed < 2.5, elapsed
    assert results[0].error.startswith("no answer from Slack in time")
    assert "SilentSecretToken12345" not in results[0].error


def test_the_webhook_never_reaches_the_log(standin, make_sink, silent_server, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    sink = make_sink(standin.url, interval=0.0)
    assert sink.deliver([document()])[0].outcome == OK
    for status, reason, headers in ((404, "no_service", {}), (429, "rate_limited", {"Retry-After": "0"}),
                                    (500, "rollup_error", {}), (301, "", {"Location": standin.url})):
        standin.respond_next(status, reason, headers)
        sink.deliver([document()])
    port = standin.port
    standin.stop()
    sink.deliver([document()])  # refused
    make_sink(silent_server, timeout=0.5).deliver([document()])  # timed out
    make_sink(f"http://127.0.0.1:{port}/{standin.token}?token={standin.token}").deliver([document()])

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [formatter.format(r) for r in caplog.records]
    text = "\n".join(lines) + caplog.text
    for secret in (standin.token, standin.path, "SilentSecretToken12345", "/services/T0/B0"):
        assert secret not in text
    # The test sees urllib3's DEBUG lines: the request line is there, without the path.
    assert any(line.startswith("urllib3.connectionpool DEBUG") and '"POST /**** HTTP/1.1" 200' in line
               for line in lines), lines
    assert any("oom_journal.sinks.slack" in line for line in lines)


def test_slack_channel_is_sent(make_sink):
    with SlackStandin(channels={"#oom-alerts"}, archived={"#old"}) as standin:
        assert make_sink(standin.url, "#oom-alerts").deliver([document()])[0].outcome == OK
        assert standin.received[0].payload["channel"] == "#oom-alerts"
        missing = make_sink(standin.url, "#nope").deliver([document()])[0]
        assert missing.outcome == FAILED and "channel_not_found" in missing.error
        archived = make_sink(standin.url, "#old").deliver([document()])[0]
        assert archived.outcome == FAILED and "HTTP 410: channel_is_archived" in archived.error
        described = make_sink(standin.url, "#oom-alerts").describe()
        assert described == "slack webhook http://127.0.0.1/**** channel #oom-alerts"


def test_one_message_a_second(standin, make_sink):
    standin.rate_limit(per_second=1.0, burst=2)  # as Slack: about one a second, short bursts
    sink = make_sink(standin.url)
    assert SlackSink.max_batch >= 3
    results = sink.deliver([document() for _ in range(3)]) + sink.deliver([document()])
    assert [r.outcome for r in results] == [OK] * 4
    times = [r.time for r in standin.received]
    assert [r.status for r in standin.received] == [200] * 4
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:], strict=False)), times  # pairs of neighbours


def test_without_pacing_the_standin_limits(standin, make_sink):
    """The rate limit above can bite: a sink that did not pace would get 429."""
    standin.rate_limit(per_second=1.0, burst=2)
    results = make_sink(standin.url, interval=0.0).deliver([document() for _ in range(3)])
    assert [r.outcome for r in results] == [OK, OK, RETRY]
    assert results[2].retry_after == 1


# --- the rest of the interface ----------------------------------------------------------------
def test_configured_and_describe():
    assert [type(s) for s in configured_sinks(cfg("https://hooks.slack.com/services/T1/B2/abcdefghijklmnopqrstuvwx"))] == [
        SlackSink]
    assert configured_sinks(config.load(["-c", "/dev/null"], environ={})) == []
    sink = SlackSink(cfg("https://hooks.slack.com/services/T1/B2/abcdefghijklmnopqrstuvwx"))
    assert sink.describe() == "slack webhook https://hooks.slack.com/****"
    assert sink.name == "slack" and sink.option == "--slack-webhook"


def test_open_without_requests(monkeypatch):
    monkeypatch.setitem(sys.modules, "requests", None)  # as if python3-requests were not installed
    with pytest.raises(SinkUnavailable) as e:
        SlackSink(cfg("https://hooks.slack.com/services/T1/B2/abcdefghijklmnopqrstuvwx")).open()
    assert e.value.option == "--slack-webhook" and "apt install python3-requests" in str(e.value)


def test_probe(standin):
    sink = SlackSink(cfg(standin.url))
    assert sink.probe() is None
    port, token = standin.port, standin.token
    standin.stop()
    why = sink.probe()
    assert why == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert token not in why


def test_probe_names_a_host_that_does_not_resolve():
    def no_dns(address, timeout):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    sink = SlackSink(cfg("https://hooks.slack.example/services/T1/B2/abcdefghijklmnopqrstuvwx"), connect=no_dns)
    assert sink.probe() == "cannot resolve hooks.slack.example: Name or service not known"


def test_test_event_says_so():
    doc = document()
    doc["test"] = True
    header = SlackSink(cfg("https://hooks.slack.com/services/T1/B2/x")).render(doc)["blocks"][0]["text"]["text"]
    assert header == "Test event from oom-journal on web1"


def test_odd_documents_are_rendered_or_failed_never_raised(standin, make_sink):
    sink = make_sink(standin.url, interval=0.0)
    odd = {"event_id": "x", "argv": 5, "time": object(), "pid": "1", "trigger": "java"}
    results = sink.deliver([None, odd, document()])
    assert [r.outcome for r in results] == [FAILED, OK, OK]
    assert results[0].error.startswith("cannot render the event for Slack: AttributeError")
    assert len(standin.received) == 2


hostile_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from("<>&`*_~\n\x1b!@|"),
                       max_size=400)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(comm=hostile_text, argv=st.lists(hostile_text, max_size=8), host=hostile_text, unit=hostile_text,
       pad=st.integers(0, 20_000))
def test_any_document_fits_slack_and_stays_neutral(comm, argv, host, unit, pad):
    doc = document([a.encode() for a in argv] + ([b"y" * pad] if pad else []),
                   host=HostInfo(host or "h", HOST.boot_id, HOST.kernel), comm=comm[:15])
    doc["unit"], doc["hostname"] = unit or None, host
    payload = SlackSink(cfg("https://hooks.slack.com/services/T1/B2/x")).render(doc)
    raw = json.dumps(payload, ensure_ascii=True)
    assert validate_payload(json.loads(raw)) == (None, None)
    assert_neutral(payload, raw)
    header = payload["blocks"][0]["text"]["text"]
    assert len(header.encode("utf-16-le")) // 2 <= 150


def test_retry_after_reads_seconds_or_an_http_date_in_either_case():
    """sinks/http.py, shared with the Elasticsearch sink."""
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from oom_journal.sinks.http import MAX_RETRY_AFTER, retry_after

    assert retry_after({"Retry-After": "2"}) == 2 and retry_after({"retry-after": "2.5"}) == 2.5
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after({"Retry-After": soon}) <= 30
    assert retry_after({"Retry-After": "Tue, 01 Jan 2030 00:00:00 -0000"}) == MAX_RETRY_AFTER
    assert retry_after({"Retry-After": "-5"}) == 0 and retry_after({"Retry-After": "nan"}) is None
    assert retry_after({"Retry-After": "soon"}) is None and retry_after({}) is None and retry_after(None) is None
