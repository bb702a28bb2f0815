"""The daemon with sinks, end to end: real OOM kills, delivered through the outbox.

Kafka and Syslog talk to real servers (tansu, rsyslog); Elasticsearch and Slack to stand-ins
(tests/es_standin.py, tests/slack_standin.py): no real Elasticsearch or Slack can be had here.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import time
import uuid

import pytest

from conftest import MESSAGE_ID, VICTIM_SCRIPT, kill_in, victim_argv, wait_for_entries
from slack_standin import SlackStandin


def wait_until(predicate, timeout=30.0, what="condition", daemon=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            log = daemon.log.read_text()[-4000:] if daemon is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{log}")
        time.sleep(0.1)


@pytest.fixture
def slack():
    s = SlackStandin().start()
    yield s
    s.stop()


def slack_posts_for(standin, pid):
    return [r for r in standin.accepted() if r.payload and f"pid {pid}" in json.dumps(r.payload)]


def test_slack_gets_the_kill_neutralised_and_undelivered_events_survive_sigkill(memcg, daemon_factory, slack):
    cg = memcg()
    slack.respond_next(503, "service_unavailable", count=10_000)  # Slack is down
    first = daemon_factory("--slack-webhook", slack.url).start()
    argv = victim_argv("slack-" + uuid.uuid4().hex) + ["<!channel>", "<@U024BE7LH>"]
    pid = kill_in(cg, argv)
    assert wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}")  # the journal does not wait for Slack
    wait_until(lambda: any(r.status == 503 for r in slack.received), what="a delivery attempt")
    first.wait_for_status("retrying")
    first.kill()  # SIGKILL with the event undelivered

    slack.clear_script()  # Slack is back
    second = daemon_factory("--slack-webhook", slack.url).start()
    posts = wait_until(lambda: slack_posts_for(slack, pid), what="the event at Slack")
    second.wait_idle()  # nothing left to send: a duplicate could only have come before this
    assert len(slack_posts_for(slack, pid)) == 1
    raw = posts[0].body.decode()
    assert "<!channel>" not in raw and "<@U024BE7LH>" not in raw
    assert "&lt;!channel&gt;" in raw
    assert second.stop() == 0


def outbox_rows(daemon) -> list:
    """What the daemon's outbox holds now, read from its state database (another connection)."""
    db = sqlite3.connect(str(daemon.tmp / "state" / "state.sqlite3"), timeout=10)
    try:
        return db.execute("SELECT sink, event_id FROM outbox").fetchall()
    finally:
        db.close()


def test_reload_during_a_slack_delivery_sends_each_event_once(memcg, daemon_factory, slack, tmp_path):
    """SIGHUP with a changed --slack-channel while a post is in flight at (a slow) Slack: the old
    worker finishes its post before the new one starts, and the new one does not post it again."""
    conf = tmp_path / "reload.conf"
    conf.write_text(f"slack-webhook = {slack.url}\nslack-channel = #before\n")
    conf.chmod(0o600)
    d = daemon_factory("-c", str(conf), env={"WATCHDOG_USEC": "30000000"}).start()
    slack.hold(5.0)  # each post waits 5 s for Slack's answer (the sink gives Slack 10 s)
    cg = memcg()
    first = kill_in(cg, victim_argv("reload-first-" + uuid.uuid4().hex, 10))
    wait_until(lambda: slack.in_flight, what="the first post in flight at Slack", daemon=d)
    second = kill_in(cg, victim_argv("reload-second-" + uuid.uuid4().hex, 10))
    assert wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={second}", writers=[d])
    conf.write_text(f"slack-webhook = {slack.url}\nslack-channel = #after\n")
    assert slack.in_flight == 1 and not slack.received, "the reload must land while the first post is held"
    d.drain()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("RELOADING=1")
    reloading = len(d.messages) - 1
    started = time.monotonic()
    d.wait_for("READY=1", timeout=30)
    took = time.monotonic() - started
    during = "\n".join(d.messages[reloading:]).split("\n")
    assert "WATCHDOG=1" in during, "the main thread waited for the old worker without telling the watchdog"
    assert took < 20, f"the reload took {took:.1f} s of WatchdogSec=30"
    # Nothing in flight any more: the outbox is empty and Slack holds no post.
    wait_until(lambda: not outbox_rows(d) and not slack.in_flight, timeout=60, what="the outbox empty", daemon=d)
    for pid in (first, second):
        posts = [r for r in slack.received if r.payload and f"pid {pid}" in json.dumps(r.payload)]
        assert len(posts) == 1, f"pid {pid} was posted {len(posts)} times"
        assert posts[0].status == 200
    assert slack_posts_for(slack, first)[0].payload["channel"] == "#before"  # in flight at the reload
    assert slack_posts_for(slack, second)[0].payload["channel"] == "#after"  # sent by the new worker
    assert d.stop() == 0


