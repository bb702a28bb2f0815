"""The Elasticsearch sink: each event is one document, bulk-indexed with `_id` = its event id.

Through the official client, as Debian ships it (python3-elasticsearch 7.17: `http_auth=`,
`body=`) or as PyPI does (8.x, 9.x: `basic_auth=`, `operations=`, NodeConfig). Which one is
decided by the client's own version number (elasticsearch.VERSION), not by trying one call and
catching the TypeError of the other.

Exactly-once, by construction: every document goes in a bulk `create` action with
`_id` = event_id, into the index named from the EVENT's time (UTC), so a retry lands in the same
index with the same id. `create` rather than `index`: a retry of a document that did arrive
answers 409 version_conflict_engine_exception, which this sink reads as "already delivered"
(OK); `index` would silently overwrite it, bump _version and re-run ingest pipelines, and data
streams accept only `create` (Elasticsearch's bulk API: "data streams support only the create
action").
The one exception: a completion (`completes` equal to its own `event_id`: the kernel's report of
a kill recorded before from the second witness, enrich/witness.py) goes in an `index` action, so
that it REPLACES the first document under that _id, in the same index (the completion keeps the
first document's `time`); a retry of it writes the same document again, which is harmless. Into a
data stream, which takes only `create`, it is refused and set aside (FAILED, with the server's
reason), and the first document stays.

"Should we retry?" (per document):
    item 2xx                                      OK
    item 409 (create: the id exists)              OK, already delivered by an earlier try
                                                  (an `index`, the completion, cannot get it)
    item 429, 5xx, 408                            RETRY (rejected execution, shard unavailable, timeout)
    item 401, 403                                 RETRY (missing privileges, read-only index block:
                                                  fixed by an operator, not by changing the event)
    item other 4xx (mapping error, bad name, ...) FAILED, with Elasticsearch's type and reason
    request: no connection, TLS error, timeout    RETRY for every document
    request: 429, 5xx, 408                        RETRY for every document (Retry-After honoured)
    request: 401, 403                             RETRY: wrong credentials are fixed in the
                                                  configuration, and a reload rebuilds the sink;
                                                  FAILED would throw away every event of the outage
    request: 413 (over http.max_content_length)   the request is split in halves and sent again;
                                                  one document alone over the limit: FAILED
    request: 404, 405, 406, 400 media_type_header RETRY: the URL's path is wrong, or the client's
                                                  major version is not one the server speaks
                                                  (configuration, fixed by a reload or an upgrade)
    request: other 4xx                            FAILED for every document of that request
    server is not Elasticsearch, unreadable reply RETRY (a proxy's error page; configuration)

The client never retries by itself (max_retries=0, retry_on_status=(), retry_on_timeout=False):
its retries would hide outcomes from this table, multiply bulk requests on a loaded cluster
(9.x retries 429 by default, sleeping in between), and stretch a deliver() past its time bound.
With several servers, a node that fails is marked dead by the client's pool and the next
deliver() goes to another one; the shared retry machinery (delivery/backoff.py) does the waiting.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import time
import urllib.parse
from oom_journal.records import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from oom_journal.redact import Scrubber, credential_forms, mask, scrub_userinfo
from oom_journal.text import json_line, printable
from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery, Sink, SinkUnavailable
from oom_journal.sinks.http import retry_after

log = logging.getLogger(__name__)

# Seconds one HTTP request may take (connect, then each read): a deliver() of one request stays
# near this; one made of several requests shares it (see deliver()).
REQUEST_TIMEOUT = 10.0
# Bytes per bulk request. Elasticsearch's guide ("Tune for indexing speed") suggests bulk
# requests of a few MB to tens of MB; its http.max_content_length is 100MB. A document with a
# 128 KiB command line is about 400 KB here (cmdline, argv and message; control characters
# grow six-fold as \u00XX), so 500 of them would be far over the limit in one request.
MAX_REQUEST_BYTES = 10 << 20
MAX_ERROR_CHARS = 600  # of a server's reason in Delivery.error, which is logged and shown in STATUS


class _ClientLogFilter(logging.Filter):
    """Keeps the clients' own per-request log lines out of the daemon's log unless it runs at
    debug level: the 7.17 client logs every failed request as a WARNING with a full traceback,
    and both log every request at INFO; while a server is down that would be a traceback per
    retry. What happened is in each Delivery.error, which delivery/worker.py reports once per change.
    Errors still pass. Decided per record, so a reload to debug level shows them at once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or logging.getLogger().getEffectiveLevel() <= logging.DEBUG


