"""The Kafka sink, with both confluent-kafka clients, against a REAL Kafka-protocol broker.

The broker is tansu (tests/kafka_broker.py; ../shared/REAL-COMPONENTS.md), started by the test
on a free loopback port and stopped, hung (SIGSTOP) and restarted by its pid. Every broker test
runs twice: with Debian's client (python3-confluent-kafka 1.7.0, librdkafka 2.0.2) in this
process, and with PyPI's 2.x in a second interpreter that loads it from .deps/kafka2 (PYTHONPATH)
and runs the same scenario code (this file, run as a script), its own broker included. The tests
assert on what the broker holds, read back with a consumer from offset 0.
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KAFKA2 = REPO / ".deps" / "kafka2"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_broker import TansuBroker  # noqa: E402

CLIENTS = ("debian-1.7", "pypi-2")
BOUND = 10.0 + 1.0  # DELIVER_TIMEOUT, and a second for a loaded test machine
SECRET = "Sasl-Pw:hunter2/ü%41"
KEY_SECRET = "ssl-key-Pw-7f3a9c"
HOSTILE_ARGV = [b"/usr/bin/java", b"-Dpass=\"quoted\"", b"evil\nline", b"\x1b[31mred\x1b[0m", b"<!channel>",
                b"back\\slash]", b"\xff\xfe-not-utf8", "ünïcødé ✓ 日本".encode(), b"--pad=" + b"p" * (128 << 10)]


# --- the scenario: runs the sink in this process or in the 2.x interpreter -----------------------
def scenario(steps: list, workdir: str) -> dict:
    """Starts a broker in `workdir`, then runs steps against it and the sink; every log record
    of oom_journal (librdkafka's lines included) is captured at DEBUG."""
    import confluent_kafka

    from oom_journal.sinks.base import SinkUnavailable
    from oom_journal.sinks.kafka import KafkaSink

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("oom_journal")
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    broker = TansuBroker(Path(workdir)).start()
    sink, results = None, []
    try:
        for step in steps:
            op, args = step[0], step[1:]
            started = time.monotonic()
            out = None
            if op == "topic":
                broker.create_topic(args[0], partitions=args[1] if len(args) > 1 else 1)
            elif op == "open":
                cfg = types.SimpleNamespace(kafka_brokers=broker.bootstrap, kafka_topic=args[0],
                                            kafka_options=args[1] if len(args) > 1 else {})
                sink = KafkaSink(cfg)
                try:
                    sink.open()
                    out = {"describe": sink.describe()}
                except SinkUnavailable as e:
                    out = {"error": [e.option, str(e)]}
                    sink = None
            elif op == "probe":
                out = sink.probe()
            elif op == "deliver":
                out = [[d.outcome, d.error, d.retry_after] for d in sink.deliver(args[0])]
            elif op == "deliver_until_ok":  # as the outbox does, without its backoff
                attempts, deadline = [], time.monotonic() + args[1]
                while True:
                    t = time.monotonic()
                    got = [[d.outcome, d.error, d.retry_after] for d in sink.deliver(args[0])]
                    attempts.append({"out": got, "seconds": time.monotonic() - t})
                    if all(g[0] == "ok" for g in got) or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                out = attempts
            elif op == "stop":
                broker.stop()
            elif op == "start":
                broker.start()
            elif op == "sigstop":
                broker.hang()
            elif op == "sigcont":
                broker.resume()
            elif op == "read":
                out = [[p, o, k.decode() if k is not None else None, v.decode()]
                       for p, o, k, v in broker.read(args[0], args[1], partitions=args[2] if len(args) > 2 else (0,))]
            elif op == "inject":
                broker.relay.fail_next_produce(args[0])
            elif op == "bytes_to_broker":
                out = broker.relay.bytes_to_broker
            elif op == "client_ids":
                out = sorted(broker.relay.client_ids)
            elif op == "close":
                sink.close()
                sink = None
            else:
                raise ValueError(op)
            results.append({"op": op, "out": out, "seconds": time.monotonic() - started})
    finally:
        if sink is not None:
            sink.close()
        if broker.proc is not None and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)  # a hung broker stops too
        broker.stop()
        logger.removeHandler(handler)
        logger.setLevel(saved)
    return {"client": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0],
            "results": results, "log": buffer.getvalue(), "rewritten": broker.relay.rewritten}