def test_a_huge_command_line_reaches_a_sink_capped_and_the_journal_whole(memcg, daemon_factory):
    """A victim with about 100 KiB of argv: the journal entry keeps all of it, the sink's document
    (Elasticsearch stand-in: no real Elasticsearch here) carries 32 KiB and says it was cut."""
    from es_standin import StandinElasticsearch
    from oom_journal.enrich.event import SINK_CMDLINE_MAX_BYTES

    es = StandinElasticsearch().start()
    try:
        d = daemon_factory("--elasticsearch-server", es.url, "--elasticsearch-index", "oom-cap").start()
        cg = memcg()
        # Four arguments of 27,000 bytes (one argument may have at most 128 KiB: MAX_ARG_STRLEN),
        # two- and three-byte characters: the cut falls inside the second.
        argv = ["/usr/bin/python3", "-c", VICTIM_SCRIPT, "cap-" + uuid.uuid4().hex] + \
            [f"{i}" + "ü" * 12_000 + "✓" * 1_000 for i in range(4)]
        whole = " ".join(argv)
        assert len(whole.encode()) > 100_000
        pid = kill_in(cg, argv)
        entry = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])[0]
        assert entry["OOM_CMDLINE"] == whole
        assert entry["OOM_ARGV"] == b"\0".join(a.encode() for a in argv)
        doc = wait_until(lambda: es.docs("oom-cap").get(entry["OOM_EVENT_ID"]), what="the document", daemon=d)
        expected = whole.encode()[:SINK_CMDLINE_MAX_BYTES].decode("utf-8", "ignore")
        assert doc["cmdline"] == expected and len(expected.encode()) <= SINK_CMDLINE_MAX_BYTES
        assert doc["cmdline_truncated"] is True
        assert doc["cmdline_length"] == len(whole.encode())
        assert doc["argv"][:5] == argv[:5] and len(doc["argv"]) == 6 and argv[5].startswith(doc["argv"][5])
        assert " ".join(doc["argv"]) == expected
        assert d.stop() == 0
    finally:
        es.stop()


def test_elasticsearch_indexes_the_kill_once_with_the_event_id(memcg, daemon_factory):
    """Against the Elasticsearch stand-in (no real Elasticsearch here), with Debian's 7.17 client;
    the 9.x client is covered by test_sink_elasticsearch.py."""
    from es_standin import StandinElasticsearch

    es = StandinElasticsearch(users={"oom": "s3cret"}).start()
    try:
        es.fail_next_items(1, status=429)  # the first try is refused: the outbox retries
        d = daemon_factory("--elasticsearch-server", es.url, "--elasticsearch-user", "oom",
                           "--elasticsearch-password", "s3cret", "--elasticsearch-index", "oom-%Y").start()
        cg = memcg()
        argv = victim_argv("es-" + uuid.uuid4().hex)
        pid = kill_in(cg, argv)
        entry = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", f"OOM_UNIT={cg.unit}", writers=[d])[0]
        index = "oom-" + time.strftime("%Y", time.gmtime())
        try:
            doc = wait_until(lambda: es.docs(index).get(entry["OOM_EVENT_ID"]), what="the document", daemon=d)
        except AssertionError:
            raise AssertionError(f"{entry['OOM_EVENT_ID']} not in {index}: indices {list(es.indices)}, "
                                 f"documents {[(i, list(es.docs(i))) for i in es.indices]}, bulk requests "
                                 f"{[r.body[:600] for r in es.requests_to('/_bulk')]}") from None
        assert doc["cmdline"] == " ".join(argv) and doc["pid"] == pid and doc["unit"] == cg.unit
        d.wait_idle()  # the 429'd first try was retried, and nothing is left to send
        assert [i for i, dd in es.docs(index).items() if dd["pid"] == pid] == [entry["OOM_EVENT_ID"]]
        assert d.stop() == 0
        assert "s3cret" not in d.log.read_text()
    finally:
        es.stop()