_CLIENT_LOG_FILTER = _ClientLogFilter()
# The loggers the clients log requests to (7.17: connection/base.py; 9.x: elastic_transport's
# _transport.py and _node_pool.py). A filter on a logger applies to the records made there.
_CLIENT_LOGGERS = ("elasticsearch", "elastic_transport.transport", "elastic_transport.node_pool")


def _quiet_client_loggers() -> None:
    for name in _CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if _CLIENT_LOG_FILTER not in logger.filters:
            logger.addFilter(_CLIENT_LOG_FILTER)


@dataclass(frozen=True)
class _Node:
    scheme: str
    host: str
    port: int
    path_prefix: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path_prefix}"


def parse_server(url: str) -> tuple:
    """(_Node, user, password) of a server URL; user and password from its userinfo, if any.

    A URL without a port means 443 for https and Elasticsearch's 9200 for http (as the 7.17
    client does; the 9.x client refuses an http URL without a port).
    """
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 9200)
    prefix = parts.path.rstrip("/")
    prefix = "/" + prefix.lstrip("/") if prefix else ""
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return _Node(scheme, parts.hostname or "", port, prefix), user, password


class _Split(Exception):
    """The server refused the request as too large (413): send its documents in halves."""


class ElasticsearchSink(Sink):
    name = "elasticsearch"
    option = "--elasticsearch-server"
    max_batch = 500

    def __init__(self, cfg, *, timeout: float = REQUEST_TIMEOUT, max_request_bytes: int = MAX_REQUEST_BYTES,
                 clock=time.monotonic):
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes
        self.clock = clock
        self.index_pattern = cfg.elasticsearch_index
        self.nodes = []
        url_user = url_password = None
        for url in cfg.elasticsearch_server:
            node, user, password = parse_server(url)
            self.nodes.append(node)
            if user is not None and url_user is None:
                url_user, url_password = user, password or ""
        # Explicit options win over credentials written in a URL.
        self.user = cfg.elasticsearch_user or (None if cfg.elasticsearch_api_key else url_user)
        self.password = cfg.elasticsearch_password if cfg.elasticsearch_user else (
            None if cfg.elasticsearch_api_key else url_password)
        self.api_key = cfg.elasticsearch_api_key or None
        self.ca_file = cfg.elasticsearch_ca_file or None
        self.verify_tls = cfg.elasticsearch_verify_tls
        self.client: Any = None  # the client library's Elasticsearch object, made by open()
        self.client_version: tuple = ()  # (major, minor, patch) of the loaded client, once opened
        self.server_info = ""  # what probe() found: "Elasticsearch 9.1.0, cluster prod"
        self._es: Any = None  # the elasticsearch module
        # The password and the API key as given, URL-encoded and base64 as in the Authorization header.
        self._scrub = Scrubber(credential_forms(self.user, self.password, self.api_key))

    # --- secrets --------------------------------------------------------------------------
    def _clean(self, text: object, limit: int = MAX_ERROR_CHARS) -> str:
        """Text for a log line or Delivery.error: no secret, no credentials in URLs, one
        printable line (a server's reason may quote the hostile command line), bounded."""
        text = printable(self._scrub(scrub_userinfo(str(text))))
        return text if len(text) <= limit else text[:limit] + "…"

    # --- Sink -----------------------------------------------------------------------------
    def open(self) -> None:
        try:
            import elasticsearch
        except ImportError:
            raise SinkUnavailable(self.option, "the elasticsearch sink needs the elasticsearch module: "
                                               "apt install python3-elasticsearch") from None
        version = tuple(getattr(elasticsearch, "VERSION", (0, 0, 0)))
        if version < (7, 14):
            raise SinkUnavailable(self.option, f"the elasticsearch sink needs the elasticsearch module 7.14 or "
                                               f"later, not {'.'.join(map(str, version))}: "
                                               "apt install python3-elasticsearch")
        self._es, self.client_version = elasticsearch, version
        _quiet_client_loggers()
        try:
            self.client = self._client_7(elasticsearch) if version[0] == 7 else self._client_8(elasticsearch)
        except Exception as e:  # the client refused an option (ValueError, ImproperlyConfigured: no CA certificates)
            raise SinkUnavailable(self.option, f"the elasticsearch client refused the configuration: "
                                               f"{self._clean(e)}") from None
        if any(n.scheme == "https" for n in self.nodes) and not self.verify_tls:
            log.warning("elasticsearch: the servers' TLS certificates are NOT verified (--elasticsearch-verify-tls "
                        "false)")
        log.debug("elasticsearch: client %s for %s", ".".join(map(str, version)), self.describe())

    def _client_7(self, es):
        """Debian's 7.17: hosts as dicts, timeout=; credentials as a header (see _basic_auth)."""
        hosts = [{"host": n.host, "port": n.port, "use_ssl": n.scheme == "https", "url_prefix": n.path_prefix}
                 for n in self.nodes]
        kwargs = dict(timeout=self.timeout, max_retries=0, retry_on_status=(), retry_on_timeout=False)
        if self.user is not None:
            # Not http_auth=(user, password): 7.17 hands it to urllib3 1.26's make_headers, which
            # encodes it as Latin-1, while Elasticsearch decodes Basic credentials as UTF-8 (its
            # challenge says charset="UTF-8", RFC 7617): a non-ASCII password would be refused.
            kwargs["headers"] = {"authorization": f"Basic {self._basic_auth()}"}
        elif self.api_key:
            kwargs["api_key"] = self._api_key_value()
        if any(n.scheme == "https" for n in self.nodes):
            # TLS options are ignored by the 7.17 client for http nodes.
            kwargs.update(verify_certs=self.verify_tls, ssl_show_warn=False)
            if self.ca_file:
                kwargs["ca_certs"] = self.ca_file
        return es.Elasticsearch(hosts, **kwargs)

    def _client_8(self, es):
        """PyPI's 8.x/9.x: NodeConfig per node (TLS options only on https nodes: the 9.x client
        refuses them on http ones), basic_auth=, api_key=, request_timeout=."""
        from elastic_transport import NodeConfig

        hosts = []
        for n in self.nodes:
            tls = {}
            if n.scheme == "https":
                tls = dict(verify_certs=self.verify_tls, ssl_show_warn=False)
                if self.ca_file:
                    tls["ca_certs"] = self.ca_file
            hosts.append(NodeConfig(n.scheme, n.host, n.port, path_prefix=n.path_prefix, **tls))
        kwargs = dict(request_timeout=self.timeout, max_retries=0, retry_on_status=(), retry_on_timeout=False)
        if self.user is not None:
            # Encoded here: given a (user, password) tuple, 8.x/9.x encode it as ASCII and raise
            # UnicodeEncodeError for a non-ASCII password. A str is taken as already encoded.
            kwargs["basic_auth"] = self._basic_auth()
        elif self.api_key:
            kwargs["api_key"] = self._api_key_value()
        return es.Elasticsearch(hosts, **kwargs)

    def _basic_auth(self) -> str:
        """base64 of user:password in UTF-8, as Elasticsearch decodes it."""
        return base64.b64encode(f"{self.user}:{self.password or ''}".encode("utf-8")).decode("ascii")

    def _api_key_value(self) -> str:
        """The encoded API key (base64 of ID:KEY, as Kibana and the create API show it); "ID:KEY"
        is accepted and encoded here. Both clients send a str as given."""
        key = self.api_key or ""
        if ":" in key:
            return base64.b64encode(key.encode("utf-8")).decode("ascii")
        return key

    def describe(self) -> str:
        text = f"elasticsearch index {self.index_pattern} at {', '.join(n.url for n in self.nodes)}"
        if self.user is not None:
            text += f" as user {self.user} (password {mask(self.password or '')})"
        elif self.api_key:
            text += f" with API key {mask(self.api_key)}"
        if any(n.scheme == "https" for n in self.nodes):
            text += ", TLS " + ("verified" + (f" with {self.ca_file}" if self.ca_file else "")
                                if self.verify_tls else "NOT verified")
        return text

    def probe(self) -> Optional[str]:
        """GET / (the info API): the cluster's name and version, or why it does not answer."""
        if self.client is None:
            return "not opened"
        try:
            if self.client_version[:1] == (7,):
                info = self.client.info(request_timeout=self.timeout)
            else:
                info = self.client.options(request_timeout=self.timeout).info().body
            version = info["version"]["number"]
            self.server_info = self._clean(f"Elasticsearch {version}, cluster {info.get('cluster_name', '?')}")
        except Exception as e:  # every way it can fail is an answer here, never a crash
            failure = self._request_failure(e, self.timeout)
            return failure.error if failure is not None else "the server refused the request as too large"
        log.info("elasticsearch: %s at %s", self.server_info, ", ".join(n.url for n in self.nodes))
        return None

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # closing pooled connections: nothing left to report
                pass
            self.client = None

    # --- delivery -------------------------------------------------------------------------
    def index_name(self, document: dict) -> str:
        """The index pattern rendered with the event's own time, in UTC: a retry days later
        goes to the same index, where its _id already is."""
        try:
            when = datetime.fromisoformat(document["time"]).astimezone(timezone.utc)
        except (KeyError, TypeError, ValueError):
            when = datetime.now(timezone.utc)
        return when.strftime(self.index_pattern)

    def _entry(self, document: dict) -> bytes:
        op = "index" if document.get("completes") == document["event_id"] else "create"
        action = {op: {"_index": self.index_name(document), "_id": document["event_id"]}}
        text = json.dumps(action) + "\n" + json_line(document, compact=True) + "\n"
        return text.encode("utf-8")

    def deliver(self, documents: list) -> list:
        """One bulk request (several only for batches over max_request_bytes), bounded by
        `timeout` seconds in all: a request started later gets what is left of that time."""
        results: list = [None] * len(documents)
        entries = []  # (position, bytes)
        for i, doc in enumerate(documents):
            if not isinstance(doc, dict) or not isinstance(doc.get("event_id"), str) or not doc["event_id"]:
                results[i] = Delivery(FAILED, "the document has no event_id, which is its _id")
                continue
            try:
                entries.append((i, self._entry(doc)))
            except (TypeError, ValueError) as e:  # not JSON: no retry would change that
                results[i] = Delivery(FAILED, self._clean(f"the document cannot be sent as JSON: {e}"))
        chunks: list = []
        chunk: list = []
        size = 0
        for entry in entries:
            if chunk and size + len(entry[1]) > self.max_request_bytes:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(entry)
            size += len(entry[1])
        if chunk:
            chunks.append(chunk)

        deadline = self.clock() + self.timeout
        first = True
        while chunks:
            chunk = chunks.pop(0)
            left = deadline - self.clock()
            if not first and left < 1.0:
                outcome = Delivery(RETRY, f"not sent: this delivery's {self.timeout:.0f} s were spent on the "
                                          "requests before it")
                for pos, _ in chunk + [e for c in chunks for e in c]:
                    results[pos] = outcome
                break
            first = False
            try:
                outcomes, whole_request_failed = self._bulk(chunk, min(left, self.timeout))
            except _Split:
                if len(chunk) == 1:
                    results[chunk[0][0]] = Delivery(FAILED, f"the document alone ({len(chunk[0][1])} bytes) is "
                                                            "larger than the server accepts (HTTP 413: "
                                                            "http.max_content_length)")
                else:
                    half = len(chunk) // 2
                    chunks[:0] = [chunk[:half], chunk[half:]]
                continue
            for (pos, _), outcome in zip(chunk, outcomes, strict=False):  # a short answer leaves the rest unsettled
                results[pos] = outcome
            if whole_request_failed and outcomes[0].outcome == RETRY:
                # The server or the connection failed: the next requests would fare no better.
                for pos, _ in (e for c in chunks for e in c):
                    results[pos] = outcomes[0]
                break
        return results

    def _bulk(self, chunk: list, timeout: float) -> tuple:
        """(Delivery per entry, whether the request failed as a whole) of one bulk request;
        raises _Split when the server refused it as too large."""
        payload = b"".join(data for _, data in chunk)
        started = self.clock()
        headers = {}
        try:
            if self.client_version[:1] == (7,):
                body = self.client.bulk(body=payload, request_timeout=timeout)
            else:
                response = self.client.options(request_timeout=timeout).bulk(operations=payload)
                body, headers = response.body, response.meta.headers
        except Exception as e:  # the client's errors, whatever their class: classified, never raised
            failure = self._request_failure(e, timeout)
            if failure is None:
                raise _Split() from None
            log.debug("elasticsearch: bulk request of %d documents failed after %.3f s: %s", len(chunk),
                      self.clock() - started, failure.error)
            return [failure] * len(chunk), True
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) != len(chunk):
            count = len(items) if isinstance(items, list) else "no"
            return [Delivery(RETRY, f"unexpected answer to the bulk request: {count} items for {len(chunk)} "
                                    "documents")] * len(chunk), True
        wait = retry_after(headers)
        outcomes = [self._item(item, wait) for item in items]
        log.debug("elasticsearch: bulk request of %d documents in %.3f s: %d ok, %d retry, %d failed", len(chunk),
                  self.clock() - started, *(sum(o.outcome == k for o in outcomes) for k in (OK, RETRY, FAILED)))
        return outcomes, False

    def _item(self, item, wait: Optional[float]) -> Delivery:
        """Delivery for one item of a bulk response: {"create": {"status": 201, ...}}."""
        try:
            ((op, result),) = item.items()
            status = int(result["status"])
        except (AttributeError, KeyError, TypeError, ValueError):
            return Delivery(RETRY, "unexpected item in the bulk answer")
        if 200 <= status < 300:
            return Delivery(OK)
        if status == 409 and op == "create":
            return Delivery(OK)  # the _id is there: an earlier try was indexed (version_conflict_engine_exception)
        reason = self._clean(f"HTTP {status}: {_reason(result.get('error'))}")
        if status in (408, 429) or status >= 500:
            return Delivery(RETRY, reason, wait)
        if status in (401, 403):
            return Delivery(RETRY, self._clean(f"not authorized to write to {result.get('_index', 'the index')}: "
                                               f"{reason}"))
        return Delivery(FAILED, reason)

    def _request_failure(self, e: Exception, timeout: float) -> Optional[Delivery]:
        """Delivery for every document of a request that failed as a whole; None for a 413."""
        status, body, headers = self._http_error(e)
        where = ", ".join(n.url for n in self.nodes)
        if status is None:
            es = self._es

            def kind(*names):
                return isinstance(e, tuple(getattr(es, n) for n in names if isinstance(getattr(es, n, None), type)))

            # 7.17: ConnectionTimeout and SSLError are ConnectionErrors; 9.x: TLS errors are, timeouts not.
            if kind("ConnectionTimeout"):
                return Delivery(RETRY, f"no answer from {where} within {timeout:.1f} s")
            if kind("UnsupportedProductError"):
                return Delivery(RETRY, f"{where} is not Elasticsearch (its answer lacks the header "
                                       "X-Elastic-Product: Elasticsearch); check --elasticsearch-server")
            if kind("SSLError"):
                return Delivery(RETRY, self._clean(f"TLS with {where} failed: {_root_cause(e)}"))
            if kind("ConnectionError"):
                return Delivery(RETRY, self._clean(f"cannot reach {where}: {_root_cause(e)}"))
            if kind("SerializationError"):
                return Delivery(RETRY, f"unreadable answer from {where} (not Elasticsearch's JSON: a proxy?)")
            return Delivery(RETRY, self._clean(f"{type(e).__name__} with {where}: {_root_cause(e)}"))
        reason = self._clean(f"HTTP {status} from {where}: {_reason(body)}")
        if status == 413:
            return None
        if status == 401:
            return Delivery(RETRY, self._clean(
                f"authentication failed (HTTP 401 from {where}): check --elasticsearch-user and "
                f"--elasticsearch-password, or --elasticsearch-api-key; {_reason(body)}"))
        if status == 403:
            return Delivery(RETRY, reason)
        if status in (408, 429) or status >= 500:
            return Delivery(RETRY, reason, retry_after(headers))
        if status in (404, 405, 406) or (status == 400 and "media_type_header_exception" in reason):
            # Not the documents' fault: Elasticsearch's _bulk is never 404 as a whole (a missing
            # index is a per-item error), so the URL's path is wrong; 406 and
            # media_type_header_exception: this client's major version is not one the server
            # speaks (the 9.x client and an 8.x server). Fixed in the configuration or the
            # installation, after which the events must still be there.
            return Delivery(RETRY, self._clean(f"{reason} (check --elasticsearch-server, and that the "
                                               f"elasticsearch client's version matches the server's)"))
        return Delivery(FAILED, reason)

    def _http_error(self, e: Exception) -> tuple:
        """(status, body, headers) of an error the server answered; (None, None, {}) if it did not."""
        if self.client_version[:1] == (7,):
            status = getattr(e, "status_code", None)
            if isinstance(e, self._es.TransportError) and isinstance(status, int):
                return status, getattr(e, "info", None), {}  # 7.17 keeps no response headers
            return None, None, {}
        meta = getattr(e, "meta", None)
        if isinstance(e, self._es.ApiError) and not isinstance(e, self._es.UnsupportedProductError) \
                and meta is not None and isinstance(getattr(meta, "status", None), int):
            return meta.status, getattr(e, "body", None), meta.headers or {}
        return None, None, {}