def run(client: str, steps: list, tmp_path: Path) -> dict:
    problem = TansuBroker.available()
    if problem:
        unavailable(problem)
    workdir = tempfile.mkdtemp(dir=tmp_path)
    if client == "debian-1.7":
        try:
            import confluent_kafka
        except ImportError:
            unavailable("Debian's python3-confluent-kafka is not installed (scripts/install-deps)")
        if confluent_kafka.__file__.startswith(str(KAFKA2)):
            pytest.fail("this process must use Debian's confluent-kafka, not .deps/kafka2")
        out = scenario(steps, workdir)
        assert out["client"].startswith("1.7."), out["client"]
        # Debian's librdkafka cannot read tansu's ApiVersions answer: the relay mends it
        # (tests/kafka_broker.py). It must have been needed, or the premise is wrong.
        if any(step[0] in ("topic", "probe", "deliver") for step in steps):
            assert out["rewritten"] > 0
        out["stderr"] = ""
        return out
    if not (KAFKA2 / "confluent_kafka").is_dir():
        unavailable(f"PyPI's confluent-kafka 2.x is not in {KAFKA2} (scripts/install-deps --test)")
    proc = subprocess.run([sys.executable, __file__], input=json.dumps([steps, workdir]),
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=f"{KAFKA2}:{REPO}"))
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["client"].startswith("2."), f"the subprocess loaded confluent-kafka {out['client']}, not 2.x"
    assert out["rewritten"] == 0  # 2.x talked to tansu unaltered
    out["stderr"] = proc.stderr
    return out


def unavailable(reason):
    from conftest import unavailable as skip_or_fail
    skip_or_fail(reason)


@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


def event_doc(pid=1234, hostname="web1", argv=None, timestamp_us=None) -> dict:
    """A realistic document; its event_id (boot id + kernel timestamp) follows the pid."""
    from test_event import Lookup, kill

    from oom_journal.enrich.event import OomEvent
    from oom_journal.model import HostInfo

    host = HostInfo(hostname=hostname, boot_id="4b280df657cf4c99b6e230a7c3f459ca", kernel="6.18.44")
    e = OomEvent.build(kill(pid=pid, timestamp_us=79928453 + pid if timestamp_us is None else timestamp_us), host,
                       Lookup(argv or [b"java", b"-jar", f"app-{pid}.jar".encode()]), event_time=1795060392.123456)
    return json.loads(json.dumps(e.document()))


def outs(out: dict, op: str) -> list:
    return [r for r in out["results"] if r["op"] == op]


def by_event(messages: list) -> dict:
    counts = {}
    for m in messages:
        event_id = json.loads(m[3])["event_id"]
        counts[event_id] = counts.get(event_id, 0) + 1
    return counts


# --- tests with the broker ---------------------------------------------------------------------
def test_document_is_one_message_keyed_by_hostname_with_the_full_cmdline(client, tmp_path):
    doc = event_doc(argv=HOSTILE_ARGV)
    out = run(client, [["topic", "oom"], ["open", "oom"], ["probe"], ["deliver", [doc]], ["read", "oom", 1]], tmp_path)
    assert outs(out, "open")[0]["out"]["describe"].startswith("kafka topic oom at 127.0.0.1:")
    assert outs(out, "probe")[0]["out"] is None
    assert outs(out, "deliver")[0]["out"] == [["ok", "", None]]
    (message,) = outs(out, "read")[0]["out"]  # one message, not one per line or per chunk
    partition, offset, key, value = message
    assert key == "web1"
    assert "ünïcødé ✓ 日本" in value  # UTF-8 JSON, not \\u escapes
    got = json.loads(value)
    assert got == doc  # every field; the 128 KiB hostile command line whole
    assert len(got["cmdline"]) > 128 << 10 and "evil\nline" in got["cmdline"] and "\x1b[31m" in got["cmdline"]
    assert "\\xff\\xfe-not-utf8" in got["cmdline"] and "ünïcødé ✓ 日本" in got["cmdline"]
    assert got["argv"][1] == '-Dpass="quoted"' and got["argv"][5] == "back\\slash]"


