"""The Kafka sink: each event document as one message, keyed by the host name, on one topic.

Through confluent-kafka (librdkafka): Debian 12's python3-confluent-kafka 1.7.0 with librdkafka
2.0.2, and PyPI's 2.x, driven through the calls both have (Producer, produce, flush, purge,
list_topics, error_cb, logger).

The guarantees, and why:
- An idempotent producer (`enable.idempotence=true`, `acks=all`): the broker writes a message
  once per producer session even when librdkafka resends it, in order, so the events of one
  host (the key, hence one partition) stay in order.
- Each document's delivery report decides its outcome (see `outcome()`); nothing is OK until a
  broker has acknowledged it.
- deliver() is bounded by DELIVER_TIMEOUT (10 s): librdkafka gives a message up
  `message.timeout.ms` (8 s) after produce() and reports _MSG_TIMED_OUT; whatever still has no
  report at 10 s is purged from librdkafka, in its queue and in flight, and is RETRY (librdkafka
  2.0.2 did not time out messages while its only broker was down: the purge answered). So nothing
  of a returned batch stays inside librdkafka to be sent later on its own. A message purged in
  flight, or timed out, may still have been written by the broker: the outbox sends it again, a
  duplicate, never a loss (at-least-once; consumers deduplicate by the document's `event_id` and
  `kernel_report`: a completion, enrich/witness.py, is a second message of the same event_id,
  kernel_report "late", that supersedes the first; a compacted topic would need event_id as key).
- After a batch that was not delivered whole (any RETRY), the next try gets a new producer, with
  a new producer id. Some of librdkafka's idempotence states never recover: after a fatal error
  (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER) the producer sends nothing more; after the broker answered
  INVALID_PRODUCER_EPOCH, every later message is refused PRODUCER_FENCED without a fatal error;
  and against a broker that forgot its producer id (tansu restarted) librdkafka bumps its epoch
  locally and is refused UNKNOWN_PRODUCER_ID until the messages time out. All three were seen
  here, with both clients. A new producer costs a few milliseconds and one InitProducerId
  request, and a batch that failed has already waited; so rather than a list of such states to
  recognise, a failed batch replaces the producer.

`--kafka-option KEY=VALUE` passes librdkafka settings through (security.protocol, sasl.*, ssl.*,
compression.type, ...) and overrides the defaults below, except where it would break the
guarantees (see `check_options()`): what could lose acknowledged events or make a delivery
report lie (acks other than all, reports only for errors, transactions, Python callbacks, another
bootstrap list) is refused at open(), naming --kafka-option, because a warning in a log nobody
reads would not stop events from being lost. Turning idempotence off loses no event (the outbox
retries until a broker acknowledges) but allows duplicates and reordering within a host: it is
allowed with a warning, for brokers without idempotence (Kafka before 0.11, some services).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from oom_journal.text import json_line
from oom_journal.redact import Scrubber, is_secret_kafka_key, mask
from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery, Sink, SinkUnavailable

log = logging.getLogger(__name__)

DELIVER_TIMEOUT = 10.0  # seconds one deliver() may block, every document included
MESSAGE_TIMEOUT_MS = 8000  # librdkafka's limit per message, so that its reports come before ours
PROBE_TIMEOUT = 4.0  # the daemon waits 5 s for all probes together
SERVE_EVERY = 1.0  # seconds between servings of librdkafka's queue while no delivery runs
OPTION = "--kafka-option"

DEFAULTS = {
    "enable.idempotence": "true",
    "acks": "all",
    "message.timeout.ms": str(MESSAGE_TIMEOUT_MS),
    # OOM kills come alone or in bursts: 5 ms lets a burst share a request and delays a lone
    # event by at most that (librdkafka 1.x waited 0.5 ms, 2.x 5 ms).
    "linger.ms": "5",
    "client.id": "oom-journal",
}
# Broker answers that refuse this message for good (Kafka's own client does not retry them
# either): FAILED. Every other error is RETRY: an error we do not know keeps the event in the
# outbox rather than dropping it.
PERMANENT = {
    "MSG_SIZE_TOO_LARGE",  # message.max.bytes (client) or max.message.bytes (topic)
    "RECORD_LIST_TOO_LARGE",
    "INVALID_RECORD",
    "TOPIC_EXCEPTION",  # an invalid topic name
    "TOPIC_AUTHORIZATION_FAILED",
    "POLICY_VIOLATION",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    "UNSUPPORTED_COMPRESSION_TYPE",
    "INVALID_REQUIRED_ACKS",
    "INVALID_CONFIG",
    "_INVALID_ARG",
}
# The topic is missing: RETRY. It may be created soon (by an operator, or by the broker on the
# next metadata request when auto.create.topics.enable is on); the events wait in the outbox,
# and probe() says at start that the topic does not exist. (Without the topic, librdkafka holds
# the message until message.timeout.ms: the report is then _MSG_TIMED_OUT.)
MISSING_TOPIC = {"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION"}
# Settings that would make a delivery report lie, or take the sink's own place: refused.
_CALLBACK = "a Python callback cannot be set from the configuration"
REFUSED = {
    "bootstrap.servers": "give the brokers with --kafka-brokers",
    "metadata.broker.list": "give the brokers with --kafka-brokers",
    "transactional.id": "the Kafka sink does not use transactions",
    "dr_cb": _CALLBACK, "dr_msg_cb": _CALLBACK, "on_delivery": _CALLBACK, "error_cb": _CALLBACK,
    "throttle_cb": _CALLBACK, "stats_cb": _CALLBACK, "oauth_cb": _CALLBACK, "logger": _CALLBACK,
}


def check_options(options: dict) -> list:
    """Refuses passthrough settings that would break the guarantees (SinkUnavailable naming
    --kafka-option); returns warnings for those that only weaken them."""
    warnings = []
    for key, value in options.items():
        shown = mask(value) if is_secret_kafka_key(key) else value
        low = value.strip().lower()
        if key in REFUSED:
            raise SinkUnavailable(OPTION, f"{key}: {REFUSED[key]}")
        if key in ("acks", "request.required.acks") and low not in ("all", "-1"):
            raise SinkUnavailable(OPTION, f"{key}={shown}: a broker could lose events it acknowledged; "
                                          "the Kafka sink needs acks=all")
        if key == "delivery.report.only.error" and low not in ("false", "f", "0"):
            raise SinkUnavailable(OPTION, f"{key}={shown}: the Kafka sink needs a delivery report for "
                                          "every message")
        if key == "enable.idempotence" and low in ("false", "f", "0"):
            warnings.append(f"{key}={shown}: a message librdkafka resends can be written twice, and "
                            "the events of one host can change order (none is lost)")
        if key in ("message.timeout.ms", "delivery.timeout.ms") and low.isdigit() \
                and int(low) >= DELIVER_TIMEOUT * 1000:
            warnings.append(f"{key}={shown}: a message without an acknowledgement after "
                            f"{DELIVER_TIMEOUT:.0f} s is taken back and sent again later anyway")
    return warnings


def encode(document: dict) -> bytes:
    """The document as UTF-8 JSON. Hostile text in it is already escaped (event._text); a lone
    surrogate anywhere else falls back to \\uXXXX escapes, which are ASCII and valid JSON."""
    return json_line(document, compact=True).encode("utf-8")


def outcome(error, topic: str) -> Delivery:
    """The outcome of one message whose delivery report, or produce(), carried `error`."""
    name = error.name()
    if name in PERMANENT:
        return Delivery(FAILED, f"refused: {name} ({error.str()})")
    if name in MISSING_TOPIC:
        return Delivery(RETRY, f"topic {topic} does not exist ({name})")
    if name == "_MSG_TIMED_OUT":
        return Delivery(RETRY, f"no acknowledgement within {MESSAGE_TIMEOUT_MS / 1000:.0f} s")
    if name in ("_PURGE_QUEUE", "_PURGE_INFLIGHT"):
        return Delivery(RETRY, f"no acknowledgement within {DELIVER_TIMEOUT:.0f} s")
    if name == "_FATAL":
        return Delivery(RETRY, "librdkafka's producer had a fatal error; a new one will send it")
    return Delivery(RETRY, f"{name} ({error.str()})")


def _error_of(exc: BaseException):
    """The KafkaError an exception carries, if any. confluent-kafka raises a fatal error out of
    flush()/poll() as KafkaException, or as a SystemError whose cause is that KafkaException when
    it arrived during a delivery callback (seen with 1.7.0 and 2.16.1)."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is not None and e.args and hasattr(e.args[0], "name") and hasattr(e.args[0], "str"):
            return e.args[0]
    return None


