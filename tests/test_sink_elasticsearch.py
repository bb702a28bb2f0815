"""The Elasticsearch sink, with both official clients, against a STAND-IN Elasticsearch server.

The server is tests/es_standin.py, a stand-in written from Elasticsearch's documented REST API,
because no real Elasticsearch can be had on these machines (../shared/REAL-COMPONENTS.md: no
distribution in Debian, PyPI or npm; the one imitation on PyPI is refused by the clients). What
the clients check of a server (the product header, the version body, the compatible-with media
types) was read from their source and is what the stand-in answers.

Every test runs twice: with Debian's client (python3-elasticsearch 7.17) in this process, and
with PyPI's 9.x client in a second interpreter that loads it from .deps/es9 (PYTHONPATH), where
the sink runs the same scenario code (this file, run as a script). The stand-in runs here; the
tests assert on what it received and read the documents back through its REST API.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ES9 = REPO / ".deps" / "es9"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from es_standin import StandinElasticsearch  # noqa: E402

CLIENTS = ("debian-7.17", "pypi-9")
PASSWORD = "Pw-3x/Yz:!ü secret%41"  # URL-special characters: quoted, encoded and base64 forms are checked
USER = "oom-writer"
API_KEY_ID, API_KEY = "VuaCfGcBCdbkQm-e5aOx", "ui2lp2axTNmsyakw9tvNnw"
API_KEY_ENCODED = base64.b64encode(f"{API_KEY_ID}:{API_KEY}".encode()).decode()
LOGGERS = ("", "elasticsearch", "elasticsearch.trace", "elastic_transport", "elastic_transport.node",
           "elastic_transport.transport", "elastic_transport.node_pool", "urllib3", "oom_journal")
HOSTILE_ARGV = [b"/usr/bin/java", b"-Dpass=\"quoted\"", b"evil\nline", b"\x1b[31mred\x1b[0m", b"<!channel>",
                b"back\\slash]", b"\xff\xfe-not-utf8", "ünïcødé ✓ 日本".encode(), b"--pad=" + b"p" * (128 << 10)]


# --- the scenario: runs the sink in this process or in the 9.x interpreter --------------------
def scenario(config: dict, steps: list, sink_kwargs: dict, log_level: str = "DEBUG") -> dict:
    """Opens the sink and runs steps ("probe", "describe", ["deliver", [documents]]), capturing
    every log record at `log_level` (the clients' loggers included: at DEBUG, all of them) and
    every warning."""
    import elasticsearch

    from oom_journal.sinks.elasticsearch import ElasticsearchSink

    cfg = types.SimpleNamespace(elasticsearch_server=None, elasticsearch_index="oom-events-%Y.%m.%d",
                                elasticsearch_user=None, elasticsearch_password=None, elasticsearch_api_key=None,
                                elasticsearch_ca_file=None, elasticsearch_verify_tls=True)
    vars(cfg).update(config)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        if name == "" or log_level == "DEBUG":  # else as in the daemon: the libraries' loggers inherit
            logger.setLevel(log_level)
        if name == "" or not logger.propagate:  # elastic_transport.node does not propagate
            logger.addHandler(handler)
    results = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sink = ElasticsearchSink(cfg, **sink_kwargs)
            sink.open()
            try:
                for step in steps:
                    started = time.monotonic()
                    if step == "probe":
                        out = sink.probe()
                    elif step == "describe":
                        out = sink.describe()
                    else:
                        out = [[d.outcome, d.error, d.retry_after] for d in sink.deliver(step[1])]
                    results.append({"out": out, "seconds": time.monotonic() - started})
            finally:
                sink.close()
        for w in caught:
            buffer.write(f"warning {w.category.__name__}: {w.message}\n")
    finally:
        for logger, level in saved:
            logger.setLevel(level)
            if handler in logger.handlers:
                logger.removeHandler(handler)
    return {"client": elasticsearch.__versionstr__, "results": results, "log": buffer.getvalue(),
            "server_info": sink.server_info}


def run(client: str, config: dict, steps: list, sink_kwargs: dict = None, env: dict = None,
        log_level: str = "DEBUG") -> dict:
    sink_kwargs = sink_kwargs or {}
    if client == "debian-7.17":
        try:
            import elasticsearch
        except ImportError:
            unavailable("Debian's python3-elasticsearch is not installed (scripts/install-deps)")
        if elasticsearch.__file__.startswith(str(ES9)):
            pytest.fail("this process must use Debian's elasticsearch client, not .deps/es9")
        with _environ(env or {}):
            out = scenario(config, steps, sink_kwargs, log_level)
        assert out["client"].startswith("7.17."), out["client"]
        return out
    if not (ES9 / "elasticsearch").is_dir():
        unavailable(f"PyPI's elasticsearch 9.x is not in {ES9} (scripts/install-deps --test)")
    proc = subprocess.run([sys.executable, __file__], input=json.dumps([config, steps, sink_kwargs, log_level]),
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=f"{ES9}:{REPO}", **(env or {})))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["client"].startswith("9."), f"the subprocess loaded elasticsearch {out['client']}, not 9.x"
    return out


def unavailable(reason):
    from conftest import unavailable as skip_or_fail
    skip_or_fail(reason)


@contextlib.contextmanager
def _environ(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    time.tzset()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        time.tzset()


# --- helpers ------------------------------------------------------------------------------
@pytest.fixture(params=CLIENTS)
def client(request):
    return request.param


@pytest.fixture
def standin():
    made = []

    def make(**kwargs):
        s = StandinElasticsearch(**kwargs).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


DEFAULT_TIME, DEFAULT_INDEX = 1795060392.123456, "oom-events-2026.11.19"  # 2026-11-19T03:53:12 UTC


def event_doc(timestamp_us=79928453, event_time=DEFAULT_TIME, argv=None) -> dict:
    from test_event import HOST, Lookup, kill

    from oom_journal.enrich.event import OomEvent

    e = OomEvent.build(kill(timestamp_us=timestamp_us), HOST, Lookup(argv or [b"java", b"-jar", b"app.jar"]),
                       event_time=event_time)
    return json.loads(json.dumps(e.document()))


def rest(standin, method, path, body=None, auth=None):
    """A request to the stand-in's REST API, as any HTTP client would make it."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(standin.url + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bulk_actions(standin) -> list:
    """The action lines of every bulk request the stand-in received."""
    return [line for r in standin.requests_to("/_bulk") for line in r.ndjson() if set(line) <= {"create", "index"}
            and isinstance(next(iter(line.values())), dict) and "_id" in next(iter(line.values()))]


def assert_no_secret(out: dict, *secrets):
    from urllib.parse import quote

    forms = set()
    for s in secrets:
        forms |= {s, quote(s, safe=""), quote(s)}
    forms.add(base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    forms.add(API_KEY_ENCODED)
    texts = [out["log"], out["server_info"]] + [json.dumps(r["out"], ensure_ascii=False) for r in out["results"]]
    for text in texts:
        for form in forms:
            assert form not in text, f"a secret ({form[:3]}...) appears in: {text[:2000]}"


# --- tests --------------------------------------------------------------------------------
def test_document_indexed_with_event_id_into_the_index_of_the_event_date(client, standin):
    es = standin()
    # 2026-11-21 23:59:59 UTC is already the 22nd in Tokyo: the index must follow UTC.
    late = event_doc(timestamp_us=100, event_time=1795305599.5, argv=HOSTILE_ARGV)
    early = event_doc(timestamp_us=200, event_time=1795219200.0)  # 2026-11-21 00:00:00 UTC
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", [late, early]]], env={"TZ": "Asia/Tokyo"})
    assert out["results"][0]["out"] == [["ok", "", None], ["ok", "", None]], out["results"]

    actions = bulk_actions(es)
    assert actions == [{"create": {"_index": "oom-events-2026.11.21", "_id": late["event_id"]}},
                       {"create": {"_index": "oom-events-2026.11.21", "_id": early["event_id"]}}]
    (bulk,) = es.requests_to("/_bulk")
    expected_type = ("application/x-ndjson" if client == "debian-7.17"
                     else "application/vnd.elasticsearch+x-ndjson; compatible-with=9")
    assert bulk.headers["content-type"] == expected_type

    status, got = rest(es, "GET", f"/oom-events-2026.11.21/_doc/{late['event_id']}")
    assert status == 200 and got["found"] and got["_id"] == late["event_id"]
    assert got["_source"] == late  # every field, the 128 KiB hostile command line whole
    assert len(got["_source"]["cmdline"]) > 128 << 10 and "evil\nline" in got["_source"]["cmdline"]
    assert "\\xff\\xfe-not-utf8" in got["_source"]["cmdline"] and "\x1b[31m" in got["_source"]["cmdline"]
    status, found = rest(es, "POST", "/oom-events-*/_search", {"query": {"term": {"event_id": early["event_id"]}}})
    assert status == 200 and found["hits"]["total"]["value"] == 1
    assert found["hits"]["hits"][0]["_source"]["cmdline"] == "java -jar app.jar"
    assert "_bulk" in out["log"]  # the log capture did see the client's requests


def test_429_for_the_item_is_retry_then_it_is_indexed_exactly_once(client, standin):
    es = standin()
    doc = event_doc()
    es.fail_next_items(1, status=429)
    out = run(client, {"elasticsearch_server": [es.url]},
              [["deliver", [doc]], ["deliver", [doc]], ["deliver", [doc]]])
    first, second, third = (r["out"][0] for r in out["results"])
    assert first[0] == "retry" and "429" in first[1] and "es_rejected_execution_exception" in first[1]
    assert second == ["ok", "", None]
    assert third == ["ok", "", None]  # delivered again (a retry after a lost answer): 409, already there

    index = DEFAULT_INDEX
    assert rest(es, "GET", f"/{index}/_count")[1]["count"] == 1
    status, got = rest(es, "GET", f"/{index}/_doc/{doc['event_id']}")
    assert status == 200 and got["_version"] == 1  # created once, never overwritten
    assert [a["create"]["_id"] for a in bulk_actions(es)] == [doc["event_id"]] * 3


def test_mapping_error_is_failed_with_the_reason(client, standin):
    es = standin()
    good, bad = event_doc(timestamp_us=1, event_time=1795219200.0), event_doc(timestamp_us=2, argv=HOSTILE_ARGV)
    # An index whose mapping says cmdline is a number: Elasticsearch refuses the document.
    assert rest(es, "PUT", f"/{DEFAULT_INDEX}", {"mappings": {"properties": {"cmdline": {"type": "long"}}}})[0] == 200
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", [bad, good]]])
    (failed, ok) = out["results"][0]["out"]
    assert failed[0] == "failed", failed
    assert "HTTP 400: document_parsing_exception" in failed[1]
    assert "failed to parse field [cmdline] of type [long]" in failed[1]
    assert failed[1].isprintable() and len(failed[1]) < 1000  # the reason quotes the hostile cmdline
    assert ok == ["ok", "", None]
    assert rest(es, "GET", f"/{DEFAULT_INDEX}/_count")[1]["count"] == 0


def test_injected_item_errors(client, standin):
    es = standin()
    docs = [event_doc(timestamp_us=i) for i in range(4)]
    es.fail_next_items(1, status=503)
    es.fail_next_items(1, status=400, error_type="illegal_argument_exception", reason="bad")
    es.fail_next_items(1, status=404, error_type="index_not_found_exception", reason="no such index")
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", docs]])
    assert [o[0] for o in out["results"][0]["out"]] == ["retry", "failed", "failed", "ok"]
    assert out["results"][0]["out"][1][1] == "HTTP 400: illegal_argument_exception: bad"


def test_server_down_is_retry_in_bounded_time(client, standin):
    down = f"http://127.0.0.1:{free_port()}"
    docs = [event_doc(timestamp_us=i) for i in range(3)]
    out = run(client, {"elasticsearch_server": [down]}, ["probe", ["deliver", docs]])
    probe, deliver = out["results"]
    assert "cannot reach" in probe["out"] and "Connection refused" in probe["out"], probe
    assert [o[0] for o in deliver["out"]] == ["retry"] * 3
    assert "Connection refused" in deliver["out"][0][1] and deliver["seconds"] < 5

    # A server that accepts the connection and never answers: the request timeout bounds it.
    es = standin()
    es.stall_next_requests(10, seconds=60)
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", docs]], sink_kwargs={"timeout": 1.5})
    (deliver,) = out["results"]
    assert [o[0] for o in deliver["out"]] == ["retry"] * 3
    assert "no answer from" in deliver["out"][0][1] and deliver["seconds"] < 6, deliver


def test_whole_request_errors(client, standin):
    es = standin()
    docs = [event_doc(timestamp_us=i) for i in range(2)]
    es.fail_next_requests(1, status=503, path="/_bulk")
    es.fail_next_requests(1, status=429, headers={"Retry-After": "7"}, path="/_bulk")
    malformed = {"error": {"type": "illegal_argument_exception", "reason": "request is malformed"}, "status": 400}
    es.fail_next_requests(1, status=400, body=malformed, path="/_bulk")
    es.fail_next_requests(1, status=404, body={"error": "no handler found", "status": 404}, path="/_bulk")
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", docs]] * 5)
    unavailable_, throttled, bad, misrouted, fine = (r["out"] for r in out["results"])
    assert [o[0] for o in unavailable_] == ["retry", "retry"] and "HTTP 503" in unavailable_[0][1]
    assert [o[0] for o in throttled] == ["retry", "retry"] and "HTTP 429" in throttled[0][1]
    # The 9.x client hands over the response's headers with its errors; 7.17 keeps none.
    assert throttled[0][2] == (7.0 if client == "pypi-9" else None)
    assert [o[0] for o in bad] == ["failed", "failed"] and "request is malformed" in bad[0][1]
    # _bulk is never 404 as a whole on Elasticsearch: a wrong path in the URL, kept for a reload.
    assert [o[0] for o in misrouted] == ["retry", "retry"] and "check --elasticsearch-server" in misrouted[0][1]
    assert [o[0] for o in fine] == ["ok", "ok"]
    assert len(es.requests_to("/_bulk")) == 5  # one request per deliver(): the client did not retry


def test_a_client_whose_major_version_the_server_does_not_speak_is_retry(client, standin):
    es = standin(version="8.19.0")
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", [event_doc()]]])
    (item,) = out["results"][0]["out"]
    if client == "debian-7.17":
        assert item == ["ok", "", None]  # 7.17 sends plain application/json, which 8.x accepts
    else:
        assert item[0] == "retry" and "media_type_header_exception" in item[1], item


def test_basic_auth_is_sent_and_a_wrong_password_is_retry_without_the_password_anywhere(client, standin):
    es = standin(users={USER: PASSWORD})
    doc = event_doc()
    good = {"elasticsearch_server": [es.url], "elasticsearch_user": USER, "elasticsearch_password": PASSWORD}
    out = run(client, good, ["probe", ["deliver", [doc]], "describe"])
    probe, deliver, describe = (r["out"] for r in out["results"])
    assert probe is None and deliver == [["ok", "", None]]
    (bulk,) = es.requests_to("/_bulk")
    assert bulk.principal == f"user:{USER}" and bulk.status == 200
    assert bulk.headers["authorization"] == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert describe.endswith(f"as user {USER} (password ****)")
    assert_no_secret(out, PASSWORD)
    if client == "pypi-9":
        assert "> Authorization: Basic" in out["log"]  # the 9.x client's header log ran (and hid it)

    wrong = dict(good, elasticsearch_password=PASSWORD[::-1])
    before = len(es.requests)
    out = run(client, wrong, ["probe", ["deliver", [doc]]])
    probe, deliver = (r["out"] for r in out["results"])
    assert "authentication failed (HTTP 401" in probe
    # RETRY, decided: the password is fixed in the configuration and a reload rebuilds the sink;
    # FAILED would set aside every event of the outage.
    assert deliver[0][0] == "retry" and "authentication failed (HTTP 401" in deliver[0][1]
    assert "unable to authenticate user [oom-writer]" in deliver[0][1]
    assert_no_secret(out, PASSWORD, PASSWORD[::-1])
    assert [r.status for r in es.requests[before:]] == [401] * (len(es.requests) - before)
    assert es.requests_to("/_bulk")[-1].status == 401
    assert rest(es, "GET", f"/{DEFAULT_INDEX}/_count", auth=(USER, PASSWORD))[1]["count"] == 1


@pytest.mark.parametrize("form", ["encoded", "id:key"])
def test_api_key_is_sent_and_a_wrong_key_is_retry(client, standin, form):
    es = standin(api_keys={API_KEY_ID: API_KEY})
    key = API_KEY_ENCODED if form == "encoded" else f"{API_KEY_ID}:{API_KEY}"
    out = run(client, {"elasticsearch_server": [es.url], "elasticsearch_api_key": key},
              [["deliver", [event_doc()]], "describe"])
    assert out["results"][0]["out"] == [["ok", "", None]]
    assert out["results"][1]["out"].endswith("with API key ****")
    (bulk,) = es.requests_to("/_bulk")
    assert bulk.principal == f"api_key:{API_KEY_ID}" and bulk.headers["authorization"] == f"ApiKey {API_KEY_ENCODED}"
    assert_no_secret(out, API_KEY, key)

    out = run(client, {"elasticsearch_server": [es.url], "elasticsearch_api_key": f"{API_KEY_ID}:wrong-key"},
              [["deliver", [event_doc()]]])
    (deliver,) = out["results"][0]["out"]
    assert deliver[0] == "retry" and "HTTP 401" in deliver[1]
    assert_no_secret(out, API_KEY, "wrong-key")


def test_user_without_write_privilege_gets_403_items_which_are_retry(client, standin):
    es = standin(users={"viewer": PASSWORD}, readonly_users={"viewer"})
    out = run(client, {"elasticsearch_server": [es.url], "elasticsearch_user": "viewer",
                       "elasticsearch_password": PASSWORD}, [["deliver", [event_doc()]]])
    (item,) = out["results"][0]["out"]
    assert item[0] == "retry" and "HTTP 403: security_exception" in item[1] and "is unauthorized" in item[1]


def test_credentials_in_the_url_are_used_and_never_shown(client, standin):
    from urllib.parse import quote

    es = standin(users={USER: PASSWORD})
    url = f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{es.port}"
    out = run(client, {"elasticsearch_server": [url]}, ["describe", ["deliver", [event_doc()]]])
    describe, deliver = (r["out"] for r in out["results"])
    assert deliver == [["ok", "", None]]
    assert describe == (f"elasticsearch index oom-events-%Y.%m.%d at http://127.0.0.1:{es.port} "
                        f"as user {USER} (password ****)")
    assert es.requests_to("/_bulk")[0].principal == f"user:{USER}"
    assert_no_secret(out, PASSWORD)


def test_a_request_over_the_servers_limit_is_split_and_a_document_over_it_is_failed(client, standin):
    docs = [event_doc(timestamp_us=i, argv=[b"x" * 20000]) for i in range(4)]
    es = standin(max_content_length=50_000)  # about two of those documents (cmdline, argv, message)
    huge = event_doc(timestamp_us=99, argv=[b"y" * 60000])
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", docs + [huge]]])
    outcomes = out["results"][0]["out"]
    assert [o[0] for o in outcomes] == ["ok"] * 4 + ["failed"]
    assert "larger than the server accepts (HTTP 413" in outcomes[4][1]
    statuses = [r.status for r in es.requests_to("/_bulk")]
    assert statuses.count(413) >= 2 and statuses.count(200) >= 2
    assert rest(es, "GET", f"/{DEFAULT_INDEX}/_count")[1]["count"] == 4


def test_a_batch_over_max_request_bytes_goes_in_several_requests(client, standin):
    es = standin()
    docs = [event_doc(timestamp_us=i, argv=[b"z" * 3000]) for i in range(6)]
    out = run(client, {"elasticsearch_server": [es.url]}, [["deliver", docs]], sink_kwargs={"max_request_bytes": 20000})
    assert [o[0] for o in out["results"][0]["out"]] == ["ok"] * 6
    requests = es.requests_to("/_bulk")
    assert len(requests) == 3 and all(len(r.body) <= 20000 for r in requests)
    assert rest(es, "GET", f"/{DEFAULT_INDEX}/_count")[1]["count"] == 6


def test_a_server_that_is_not_elasticsearch(client, standin):
    es = standin(product_header=False)
    out = run(client, {"elasticsearch_server": [es.url]}, ["probe", ["deliver", [event_doc()]]])
    probe, deliver = (r["out"] for r in out["results"])
    assert "is not Elasticsearch" in probe
    assert deliver[0][0] == "retry" and "is not Elasticsearch" in deliver[0][1]


@pytest.mark.parametrize("server", ["7.17.6", "8.19.0", "9.1.0"])
def test_probe_reports_the_cluster_and_version_or_why_not(client, standin, server):
    es = standin(version=server, cluster_name="prod-logs")
    out = run(client, {"elasticsearch_server": [es.url]}, ["probe"], log_level="INFO")
    (probe,) = (r["out"] for r in out["results"])
    if client == "pypi-9" and server != "9.1.0":
        # The 9.x client asks for compatible-with=9, which a server before 9 refuses (400).
        assert "HTTP 400" in probe and "media_type_header_exception" in probe, probe
        return
    assert probe is None
    assert out["server_info"] == f"Elasticsearch {server}, cluster prod-logs"
    assert f"elasticsearch: Elasticsearch {server}, cluster prod-logs at {es.url}" in out["log"]
    assert [r.path for r in es.requests] == ["/"] * len(es.requests) and es.requests  # GET /, nothing sent


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A test CA and a certificate for 127.0.0.1 that it signed (openssl, as an operator would)."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        proc = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    try:
        openssl("version")
    except FileNotFoundError:
        unavailable("openssl is not installed (apt install openssl)")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=oom-journal test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyEncipherment\nauthorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}


def test_https_with_a_ca_file_without_it_and_without_verification(client, standin, tls_files):
    es = standin(tls=(tls_files["cert"], tls_files["key"]), users={USER: PASSWORD})
    base = {"elasticsearch_server": [es.url], "elasticsearch_user": USER, "elasticsearch_password": PASSWORD}
    out = run(client, dict(base, elasticsearch_ca_file=tls_files["ca"]),
              ["probe", ["deliver", [event_doc(timestamp_us=1)]], "describe"])
    probe, deliver, describe = (r["out"] for r in out["results"])
    assert probe is None and deliver == [["ok", "", None]]
    assert describe.endswith(f"TLS verified with {tls_files['ca']}")

    out = run(client, base, ["probe", ["deliver", [event_doc(timestamp_us=2)]]])
    probe, deliver = (r["out"] for r in out["results"])
    assert "CERTIFICATE_VERIFY_FAILED" in probe, probe
    assert deliver[0][0] == "retry" and deliver[0][1].startswith(f"TLS with {es.url} failed: [SSL: CERTIFICATE")

    out = run(client, dict(base, elasticsearch_verify_tls=False), [["deliver", [event_doc(timestamp_us=3)]]])
    assert out["results"][0]["out"] == [["ok", "", None]]
    assert "TLS certificates are NOT verified" in out["log"]
    assert "InsecureRequestWarning" not in out["log"]  # our one warning, not one per request
    # The refused handshake never became a request; the other two did, authenticated.
    assert [(r.principal, r.status) for r in es.requests_to("/_bulk")] == [(f"user:{USER}", 200)] * 2
    assert sorted(es.docs(DEFAULT_INDEX)) == [event_doc(timestamp_us=n)["event_id"] for n in (1, 3)]
    assert_no_secret(out, PASSWORD)


def test_client_logs_stay_quiet_below_debug(client):
    down = f"http://127.0.0.1:{free_port()}"
    out = run(client, {"elasticsearch_server": [down]}, [["deliver", [event_doc()]]] * 2, log_level="INFO")
    assert [r["out"][0][0] for r in out["results"]] == ["retry", "retry"]
    # At INFO, neither the 7.17 client's WARNING-with-traceback nor either client's request lines.
    assert "Traceback" not in out["log"] and "elasticsearch WARNING" not in out["log"], out["log"]
    assert "elastic_transport" not in out["log"], out["log"]


def test_a_document_without_event_id_is_failed_without_a_request(standin):
    es = standin()
    out = run("debian-7.17", {"elasticsearch_server": [es.url]}, [["deliver", [{"time": "x"}, event_doc()]]])
    assert out["results"][0]["out"][0] == ["failed", "the document has no event_id, which is its _id", None]
    assert out["results"][0]["out"][1] == ["ok", "", None]
    assert [len(r.ndjson()) for r in es.requests_to("/_bulk")] == [2]


def test_open_without_the_library_names_the_package(monkeypatch):
    from oom_journal.sinks import configured_sinks
    from oom_journal.sinks.base import SinkUnavailable
    from oom_journal.sinks.elasticsearch import ElasticsearchSink

    monkeypatch.setitem(sys.modules, "elasticsearch", None)  # what import finds when it is not installed
    cfg = types.SimpleNamespace(elasticsearch_server=["http://127.0.0.1:9200"], elasticsearch_index="x",
                                elasticsearch_user=None, elasticsearch_password=None, elasticsearch_api_key=None,
                                elasticsearch_ca_file=None, elasticsearch_verify_tls=True)
    assert [type(s) for s in configured_sinks(cfg)] == [ElasticsearchSink]
    with pytest.raises(SinkUnavailable) as e:
        ElasticsearchSink(cfg).open()
    assert e.value.option == "--elasticsearch-server" and "apt install python3-elasticsearch" in str(e.value)


def test_describe_several_servers_and_tls(tmp_path):
    from oom_journal.sinks.elasticsearch import ElasticsearchSink

    ca = tmp_path / "ca.pem"
    ca.write_text("")
    cfg = types.SimpleNamespace(elasticsearch_server=["https://es1.example", "http://[::1]/prefix/"],
                                elasticsearch_index="oom-%Y", elasticsearch_user=None, elasticsearch_password=None,
                                elasticsearch_api_key=API_KEY_ENCODED, elasticsearch_ca_file=str(ca),
                                elasticsearch_verify_tls=True)
    text = ElasticsearchSink(cfg).describe()
    assert text == ("elasticsearch index oom-%Y at https://es1.example:443, http://[::1]:9200/prefix "
                    f"with API key ****, TLS verified with {ca}")
    assert API_KEY_ENCODED not in text
    cfg.elasticsearch_verify_tls = False
    assert ElasticsearchSink(cfg).describe().endswith("TLS NOT verified")


def test_clean_never_lets_a_secret_through():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from oom_journal.sinks.elasticsearch import ElasticsearchSink

    cfg = types.SimpleNamespace(elasticsearch_server=["http://127.0.0.1:9200"], elasticsearch_index="x",
                                elasticsearch_user=USER, elasticsearch_password=PASSWORD, elasticsearch_api_key=None,
                                elasticsearch_ca_file=None, elasticsearch_verify_tls=True)
    sink = ElasticsearchSink(cfg)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    @settings(max_examples=300, deadline=None)
    @given(st.text(), st.text(), st.sampled_from([PASSWORD, basic, f"http://{USER}:pw@host:9200/"]))
    def check(before, after, secret):
        cleaned = sink._clean(before + secret + after, limit=100_000)
        assert PASSWORD not in cleaned and basic not in cleaned and ":pw@" not in cleaned
        assert cleaned.isprintable()

    check()


def test_standin_runs_as_a_program():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "es_standin.py"), "--port", str(port),
                             "--user", f"u:{PASSWORD}"], stdout=subprocess.PIPE, text=True)
    try:
        assert "listening on" in proc.stdout.readline()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={
            "Authorization": "Basic " + base64.b64encode(f"u:{PASSWORD}".encode()).decode()})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["X-Elastic-Product"] == "Elasticsearch"
            assert json.loads(r.read())["tagline"] == "You Know, for Search"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


if __name__ == "__main__":
    # The second interpreter (PyPI's client on PYTHONPATH): one scenario, from stdin, to stdout.
    print(json.dumps(scenario(*json.loads(sys.stdin.read()))))