def test_broker_down_is_retry_within_the_bound_then_the_same_documents_arrive(client, tmp_path):
    first, a, b = event_doc(pid=1), event_doc(pid=2), event_doc(pid=3)
    out = run(client, [["topic", "oom"], ["open", "oom"], ["deliver", [first]],
                       ["stop"], ["probe"], ["deliver", [a, b]],
                       # tansu keeps topics in memory: after its restart the operator creates it again
                       ["start"], ["topic", "oom"], ["deliver_until_ok", [a, b], 30], ["read", "oom", 2]], tmp_path)
    assert outs(out, "deliver")[0]["out"] == [["ok", "", None]]
    down = outs(out, "deliver")[1]
    assert [o[0] for o in down["out"]] == ["retry", "retry"], down
    assert "no acknowledgement within" in down["out"][0][1]
    assert down["seconds"] < BOUND, f"deliver() blocked {down['seconds']:.1f} s with the broker down"
    assert outs(out, "probe")[0]["out"].startswith("no broker answered within 4 s")

    attempts = outs(out, "deliver_until_ok")[0]["out"]
    assert attempts[-1]["out"] == [["ok", "", None], ["ok", "", None]], attempts
    assert all(x["seconds"] < BOUND for x in attempts)
    counts = by_event(outs(out, "read")[0]["out"])
    assert counts.keys() == {a["event_id"], b["event_id"]}  # both, at least once
    duplicates = sum(c - 1 for c in counts.values())
    print(f"\n{client}: broker down: RETRY after {down['seconds']:.2f} s; after the restart "
          f"{len(attempts)} deliver() call(s), duplicates on the topic: {duplicates}")


def test_broker_restarted_between_deliveries_forgot_the_producer_id(client, tmp_path):
    """The broker lost the idempotent producer's id (in-memory tansu restarted while no delivery
    ran): librdkafka bumps its epoch locally, tansu refuses each (UNKNOWN_PRODUCER_ID) until the
    message times out. The document comes back RETRY within the bound, the producer is replaced,
    and the next try delivers it."""
    a, b = event_doc(pid=1), event_doc(pid=2)
    out = run(client, [["topic", "oom"], ["open", "oom"], ["deliver", [a]], ["stop"], ["start"], ["topic", "oom"],
                       ["deliver_until_ok", [b], 40], ["read", "oom", 1]], tmp_path)
    assert outs(out, "deliver")[0]["out"] == [["ok", "", None]]
    attempts = outs(out, "deliver_until_ok")[0]["out"]
    assert attempts[-1]["out"] == [["ok", "", None]], attempts
    assert all(x["seconds"] < BOUND for x in attempts), attempts
    assert len(attempts) <= 3, attempts
    if len(attempts) > 1:
        assert "replacing the producer" in out["log"]
    assert by_event(outs(out, "read")[0]["out"]) == {b["event_id"]: 1}
    print(f"\n{client}: after the restart: {[(x['out'][0][0], round(x['seconds'], 2)) for x in attempts]}")


@pytest.mark.parametrize("error_code, name", [(45, "OUT_OF_ORDER_SEQUENCE_NUMBER"), (47, "INVALID_PRODUCER_EPOCH")])
def test_broken_idempotence_state_is_retry_and_a_new_producer_delivers(client, tmp_path, error_code, name):
    """The relay answers one Produce request with `name` (the broker itself stored the batch).
    OUT_OF_ORDER_SEQUENCE_NUMBER is a librdkafka fatal error; after INVALID_PRODUCER_EPOCH the
    producer refuses everything with PRODUCER_FENCED, without a fatal error. Both clients."""
    docs = [event_doc(pid=p) for p in (1, 2, 3)]
    out = run(client, [["topic", "oom"], ["open", "oom"], ["deliver", docs[:1]], ["inject", error_code],
                       ["deliver", docs[1:]], ["deliver", docs[1:]], ["read", "oom", 3]], tmp_path)
    first, broken, again = outs(out, "deliver")
    assert first["out"] == [["ok", "", None]]
    assert [o[0] for o in broken["out"]] == ["retry", "retry"] and name in broken["out"][0][1], broken
    assert broken["seconds"] < 2
    assert "replacing the producer" in out["log"]
    if name == "OUT_OF_ORDER_SEQUENCE_NUMBER":
        assert "fatal" in out["log"] or "the producer failed" in out["log"]
    assert again["out"] == [["ok", "", None]] * 2
    counts = by_event(outs(out, "read")[0]["out"])
    assert counts.keys() == {d["event_id"] for d in docs}
    assert counts[docs[0]["event_id"]] == 1
    print(f"\n{client}: {name}: the failed batch is on the topic twice (at-least-once): {counts}")