class _LibrdkafkaLog:
    """librdkafka's log lines, through our logger. They come at every reconnect while a broker
    is down, and the same errors reach error_cb (and so Delivery.error): DEBUG. Configuration
    warnings (CONFWARN: a setting that does nothing for a producer) stay warnings."""

    def __init__(self, scrub):
        self.scrub = scrub

    def log(self, level, fmt, *args):
        try:
            text = fmt % args if args else str(fmt)
        except (TypeError, ValueError):
            text = " ".join(str(a) for a in (fmt,) + args)
        facility = args[0] if args else ""
        log.log(logging.WARNING if facility == "CONFWARN" else logging.DEBUG, "librdkafka: %s", self.scrub(text))


class _Reports:
    """The delivery reports of one deliver() call.

    The callback only appends: confluent-kafka can call it with a fatal error's exception already
    set, and then the first C-level call inside raises SystemError (seen with 1.7.0 and 2.16.1:
    "<method 'append' of 'list' objects> returned a result with an exception set"). A lock taken
    there stayed taken, and the next report waited on it for ever. Callbacks run only inside
    poll()/flush(), which the sink calls under its own lock, so none run at the same time.
    A report that comes after the call ended lands in a list nobody reads any more.
    """

    def __init__(self, count: int, topic: str):
        self.topic = topic
        self.results: list = [None] * count
        self.reported: list = []  # (index, error), in the order librdkafka reported them
        self.produced = 0  # messages librdkafka accepted, each of which will have one report

    def callback(self, index: int):
        reported = self.reported
        return lambda error, msg: reported.append((index, error))

    @property
    def waiting(self) -> int:
        return self.produced - len(self.reported)

    def refused_at_produce(self, index: int, result: Delivery) -> None:
        self.results[index] = result

    def settle(self) -> None:
        """Fills in the reported outcomes."""
        for index, error in list(self.reported):
            if self.results[index] is None:
                self.results[index] = Delivery(OK) if error is None else outcome(error, self.topic)