def _reason(error) -> str:
    """Elasticsearch's error object as one line: "type: reason (caused by: type: reason)"."""
    if isinstance(error, dict) and isinstance(error.get("error"), (dict, str)):
        error = error["error"]  # a whole response: {"error": {...}, "status": N}
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}".rstrip(": ")
        cause = error.get("caused_by")
        if isinstance(cause, dict) and cause.get("reason"):
            text += f" (caused by {cause.get('type', 'error')}: {cause['reason']})"
        return text
    if error in (None, ""):
        return "no reason given"
    return str(error)


def _root_cause(e: BaseException) -> str:
    """The innermost cause: "[Errno 111] Connection refused" rather than the wrappers' reprs.

    The clients wrap urllib3's errors: 7.17 in `.info`, 9.x in `.errors` and `__cause__`; urllib3
    keeps the socket's error as `__context__` or `.reason`."""
    cause, seen = e, {id(e)}
    while True:
        errors = getattr(cause, "errors", None)
        candidates = [errors[0] if isinstance(errors, tuple) and errors else None, getattr(cause, "info", None),
                      getattr(cause, "reason", None), cause.__cause__, cause.__context__]
        nxt = next((c for c in candidates if isinstance(c, BaseException) and id(c) not in seen), None)
        if nxt is None:
            break
        seen.add(id(nxt))
        cause = nxt
    if isinstance(cause, ssl.SSLError):
        return str(cause)  # "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ..."
    if isinstance(cause, OSError) and cause.strerror:
        return f"[Errno {cause.errno}] {cause.strerror}" if cause.errno else cause.strerror
    # urllib3: "<urllib3.connection.HTTPConnection object at 0x...>: Failed to establish ..."
    text = re.sub(r"<[^>]* object at 0x[0-9a-f]+>:?\s*", "", str(cause))
    return text or type(cause).__name__