def test_hung_broker_is_retry_within_the_bound_and_nothing_is_lost(client, tmp_path):
    """SIGSTOP: connections stay open and nothing answers (in-flight requests included)."""
    docs = [event_doc(pid=p) for p in (1, 2, 3)]
    out = run(client, [["topic", "oom"], ["open", "oom"], ["deliver", docs[:1]], ["sigstop"],
                       ["deliver", docs[1:]], ["sigcont"], ["deliver_until_ok", docs[1:], 30],
                       ["read", "oom", 3]], tmp_path)
    hung = outs(out, "deliver")[1]
    assert [o[0] for o in hung["out"]] == ["retry", "retry"], hung
    assert hung["seconds"] < BOUND, f"deliver() blocked {hung['seconds']:.1f} s with the broker hung"
    assert outs(out, "deliver_until_ok")[0]["out"][-1]["out"] == [["ok", "", None]] * 2
    counts = by_event(outs(out, "read")[0]["out"])
    assert counts.keys() == {d["event_id"] for d in docs}
    print(f"\n{client}: hung broker: RETRY after {hung['seconds']:.2f} s; "
          f"duplicates on the topic: {sum(c - 1 for c in counts.values())}")


def test_200_documents_arrive_in_order_per_host_and_deliver_time(client, tmp_path):
    # Two hosts on a 4-partition topic: each host's events all on one partition, in order.
    docs = [event_doc(pid=1000 + i, hostname=("web1", "db2")[i % 2], timestamp_us=1_000_000 + i) for i in range(200)]
    one = event_doc(pid=1, hostname="web1", timestamp_us=1)
    out = run(client, [["topic", "oom", 4], ["open", "oom"], ["deliver", [one]], ["deliver", [one]],
                       ["deliver", docs], ["read", "oom", 202, [0, 1, 2, 3]]], tmp_path)
    single, warm, batch = outs(out, "deliver")
    assert single["out"] == warm["out"] == [["ok", "", None]]
    assert batch["out"] == [["ok", "", None]] * 200
    messages = outs(out, "read")[0]["out"]
    assert len(messages) == 202
    for host in ("web1", "db2"):
        mine = sorted((m for m in messages if m[2] == host), key=lambda m: m[1])
        assert len({m[0] for m in mine}) == 1, f"{host}'s events are on several partitions"
        stamps = [json.loads(m[3])["kernel_timestamp_us"] for m in mine]
        assert stamps == sorted(stamps) and len(stamps) == (102 if host == "web1" else 100)
    assert batch["seconds"] < 5
    print(f"\n{client}: deliver() of 1 document: {single['seconds'] * 1000:.1f} ms (first, with the "
          f"connection and producer id), {warm['seconds'] * 1000:.1f} ms (next); of 200 documents: "
          f"{batch['seconds'] * 1000:.1f} ms")