class KafkaSink(Sink):
    name = "kafka"
    option = "--kafka-brokers"
    # librdkafka batches messages itself: 200 documents take milliseconds (measured against
    # tansu in tests/test_sink_kafka.py), far inside the bound.
    max_batch = 200
    timeout = DELIVER_TIMEOUT

    def __init__(self, cfg, deliver_timeout: float = DELIVER_TIMEOUT):
        self.brokers = ",".join(b.strip() for b in cfg.kafka_brokers.split(","))
        self.topic = cfg.kafka_topic
        self.options = dict(getattr(cfg, "kafka_options", None) or {})
        self.timeout = deliver_timeout
        self._scrubber = Scrubber(v for k, v in self.options.items() if is_secret_kafka_key(k) and v)
        self._kafka: Any = None  # the confluent_kafka module, imported by open()
        self._conf: dict = {}
        self._producer: Any = None
        self._lock = threading.Lock()  # deliver() and close(); the producer is replaced under it
        self._fatal: Optional[str] = None
        self._last_error = ""
        self.producers_created = 0  # for the log and the tests: each replacement counts
        self._closed = threading.Event()
        self._server: Optional[threading.Thread] = None

    # --- setup -------------------------------------------------------------------------------
    def open(self) -> None:
        try:
            import confluent_kafka
        except ImportError:
            raise SinkUnavailable(self.option, "the kafka sink needs confluent_kafka: "
                                               "apt install python3-confluent-kafka") from None
        for warning in check_options(self.options):
            log.warning("kafka sink: %s %s", OPTION, warning)
        self._kafka = confluent_kafka
        conf = dict(DEFAULTS)
        conf.update(self.options)
        conf["bootstrap.servers"] = self.brokers
        self._conf = conf
        self._producer = self._new_producer(refuse=True)
        self._server = threading.Thread(target=self._serve, name="kafka-sink-poll", daemon=True)
        self._server.start()

    def _serve(self) -> None:
        """Serves librdkafka's queue between deliveries. Its errors and log lines wait there
        until someone polls: measured with confluent-kafka 2.16 while the broker was down, 126
        errors and 121 log lines a minute, which an idle daemon would otherwise pile up for as
        long as the broker stays down. Under the lock, so never at the same time as deliver()."""
        while not self._closed.wait(SERVE_EVERY):
            with self._lock:
                if self._producer is None:
                    continue
                try:
                    self._producer.poll(0)
                except Exception as e:  # 2.x raises a fatal error here: the next deliver() replaces it
                    error = _error_of(e)
                    self._fatal = self._fatal or (self.scrub(error.str()) if error is not None else type(e).__name__)

    def _new_producer(self, refuse: bool = False):
        """A new producer. With refuse, a configuration librdkafka rejects (checked when the
        producer is created, before any connection) is SinkUnavailable naming --kafka-option."""
        conf = dict(self._conf, error_cb=self._on_error, logger=_LibrdkafkaLog(self.scrub))
        try:
            producer = self._kafka.Producer(conf)
        except Exception as e:  # KafkaException(_INVALID_ARG); ValueError/TypeError for a bad type
            error = _error_of(e)
            # 'No such configuration property: "x"', 'Invalid value "y" for configuration property
            # "z"', '`acks` must be set to `all` when `enable.idempotence` is true'
            text = self.scrub(error.str() if error is not None else str(e))
            if refuse:
                raise SinkUnavailable(OPTION, f"librdkafka refuses the Kafka configuration: {text}") from None
            raise RuntimeError(text) from None
        self._fatal = None
        self.producers_created += 1
        return producer

    def describe(self) -> str:
        text = f"kafka topic {self.topic} at {self.brokers}"
        if self.options:
            text += " with " + ", ".join(f"{k}={mask(v) if is_secret_kafka_key(k) else v}"
                                         for k, v in sorted(self.options.items()))
        return text

    def scrub(self, text: str) -> str:
        """Text from librdkafka with the configured secrets replaced: librdkafka does not quote
        them, but a broker's or a TLS library's message might (redact.py: as given and URL-encoded)."""
        return self._scrubber(text)

    def _on_error(self, error) -> None:
        """librdkafka's error_cb (served in poll/flush, in the caller's thread). The last error
        is kept until a batch is delivered whole: it says why the next RETRY happens."""
        text = self.scrub(error.str())
        self._last_error = text
        if error.fatal():
            self._fatal = f"{error.name()}: {text}"
            log.error("kafka sink: librdkafka fatal error: %s", text)
        else:
            log.debug("kafka sink: %s", text)

    # --- the check at start --------------------------------------------------------------------
    def probe(self) -> Optional[str]:
        """Asks a broker for the topic's metadata. A broker that creates topics on demand
        (auto.create.topics.enable) creates it now, as it would at the first event."""
        producer = self._producer
        if producer is None:
            return "no producer (it is being replaced after an error)"
        try:
            metadata = producer.list_topics(self.topic, timeout=PROBE_TIMEOUT)
        except Exception as e:  # KafkaException(_TRANSPORT, _TIMED_OUT, ...)
            error = _error_of(e)
            detail = self._last_error or self.scrub(error.str() if error is not None else type(e).__name__)
            return f"no broker answered within {PROBE_TIMEOUT:.0f} s: {detail}"
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            name = topic.error.name() if topic is not None else "UNKNOWN_TOPIC_OR_PART"
            if name in MISSING_TOPIC:
                return f"topic {self.topic} does not exist"
            return f"topic {self.topic}: {name} ({self.scrub(topic.error.str())})"
        return None

    # --- delivery --------------------------------------------------------------------------------
    def deliver(self, documents: list) -> list:
        if not documents:
            return []
        deadline = time.monotonic() + self.timeout
        with self._lock:
            if self._closed.is_set():
                return [Delivery(RETRY, "the Kafka sink is closed")] * len(documents)
            if self._producer is not None and self._fatal is not None:  # found while idle
                self._replace_producer(self._producer, self._fatal)
            if self._producer is None:
                try:
                    self._producer = self._new_producer()
                except RuntimeError as e:
                    return [Delivery(RETRY, f"cannot create a producer: {e}")] * len(documents)
            producer = self._producer
            reports = _Reports(len(documents), self.topic)
            broken = None  # an exception out of librdkafka: the producer is replaced
            try:
                for i, document in enumerate(documents):
                    self._produce(producer, reports, i, document, deadline)
                while reports.waiting > 0 and self._fatal is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    producer.flush(left)
            except Exception as e:  # fatal errors come out of flush/poll (see _error_of)
                error = _error_of(e)
                broken = self.scrub(error.str()) if error is not None else type(e).__name__
                log.error("kafka sink: the producer failed: %s", broken)
            if reports.waiting > 0:
                # Nothing of this batch stays inside librdkafka (see the module's doc).
                self._purge(producer)
            reports.settle()
            fatal = self._fatal or broken
            finished = self._finish(reports.results, fatal)
            retry = [r.error for r in finished if r.outcome == RETRY]
            if fatal is not None or retry:
                self._replace_producer(producer, fatal or retry[0])
            if all(r.outcome == OK for r in finished):
                self._last_error = ""  # what went wrong before is over
            return finished

    def _produce(self, producer, reports: _Reports, index: int, document: dict, deadline: float) -> None:
        """Hands one document to librdkafka, or records why it refused it."""
        hostname = document.get("hostname")
        key = hostname.encode("utf-8", "backslashreplace") if isinstance(hostname, str) else None
        value = encode(document)
        while True:
            try:
                producer.produce(self.topic, value=value, key=key, on_delivery=reports.callback(index))
            except BufferError:
                # librdkafka's queue is full (queue.buffering.max.messages/kbytes): let it drain.
                if time.monotonic() >= deadline:
                    reports.refused_at_produce(index, Delivery(RETRY, "librdkafka's queue is full"))
                    return
                producer.poll(0.05)
                continue
            except self._kafka.KafkaException as e:
                error = e.args[0]
                if error.name() == "MSG_SIZE_TOO_LARGE":
                    limit = self._conf.get("message.max.bytes", "1000000")
                    result = Delivery(FAILED, f"refused: MSG_SIZE_TOO_LARGE: the document is {len(value)} bytes, "
                                              f"more than message.max.bytes ({limit}); raise it with {OPTION} "
                                              "message.max.bytes=N, and the topic's max.message.bytes")
                else:
                    result = outcome(error, self.topic)
                reports.refused_at_produce(index, result)
                return
            reports.produced += 1
            producer.poll(0)  # serves the reports that are ready as we go
            return

    def _finish(self, results: list, fatal: Optional[str]) -> list:
        """Fills the results that have no report, and says why for each RETRY."""
        detail = f" ({fatal})" if fatal else (f"; last broker error: {self._last_error}" if self._last_error else "")
        finished = []
        for r in results:
            if r is None:
                r = Delivery(RETRY, f"no delivery report within {self.timeout:.0f} s")
            if r.outcome == RETRY and detail:
                r = Delivery(RETRY, r.error + detail, r.retry_after)
            finished.append(r)
        return finished

    def _purge(self, producer) -> None:
        try:
            producer.purge(in_queue=True, in_flight=True)
            producer.flush(1.0)  # serves the purge reports, which are already queued
        except Exception as e:  # a fatal error again: the producer is replaced anyway
            log.debug("kafka sink: purging failed: %s", type(e).__name__)

    def _replace_producer(self, old, reason: str) -> None:
        """Replaces the producer (see the module's doc). Called with self._lock held."""
        log.debug("kafka sink: replacing the producer (%s)", reason)
        self._purge(old)
        self._producer = None  # the old one is destroyed with its last reference; its queue is
        # empty then, so that returns at once (measured: under 2 ms, broker down or hung)
        try:
            self._producer = self._new_producer()
        except RuntimeError as e:
            log.error("kafka sink: cannot create a new producer: %s; trying again at the next delivery", e)

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.join(SERVE_EVERY + DELIVER_TIMEOUT)
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            # deliver() leaves nothing in it (every message was reported or purged): this
            # returns at once, after serving what librdkafka still has to say (logs, errors).
            self._purge(producer)