def test_syslog_tcp_gets_one_record_per_kill_even_with_a_newline_in_argv(memcg, daemon_factory, tmp_path):
    """A real rsyslog (private instance, loopback TCP) and a real kill whose argv holds a newline."""
    from test_sink_syslog import Rsyslog, RSYSLOGD
    import os

    if not os.access(RSYSLOGD, os.X_OK):
        pytest.fail(f"{RSYSLOGD} is not installed (scripts/install-deps --test installs it)")
    server = Rsyslog(tmp_path).start()
    try:
        d = daemon_factory("--syslog-server", f"127.0.0.1:{server.port}", "--syslog-proto", "tcp").start()
        cg = memcg()
        token = "syslog-" + uuid.uuid4().hex
        argv = ["/usr/bin/python3", "-c", "b = b'x' * (256 << 20)", token, "line1\nFAKE sshd[1]: Accepted password"]
        pid = kill_in(cg, argv)
        from test_sink_syslog import SD_ID

        def ours():
            return [r for r in server.records() if token in r["parsed"].get(SD_ID, {}).get("cmdline", "")]

        wait_until(ours, what="the record at rsyslog")
        d.wait_idle()
        (rec,) = ours()
        params = rec["parsed"][SD_ID]
        assert params["pid"] == str(pid) and params["unit"] == cg.unit
        assert params["cmdline"].endswith("line1\\x0aFAKE sshd[1]: Accepted password")
        # One line per record in rsyslog's file: the newline did not start a forged record.
        assert not any(line.startswith(b"FAKE") for line in server.lines())
        assert d.stop() == 0
    finally:
        server.stop()


def test_kafka_gets_every_kill_through_a_broker_outage(memcg, daemon_factory, tmp_path):
    """A real Kafka-protocol broker (tansu) and an unaltered client: the daemon uses PyPI's
    confluent-kafka 2.x (what users of tansu or KRaft brokers need: Debian's librdkafka 2.0.2
    cannot read their ApiVersions answer, see tests/kafka_broker.py), and the relay must have
    rewritten nothing of what it said. (The test's own reader is Debian's client, which the relay
    helps; its rewrites are counted apart.)"""
    from kafka_broker import TansuBroker
    from test_sink_kafka import KAFKA2

    why = TansuBroker.available()
    if why:
        pytest.fail(why)
    broker = TansuBroker(tmp_path).start()
    try:
        broker.create_topic("oom")
        tests_rewrites = broker.relay.rewritten  # the test's own admin client (Debian's) was helped
        d = daemon_factory("--kafka-brokers", broker.bootstrap, "--kafka-topic", "oom",
                           "--kafka-option", "allow.auto.create.topics=false",
                           env={"PYTHONPATH": str(KAFKA2)}).start()
        d.wait_caught_up()  # the test's kills are then the last recorded (wait_idle below)
        cg = memcg()
        argv = victim_argv("kafka-" + uuid.uuid4().hex)
        first = kill_in(cg, argv)
        d.wait_idle(last_pid=first)  # delivered (acknowledged by the broker) before the test reads
        assert broker.relay.rewritten == tests_rewrites, "the daemon's client needed the relay's help"

        def ours(messages):
            docs = [json.loads(m[3]) for m in messages]
            return [doc for doc in docs if doc["unit"] == cg.unit]

        docs = wait_until(lambda: ours(broker.read("oom", 1, timeout=2, settle=0)), what="the first event")
        assert len(docs) == 1 and docs[0]["pid"] == first and docs[0]["cmdline"] == " ".join(argv)
        broker.stop()  # the broker is down while further kills happen
        down = [kill_in(cg, victim_argv(f"kafka-down{i}-" + uuid.uuid4().hex, 10)) for i in range(2)]
        for pid in down:  # the journal does not wait for Kafka
            assert wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])
        d.wait_for_status("kafka: retrying", timeout=30)
        broker.start()  # back, empty (in-memory storage): the operator creates the topic again
        broker.create_topic("oom")
        tests_rewrites = broker.relay.rewritten
        d.wait_idle(last_pid=down[-1], timeout=90)
        assert broker.relay.rewritten == tests_rewrites, "the daemon's client needed the relay's help"
        docs = wait_until(lambda: (lambda got: got if {x["pid"] for x in got} >= set(down) else None)(
            ours(broker.read("oom", 2, timeout=2, settle=0))), timeout=90, what="the events sent while down", daemon=d)
        assert {x["pid"] for x in docs} == set(down)  # the first one was delivered before the outage
        assert d.stop() == 0
    finally:
        broker.stop()