def test_passthrough_options_compression_and_client_id_are_applied(client, tmp_path):
    # 300 KB of one letter: gzip makes it about 1 KB on the wire (the relay counts the bytes).
    doc = event_doc(argv=[b"python3", b"-c", b"x" * 300_000])
    out = run(client, [["topic", "oom"], ["open", "oom", {"compression.type": "gzip", "client.id": "oomj-test"}],
                       ["bytes_to_broker"], ["deliver", [doc]], ["bytes_to_broker"], ["read", "oom", 1],
                       ["client_ids"]], tmp_path)
    assert outs(out, "open")[0]["out"]["describe"].endswith("with client.id=oomj-test, compression.type=gzip")
    assert "oomj-test" in outs(out, "client_ids")[0]["out"]  # in the broker's request headers
    assert outs(out, "deliver")[0]["out"] == [["ok", "", None]]
    before, after = (r["out"] for r in outs(out, "bytes_to_broker"))
    assert after - before < 50_000, f"{after - before} bytes sent for a 600 KB document: not compressed"
    ((_, _, _, value),) = outs(out, "read")[0]["out"]
    assert json.loads(value) == doc


def test_without_compression_the_same_document_is_sent_whole(client, tmp_path):
    """The control for the test above: the byte count can tell."""
    doc = event_doc(argv=[b"python3", b"-c", b"x" * 300_000])
    out = run(client, [["topic", "oom"], ["open", "oom"], ["bytes_to_broker"], ["deliver", [doc]],
                       ["bytes_to_broker"], ["client_ids"]], tmp_path)
    before, after = (r["out"] for r in outs(out, "bytes_to_broker"))
    assert after - before > 600_000
    assert "oom-journal" in outs(out, "client_ids")[0]["out"]  # the default client.id


def test_too_large_document_is_failed_and_the_rest_of_the_batch_arrives(client, tmp_path):
    small, large = event_doc(pid=1), event_doc(pid=2, argv=[b"x" * 20_000])
    out = run(client, [["topic", "oom"], ["open", "oom", {"message.max.bytes": "10000"}],
                       ["deliver", [small, large]], ["read", "oom", 1]], tmp_path)
    ok, failed = outs(out, "deliver")[0]["out"]
    assert ok == ["ok", "", None]
    assert failed[0] == "failed" and "MSG_SIZE_TOO_LARGE" in failed[1] and "message.max.bytes (10000)" in failed[1]
    assert by_event(outs(out, "read")[0]["out"]) == {small["event_id"]: 1}


def test_missing_topic_is_retry_and_probe_says_so_until_it_is_created(client, tmp_path):
    # Most clusters do not create topics on demand; tansu does, unless the client asks it not to.
    doc = event_doc()
    out = run(client, [["open", "oom-new", {"allow.auto.create.topics": "false"}], ["probe"], ["deliver", [doc]],
                       ["topic", "oom-new"], ["probe"], ["deliver_until_ok", [doc], 30], ["read", "oom-new", 1]],
              tmp_path)
    missing, present = (r["out"] for r in outs(out, "probe"))
    assert missing == "topic oom-new does not exist" and present is None
    waiting = outs(out, "deliver")[0]
    assert waiting["out"][0][0] == "retry" and waiting["seconds"] < BOUND
    assert outs(out, "deliver_until_ok")[0]["out"][-1]["out"] == [["ok", "", None]]
    assert list(by_event(outs(out, "read")[0]["out"]).values()) == [1]


def test_secrets_never_appear_in_describe_logs_or_errors(client, tmp_path):
    # SASL against a broker that does not do it here: real errors, with the secrets configured.
    options = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "oom-writer",
               "sasl.password": SECRET, "ssl.key.password": KEY_SECRET}
    out = run(client, [["topic", "oom"], ["open", "oom", options], ["probe"], ["deliver", [event_doc()]]], tmp_path)
    describe = outs(out, "open")[0]["out"]["describe"]
    assert "sasl.password=****" in describe and "ssl.key.password=****" in describe
    assert "sasl.username=oom-writer" in describe
    (result,) = outs(out, "deliver")[0]["out"]
    assert result[0] == "retry" and "SASL" in result[1], result  # the reason is there
    assert "librdkafka:" in out["log"]  # librdkafka's own lines were captured too
    for text in (describe, json.dumps(out["results"]), out["log"], out["stderr"]):
        assert SECRET not in text and KEY_SECRET not in text and "hunter2" not in text


@pytest.mark.parametrize("options, refused", [
    ({"no.such.property": "1"}, 'No such configuration property: "no.such.property"'),
    ({"linger.ms": "soon"}, 'Invalid value'),
    ({"acks": "1"}, "acks=1: a broker could lose events it acknowledged"),
    ({"request.required.acks": "0"}, "the Kafka sink needs acks=all"),
    ({"delivery.report.only.error": "true"}, "needs a delivery report for every message"),
    ({"bootstrap.servers": "10.0.0.1:9092"}, "give the brokers with --kafka-brokers"),
    ({"transactional.id": "x"}, "does not use transactions"),
    ({"max.in.flight": "50"}, "`max.in.flight` must be set <= 5 when `enable.idempotence` is true"),
    ({"linger.ms": "9000"}, "`message.timeout.ms` must be greater than `linger.ms`"),
])
def test_bad_passthrough_option_is_refused_at_open_naming_kafka_option(client, tmp_path, options, refused):
    out = run(client, [["open", "oom", options]], tmp_path)
    option, message = outs(out, "open")[0]["out"]["error"]
    assert option == "--kafka-option" and refused in message, message


def test_idempotence_off_is_allowed_with_a_warning_and_delivers(client, tmp_path):
    out = run(client, [["topic", "oom"], ["open", "oom", {"enable.idempotence": "false"}],
                       ["deliver", [event_doc()]], ["read", "oom", 1]], tmp_path)
    assert "oom_journal.sinks.kafka WARNING kafka sink: --kafka-option enable.idempotence=false" in out["log"]
    assert outs(out, "deliver")[0]["out"] == [["ok", "", None]]
    assert len(outs(out, "read")[0]["out"]) == 1


# --- tests without a broker ----------------------------------------------------------------------
def test_missing_library_is_sink_unavailable_naming_the_option(monkeypatch):
    from oom_journal.sinks.base import SinkUnavailable
    from oom_journal.sinks.kafka import KafkaSink

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # what `import` meets when it is absent
    sink = KafkaSink(types.SimpleNamespace(kafka_brokers="127.0.0.1:9", kafka_topic="oom", kafka_options={}))
    with pytest.raises(SinkUnavailable) as e:
        sink.open()
    assert e.value.option == "--kafka-brokers" and "apt install python3-confluent-kafka" in str(e.value)


def test_options_that_only_weaken_a_guarantee_are_warnings():
    from oom_journal.sinks.kafka import check_options

    warnings = check_options({"enable.idempotence": "False", "message.timeout.ms": "300000",
                              "compression.type": "zstd", "acks": "-1", "sasl.password": SECRET})
    assert len(warnings) == 2
    assert warnings[0].startswith("enable.idempotence=False: a message librdkafka resends can be written twice")
    assert warnings[1].startswith("message.timeout.ms=300000: a message without an acknowledgement after 10 s")
    assert check_options({"message.timeout.ms": "5000", "enable.idempotence": "true", "acks": "all"}) == []


def test_error_classification_table():
    try:
        import confluent_kafka
    except ImportError:
        unavailable("Debian's python3-confluent-kafka is not installed (scripts/install-deps)")
    from oom_journal.sinks.kafka import outcome

    E = confluent_kafka.KafkaError
    table = {
        E.MSG_SIZE_TOO_LARGE: "failed", E.TOPIC_AUTHORIZATION_FAILED: "failed", E.INVALID_CONFIG: "failed",
        E.RECORD_LIST_TOO_LARGE: "failed", E.INVALID_RECORD: "failed", E.POLICY_VIOLATION: "failed",
        E.UNSUPPORTED_COMPRESSION_TYPE: "failed", E.INVALID_REQUIRED_ACKS: "failed", 17: "failed",  # invalid topic
        E.UNKNOWN_TOPIC_OR_PART: "retry", E._UNKNOWN_TOPIC: "retry", E._UNKNOWN_PARTITION: "retry",
        E._MSG_TIMED_OUT: "retry", E._PURGE_QUEUE: "retry", E._PURGE_INFLIGHT: "retry", E._FATAL: "retry",
        E.NOT_ENOUGH_REPLICAS: "retry", E.NOT_LEADER_FOR_PARTITION: "retry", E.REQUEST_TIMED_OUT: "retry",
        E._TRANSPORT: "retry", E._ALL_BROKERS_DOWN: "retry", E.SASL_AUTHENTICATION_FAILED: "retry",
        E.CLUSTER_AUTHORIZATION_FAILED: "retry", E.OUT_OF_ORDER_SEQUENCE_NUMBER: "retry",
        E.UNKNOWN_PRODUCER_ID: "retry", E.KAFKA_STORAGE_ERROR: "retry", E.INVALID_MSG: "retry",
    }
    got = {code: outcome(E(code), "oom").outcome for code in table}
    assert got == table
    assert "topic oom does not exist" in outcome(E(E.UNKNOWN_TOPIC_OR_PART), "oom").error