def test_test_sinks_reports_each_sink_and_fails_if_one_refuses(slack, tmp_path):
    """`oom-journal test-sinks` as a user runs it right after configuring: a marked test event to
    each sink, one line per sink, exit 1 if any refused. Slack and Elasticsearch are stand-ins."""
    import os
    import shutil
    import subprocess
    import sys

    from es_standin import StandinElasticsearch

    exe = shutil.which("oom-journal", path=os.path.dirname(sys.executable))
    es = StandinElasticsearch().start()
    try:
        args = [exe, "test-sinks", "-c", "/dev/null", "--slack-webhook", slack.url, "--elasticsearch-server", es.url,
                "--elasticsearch-index", "oom-test"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "slack (slack webhook http://127.0.0.1/****): accepted" in r.stdout
        assert "elasticsearch" in r.stdout and r.stdout.count("accepted") == 2
        (post,) = slack.accepted()
        assert "Test event" in post.body.decode()
        docs = es.docs("oom-test")
        assert len(docs) == 1 and next(iter(docs.values()))["test"] is True
        assert slack.token not in r.stdout + r.stderr
        slack.respond_next(404, "no_service")
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        assert "slack" in r.stdout and "FAILED" in r.stdout and "no_service" in r.stdout
    finally:
        es.stop()


def test_related_kills_carry_one_incident_id_in_every_sink(memcg, daemon_factory, all_sinks):
    """Three kills in one unit within seconds are one incident: the same incident_id in the
    journal and in every sink's record (rsyslog and tansu for real, the Elasticsearch and Slack
    stand-ins, as none can be had here); each kill keeps its own record."""
    from test_sink_kafka import KAFKA2
    from test_sink_syslog import SD_ID

    slack, es, syslog, broker = all_sinks.slack, all_sinks.es, all_sinks.syslog, all_sinks.broker
    d = daemon_factory(*all_sinks.args(), env={"PYTHONPATH": str(KAFKA2)}).start()
    d.wait_caught_up()
    cg = memcg()
    pids = [kill_in(cg, victim_argv(f"incident-{i}-" + uuid.uuid4().hex, 10)) for i in range(3)]
    d.wait_idle(last_pid=pids[-1], timeout=60)
    entries = [wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d])[0] for pid in pids]
    incidents = {e["OOM_INCIDENT_ID"] for e in entries}
    assert len(incidents) == 1, incidents
    incident = incidents.pop()
    first = min(entries, key=lambda e: int(e["OOM_KERNEL_TIMESTAMP_USEC"]))
    assert incident == first["OOM_EVENT_ID"]  # the first kill's event id
    ids = {e["OOM_EVENT_ID"] for e in entries}
    assert len(ids) == 3  # each kill keeps its own event
    want = set(pids)
    es_docs = [doc for i in es.indices for doc in es.docs(i).values() if doc["pid"] in want]
    assert len(es_docs) == 3 and {doc["incident_id"] for doc in es_docs} == {incident}
    kafka = [json.loads(m[3]) for m in broker.read("oom", 3, timeout=10, settle=0)]
    kafka = [doc for doc in kafka if doc["pid"] in want]
    assert len(kafka) == 3 and {doc["incident_id"] for doc in kafka} == {incident}
    records = wait_until(lambda: (lambda got: got if len(got) >= 3 else None)(
        [r["parsed"][SD_ID] for r in syslog.records() if r["parsed"].get(SD_ID, {}).get("pid") in {str(p) for p in want}]),
        what="every kill at rsyslog", daemon=d)
    assert len(records) == 3 and {r["incident_id"] for r in records} == {incident}
    assert all(f"OOM_INCIDENT_ID={incident}" in json.dumps(r.payload) for r in slack.accepted()
               if any(f"pid {p}" in json.dumps(r.payload) for p in pids))
    assert d.stop() == 0