def test_json_is_utf8_and_a_stray_surrogate_becomes_its_xnn_text():
    from oom_journal.sinks.kafka import encode

    doc = event_doc(argv=HOSTILE_ARGV)
    assert json.loads(encode(doc).decode("utf-8")) == doc
    assert "ünïcødé".encode() in encode(doc)  # UTF-8, not \\u escapes
    odd = dict(doc, unit="a" + b"\xff".decode("utf-8", "surrogateescape"))  # not through event._text
    raw = encode(odd)
    raw.decode("utf-8")  # never invalid UTF-8: consumers would fail to decode the message
    assert json.loads(raw)["unit"] == "a\\xff"  # as event documents render such bytes everywhere


def test_describe_masks_secret_values_and_keeps_the_rest():
    from oom_journal.redact import is_secret_kafka_key
    from oom_journal.sinks.kafka import KafkaSink

    sink = KafkaSink(types.SimpleNamespace(
        kafka_brokers="k1:9092, k2:9092", kafka_topic="oom",
        kafka_options={"sasl.password": SECRET, "sasl.oauthbearer.client.secret": "s3", "ssl.key.pem": "-----BEGIN",
                       "security.protocol": "SASL_SSL"}))
    text = sink.describe()
    assert text.startswith("kafka topic oom at k1:9092,k2:9092 with ")
    assert SECRET not in text and "s3" not in text and "BEGIN" not in text and "security.protocol=SASL_SSL" in text
    assert [k for k in ("sasl.password", "ssl.keystore.password", "ssl.key.password", "sasl.oauthbearer.config",
                        "sasl.username", "ssl.ca.location") if is_secret_kafka_key(k)] == [
        "sasl.password", "ssl.keystore.password", "ssl.key.password", "sasl.oauthbearer.config"]
    assert sink.scrub(f"auth failed for {SECRET}") == "auth failed for ****"


def test_relay_rewrites_only_the_tags_of_an_old_librdkafka_api_versions_answer():
    """The test relay itself (tests/kafka_broker.py): tansu's captured ApiVersions v3 answer."""
    from kafka_broker import _old_librdkafka, strip_api_versions_tags

    keys = struct.pack(">hhhB", 18, 0, 4, 0) + struct.pack(">hhhB", 0, 0, 11, 0)
    head = struct.pack(">ih", 1, 0) + b"\x03" + keys + struct.pack(">i", 0)  # 2 api keys, throttle 0
    tags = bytes.fromhex("04" "000101" "0108ffffffffffffffff" "020101" "030100")  # as tansu 0.6.0 sends them
    assert strip_api_versions_tags(head + tags) == head + b"\x00"
    assert strip_api_versions_tags(head + tags[:-1]) == head + tags[:-1]  # does not parse: unchanged
    assert strip_api_versions_tags(head + b"\x00") == head + b"\x00"
    request = struct.pack(">hhih", 18, 3, 1, 7) + b"rdkafka\x00" + b"\x17confluent-kafka-python"
    assert _old_librdkafka(request + b"\x141.7.0-rdkafka-2.0.2\x00")
    assert not _old_librdkafka(request + b"\x162.16.1-rdkafka-2.16.0\x00")


# --- the second interpreter ------------------------------------------------------------------
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    steps, workdir = json.loads(sys.stdin.read())
    print(json.dumps(scenario(steps, workdir)))
