"""A stand-in Elasticsearch HTTP server, for the Elasticsearch sink's tests.

It is a STAND-IN because no real Elasticsearch can be had on these machines: no Elasticsearch or
OpenSearch distribution is in Debian, PyPI or npm, and the one in-memory imitation on PyPI
(osmem-server) is refused by the official clients (see ../../shared/REAL-COMPONENTS.md). So this
server answers as Elasticsearch does, written from Elasticsearch's documented REST API
(https://www.elastic.co/docs/api/doc/elasticsearch): the endpoints the sink and its tests use,
with Elasticsearch's status codes, response bodies and headers.

What the official clients check, read from their source, and what this server therefore does:
- Debian's elasticsearch 7.17 (transport.py, _ProductChecker.check_product) sends `GET /` before
  its first request and refuses a server whose `version.number` is 7.14 or later unless the
  response carries the header `X-Elastic-Product: Elasticsearch`; for 7.0-7.13 it wants the
  tagline "You Know, for Search" and `build_flavor` "default". This server sends all three.
- PyPI's elasticsearch 8 and 9 (_sync/client/_base.py) raise UnsupportedProductError on the first
  2xx response without `X-Elastic-Product: Elasticsearch`, and send every request as
  `application/vnd.elasticsearch+json; compatible-with=N` (or `+x-ndjson` for _bulk), N being the
  client's major version. Elasticsearch accepts its own major version and the one before, both
  on Content-Type and Accept and the same on both, and answers in the compatible media type; so
  does this server (the real server's 400 media_type_header_exception otherwise).
- Elasticsearch answers 406 to a Content-Type it does not know, 401 with `WWW-Authenticate` when
  security is on and the credentials are missing or wrong, and sends `X-Elastic-Product` on
  every response.

Endpoints: `GET|HEAD /`, `POST|PUT [/<index>]/_bulk` (index, create, delete; per-item results
and per-item errors, dynamic mapping with mapping conflicts), `GET|POST [/<target>]/_search` and
`_count` (match_all, ids, term, terms, match, bool; size, from), `GET|HEAD /<index>/_doc/<id>`,
`PUT /<index>` (with mappings), `GET /<index>/_mapping`, `POST /<target>/_refresh`.
Documents are searchable at once (as after a refresh).

For the tests: the users/API keys it accepts, readonly users (bulk items answer 403 as
Elasticsearch does for a user without write privileges), fault injection (the next N bulk items
answer 429 or any error; the next N requests answer a given status, or stall), and a record of
every request received, with its headers, body and the principal it authenticated as.

Runs in-process (StandinElasticsearch(...).start(); .url; .stop()) or on its own:
    python tests/es_standin.py --port 9200 [--user NAME:PASSWORD] [--api-key ID:KEY] [--version 9.1.0]
        [--tls CERT KEY]
"""
from __future__ import annotations

import argparse
import base64
import binascii
import fnmatch
import gzip
import json
import re
import secrets
import signal
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

DEFAULT_VERSION = "9.1.0"
# http.max_content_length's default (Elasticsearch's HTTP settings): larger requests get 413.
DEFAULT_MAX_CONTENT_LENGTH = 100 << 20
INVALID_INDEX_CHARS = set('\\/*?"<>| ,#:')
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")
_MEDIA = re.compile(r"^\s*application/(?:vnd\.elasticsearch\+)?(json|x-ndjson|cbor|smile|yaml)\s*(;.*)?$", re.I)
_COMPAT = re.compile(r"compatible-with\s*=\s*(\d+)", re.I)


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str  # without the query string
    query: dict
    headers: dict  # lower-case names
    body: bytes
    principal: Optional[str] = None  # "user:NAME" or "api_key:ID" once authenticated
    status: int = 0

    def json(self):
        return json.loads(self.body)

    def ndjson(self) -> list:
        return [json.loads(line) for line in self.body.split(b"\n") if line.strip()]


@dataclass
class _Doc:
    source: dict
    version: int
    seq_no: int


@dataclass
class _Index:
    name: str
    uuid: str = field(default_factory=lambda: base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22])
    properties: dict = field(default_factory=dict)  # field -> {"type": ...} (objects: "properties")
    docs: dict = field(default_factory=dict)  # _id -> _Doc, in the order they were indexed
    seq_no: int = 0


class _Answer(Exception):
    """Stops handling a request with this status and body."""

    def __init__(self, status: int, body, headers: Optional[dict] = None):
        self.status, self.body, self.headers = status, body, headers or {}


def error_body(status: int, error_type: str, reason: str, **extra) -> dict:
    """Elasticsearch's error response: {"error": {"root_cause": [...], "type", "reason"}, "status"}."""
    cause = {"type": error_type, "reason": reason, **extra}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


class StandinElasticsearch:
    """A stand-in Elasticsearch node on 127.0.0.1 (no real one can be had here: see the module's
    docstring). Thread-safe: the tests inspect and steer it while clients talk to it."""

    def __init__(self, *, port: int = 0, version: str = DEFAULT_VERSION, users: Optional[dict] = None,
                 api_keys: Optional[dict] = None, readonly_users=(), product_header: bool = True,
                 max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH, cluster_name: str = "standin-cluster",
                 tls: Optional[tuple] = None):
        self.port = port
        self.tls = tls  # (certificate file, key file): serve HTTPS
        self.version = version
        self.major = int(version.split(".")[0])
        self.users = dict(users or {})  # name -> password; none and no api_keys: security off
        self.api_keys = dict(api_keys or {})  # id -> key
        self.readonly_users = set(readonly_users)
        self.product_header = product_header
        self.max_content_length = max_content_length
        self.cluster_name = cluster_name
        self.cluster_uuid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        self.node_name = f"standin-{secrets.token_hex(3)}"
        self.requests: list = []
        self.indices: dict = {}
        self.lock = threading.RLock()
        self._item_faults: list = []  # per bulk item, consumed in order: (status, type, reason)
        # per request: (path or None, "status", status, body, headers) or (path or None, "stall", seconds)
        self._request_faults: list = []
        self._released = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._connections: set = set()

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "StandinElasticsearch":
        standin = self

        class Handler(_Handler):
            server_standin = standin

        self._server = _Server(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            # The handshake happens in the request's thread (_Handler.setup), so a client that
            # refuses the certificate does not hold up the accepting thread.
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self.port = self._server.server_address[1]
        self._released.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="es-standin", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stops listening and closes every open connection: a client then finds it down."""
        self._released.set()  # stalled requests end now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self.lock:
                connections = list(self._connections)
            for conn in connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- steering, for the tests ----------------------------------------------------------
    def fail_next_items(self, count: int = 1, status: int = 429, error_type: Optional[str] = None,
                        reason: Optional[str] = None) -> None:
        """The next `count` bulk items (index/create/delete actions) answer this error."""
        if error_type is None:
            error_type = {429: "es_rejected_execution_exception", 400: "document_parsing_exception",
                          503: "unavailable_shards_exception"}.get(status, "exception")
        if reason is None:
            reason = {429: "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, "
                           "replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1024, "
                           "max_coordinating_and_primary_bytes=0]",
                      400: "[1:2] failed to parse: injected by the test",
                      503: "[oom-events][0] primary shard is not active Timeout: [1m]"}.get(status, "injected")
        with self.lock:
            self._item_faults.extend([(status, error_type, reason)] * count)

    def fail_next_requests(self, count: int = 1, status: int = 503, body=None, headers: Optional[dict] = None,
                           path: Optional[str] = None) -> None:
        """The next `count` requests (after authentication; only those whose path ends with
        `path`, if given) answer this status instead."""
        if body is None:
            body = error_body(status, {429: "es_rejected_execution_exception", 503: "cluster_block_exception",
                                       500: "exception"}.get(status, "exception"), f"injected HTTP {status}")
        with self.lock:
            self._request_faults.extend([(path, "status", status, body, dict(headers or {}))] * count)

    def stall_next_requests(self, count: int = 1, seconds: float = 30.0, path: Optional[str] = None) -> None:
        """The next `count` requests (whose path ends with `path`, if given) get no answer for
        `seconds`, or until stop()."""
        with self.lock:
            self._request_faults.extend([(path, "stall", seconds)] * count)

    def create_index(self, name: str, properties: Optional[dict] = None) -> None:
        with self.lock:
            self.indices[name] = _Index(name, properties=dict(properties or {}))

    def docs(self, index: str) -> dict:
        """_id -> _source of an index's documents."""
        with self.lock:
            idx = self.indices.get(index)
            return {i: d.source for i, d in idx.docs.items()} if idx else {}

    def requests_to(self, path_suffix: str, method: Optional[str] = None) -> list:
        with self.lock:
            return [r for r in self.requests if r.path.endswith(path_suffix) and (method is None or r.method == method)]

    # --- the REST API ---------------------------------------------------------------------
    def info(self) -> dict:
        major = self.major
        return {
            "name": self.node_name,
            "cluster_name": self.cluster_name,
            "cluster_uuid": self.cluster_uuid,
            "version": {
                "number": self.version,
                "build_flavor": "default",
                "build_type": "tar",
                "build_hash": "0" * 40,
                "build_date": "2025-07-01T00:00:00.000000000Z",
                "build_snapshot": False,
                "lucene_version": "10.2.2" if major >= 9 else "9.12.1" if major == 8 else "8.11.1",
                "minimum_wire_compatibility_version": f"{major - 1}.19.0" if major > 7 else "6.8.0",
                "minimum_index_compatibility_version": f"{major - 1}.0.0",
            },
            "tagline": "You Know, for Search",
        }

    def authenticate(self, headers: dict, path: str) -> Optional[str]:
        if not self.users and not self.api_keys:
            return None  # security off: anonymous
        challenge = {"WWW-Authenticate": 'Basic realm="security", charset="UTF-8", ApiKey'}
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = None
        if scheme.lower() == "basic" and decoded is not None:
            name, _, password = decoded.partition(":")
            if name in self.users and secrets.compare_digest(self.users[name].encode(), password.encode()):
                return f"user:{name}"
            raise _Answer(401, error_body(401, "security_exception",
                                          f"unable to authenticate user [{name}] for REST request [{path}]",
                                          header={"WWW-Authenticate": [challenge["WWW-Authenticate"]]}), challenge)
        if scheme.lower() == "apikey" and decoded is not None:
            key_id, _, key = decoded.partition(":")
            if key_id in self.api_keys and secrets.compare_digest(self.api_keys[key_id].encode(), key.encode()):
                return f"api_key:{key_id}"
            raise _Answer(401, error_body(401, "security_exception",
                                          "unable to authenticate with provided credentials and anonymous access "
                                          "is not allowed for this request",
                                          additional_unsuccessful_credentials="API key: invalid ApiKey value",
                                          header={"WWW-Authenticate": [challenge["WWW-Authenticate"]]}), challenge)
        raise _Answer(401, error_body(401, "security_exception",
                                      f"missing authentication credentials for REST request [{path}]",
                                      header={"WWW-Authenticate": [challenge["WWW-Authenticate"]]}), challenge)

    def negotiate(self, headers: dict, has_body: bool) -> str:
        """Checks Content-Type and Accept as Elasticsearch does; returns the response media type."""
        content_type = headers.get("content-type", "")
        accept = headers.get("accept", "")
        if has_body and not _MEDIA.match(content_type):
            raise _Answer(406, {"error": f"Content-Type header [{content_type}] is not supported", "status": 406})
        compat = {}  # header -> the version it asks for (None: vnd.elasticsearch without compatible-with)
        for name, value, applies in (("Content-Type", content_type, has_body), ("Accept", accept, True)):
            if applies and "vnd.elasticsearch" in value.lower():
                m = _COMPAT.search(value)
                compat[name] = int(m.group(1)) if m else None
        if not compat:
            return "application/json"
        versions = set(compat.values())
        version = next(iter(versions))
        # With a body, both headers must ask for the same compatible version; it must be this
        # major version or the one before.
        if ((has_body and len(compat) != 2) or len(versions) != 1 or version is None
                or not self.major - 1 <= version <= self.major):
            names = ", ".join(sorted(compat))
            raise _Answer(400, error_body(
                400, "media_type_header_exception", f"Invalid media-type value on headers [{names}]",
                caused_by={"type": "status_exception",
                           "reason": "A compatible version is required on both Content-Type and Accept headers "
                                     "if either one has requested a compatible version and the compatible "
                                     f"versions must match. Accept={accept or 'null'}, "
                                     f"Content-Type={content_type or 'null'}"}))
        return f"application/vnd.elasticsearch+json;compatible-with={version}"

    def _check_index_name(self, name: str) -> Optional[dict]:
        if (not name or name != name.lower() or name[0] in "-_+" or name in (".", "..")
                or any(c in INVALID_INDEX_CHARS for c in name) or len(name.encode()) > 255):
            return {"type": "invalid_index_name_exception",
                    "reason": f"Invalid index name [{name}], must be lowercase, must not contain the characters "
                              "[\\, /, *, ?, \", <, >, |, ' ', ',', #, :], must not start with '_', '-' or '+'",
                    "index_uuid": "_na_", "index": name}
        return None

    def _index(self, name: str, create: bool = True) -> Optional[_Index]:
        idx = self.indices.get(name)
        if idx is None and create:
            idx = self.indices[name] = _Index(name)
        return idx

    def _resolve(self, target: Optional[str], allow_missing: bool = False) -> list:
        """Index names a search target means: comma-separated names and wildcards, _all."""
        if not target or target in ("_all", "*"):
            return list(self.indices.values())
        found = []
        for part in target.split(","):
            if any(c in part for c in "*?"):
                found += [i for n, i in self.indices.items() if fnmatch.fnmatchcase(n, part)]
            elif part in self.indices:
                found.append(self.indices[part])
            elif not allow_missing:
                raise _Answer(404, error_body(404, "index_not_found_exception", f"no such index [{part}]",
                                              **{"resource.type": "index_or_alias", "resource.id": part,
                                                 "index_uuid": "_na_", "index": part}))
        return found

    def bulk(self, body: bytes, default_index: Optional[str], principal: Optional[str]) -> dict:
        if not body.endswith(b"\n"):
            raise _Answer(400, error_body(400, "illegal_argument_exception",
                                          "The bulk request must be terminated by a newline [\\n]"))
        lines = body.split(b"\n")
        items, started = [], time.monotonic()
        i = 0
        while i < len(lines):
            raw = lines[i]
            i += 1
            if not raw.strip():
                continue
            try:
                action = json.loads(raw)
                if not isinstance(action, dict) or len(action) != 1:
                    raise ValueError
                ((op, meta),) = action.items()
                if not isinstance(meta, dict):
                    raise ValueError
            except ValueError:
                raise _Answer(400, error_body(400, "illegal_argument_exception",
                                              f"Malformed action/metadata line [{i}], expected START_OBJECT")) from None
            if op not in ("index", "create", "delete", "update"):
                raise _Answer(400, error_body(400, "illegal_argument_exception",
                                              f"Malformed action/metadata line [{i}], expected field [create], "
                                              f"[delete], [index] or [update] but found [{op}]"))
            source = None
            if op != "delete":
                if i >= len(lines) or not lines[i].strip():
                    raise _Answer(400, error_body(400, "action_request_validation_exception",
                                                  "Validation Failed: 1: source is missing;"))
                try:
                    source = json.loads(lines[i])
                except ValueError as e:
                    source = e  # a per-item parse error
                i += 1
            items.append({op: self._bulk_item(op, meta, source, default_index, principal)})
        return {"errors": any("error" in next(iter(it.values())) for it in items),
                "took": int((time.monotonic() - started) * 1000), "items": items}

    def _bulk_item(self, op: str, meta: dict, source, default_index: Optional[str], principal: Optional[str]) -> dict:
        index = meta.get("_index", default_index)
        doc_id = meta.get("_id")
        result = {"_index": index, "_id": doc_id}

        def failed(status: int, error: dict) -> dict:
            return {**result, "status": status, "error": error}

        if not index:
            return failed(400, {"type": "action_request_validation_exception",
                                "reason": "Validation Failed: 1: index is missing;"})
        bad_name = self._check_index_name(index)
        if bad_name:
            return failed(400, bad_name)
        if self._item_faults:
            status, error_type, reason = self._item_faults.pop(0)
            return failed(status, {"type": error_type, "reason": reason})
        if principal and principal.startswith("user:") and principal[5:] in self.readonly_users:
            return failed(403, {"type": "security_exception",
                                "reason": f"action [indices:data/write/bulk[s]] is unauthorized for user "
                                          f"[{principal[5:]}] with effective roles [viewer] on indices [{index}], "
                                          "this action is granted by the index privileges "
                                          "[create_doc,create,index,write,all]"})
        if op == "update":
            return failed(400, {"type": "illegal_argument_exception",
                                "reason": "the stand-in does not implement bulk update"})
        idx = self._index(index, create=op != "delete")
        if op == "delete":
            if idx is None or doc_id not in idx.docs:
                return {**result, "_version": 1, "result": "not_found", "status": 404,
                        "_shards": {"total": 2, "successful": 1, "failed": 0}}
            old = idx.docs.pop(doc_id)
            idx.seq_no += 1
            return {**result, "_version": old.version + 1, "result": "deleted", "status": 200,
                    "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": idx.seq_no, "_primary_term": 1}
        if isinstance(source, Exception) or not isinstance(source, dict):
            return failed(400, {"type": self._parsing_error_type(),
                                "reason": "[1:1] failed to parse: the document is not a JSON object"})
        if doc_id is None:
            doc_id = base64.urlsafe_b64encode(secrets.token_bytes(15)).decode()
            result["_id"] = doc_id
        elif not isinstance(doc_id, str) or len(doc_id.encode()) > 512:
            return failed(400, {"type": "illegal_argument_exception",
                                "reason": "id [...] is too long, must be no longer than 512 bytes"})
        existing = idx.docs.get(doc_id)
        if op == "create" and existing is not None:
            return failed(409, {"type": "version_conflict_engine_exception",
                                "reason": f"[{doc_id}]: version conflict, document already exists "
                                          f"(current version [{existing.version}])",
                                "index_uuid": idx.uuid, "shard": "0", "index": index})
        mapping_error = self._map(idx, source, doc_id)
        if mapping_error:
            return failed(400, {**mapping_error, "index_uuid": idx.uuid, "shard": "0", "index": index})
        idx.seq_no += 1
        version = existing.version + 1 if existing else 1
        idx.docs[doc_id] = _Doc(source, version, idx.seq_no)
        return {**result, "_version": version, "result": "updated" if existing else "created",
                "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": idx.seq_no,
                "_primary_term": 1, "status": 200 if existing else 201}

    def _parsing_error_type(self) -> str:
        # Elasticsearch 8.7 renamed mapper_parsing_exception (document parsing) to document_parsing_exception.
        return "document_parsing_exception" if tuple(map(int, self.version.split(".")[:2])) >= (8, 7) \
            else "mapper_parsing_exception"

    # --- dynamic mapping: each field's type is fixed by the mapping or by its first value -------
    def _map(self, idx: _Index, source: dict, doc_id: str) -> Optional[dict]:
        new = json.loads(json.dumps(idx.properties))
        error = self._map_object(new, source, "", doc_id)
        if error:
            return error
        idx.properties = new
        return None

    def _map_object(self, properties: dict, obj: dict, prefix: str, doc_id: str) -> Optional[dict]:
        for name, value in obj.items():
            path = prefix + name
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v is None:
                    continue
                mapping = properties.get(name)
                if mapping is None:
                    mapping = properties[name] = self._dynamic(v)
                ftype = mapping.get("type", "object")
                if ftype == "object":
                    if not isinstance(v, dict):
                        return {"type": self._parsing_error_type(),
                                "reason": f"object mapping for [{path}] tried to parse field [{name}] as object, "
                                          "but found a concrete value"}
                    error = self._map_object(mapping.setdefault("properties", {}), v, path + ".", doc_id)
                    if error:
                        return error
                elif not self._fits(ftype, v):
                    preview = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
                    return {"type": self._parsing_error_type(),
                            "reason": f"[1:2] failed to parse field [{path}] of type [{ftype}] in document with "
                                      f"id '{doc_id}'. Preview of field's value: '{preview[:256]}'",
                            "caused_by": {"type": "illegal_argument_exception",
                                          "reason": f"For input string: \"{preview[:64]}\""
                                          if isinstance(v, str) else f"Cannot parse {type(v).__name__} as {ftype}"}}
        return None

    @staticmethod
    def _dynamic(value) -> dict:
        """Elasticsearch's dynamic field mapping (date_detection on, numeric_detection off)."""
        if isinstance(value, bool):
            return {"type": "boolean"}
        if isinstance(value, int):
            return {"type": "long"}
        if isinstance(value, float):
            return {"type": "float"}
        if isinstance(value, dict):
            return {"properties": {}}
        if isinstance(value, str) and _DATE.match(value):
            return {"type": "date"}
        return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}

    @staticmethod
    def _fits(ftype: str, v) -> bool:
        if isinstance(v, dict):
            return ftype in ("flattened",)
        if ftype in ("long", "integer", "short", "byte"):
            if isinstance(v, bool):
                return False
            if isinstance(v, (int, float)):
                return True
            return isinstance(v, str) and re.fullmatch(r"\s*-?\d+(\.\d*)?\s*", v) is not None  # coerce: true
        if ftype in ("float", "double", "half_float", "scaled_float"):
            if isinstance(v, bool):
                return False
            if isinstance(v, (int, float)):
                return True
            try:
                float(v)
                return True
            except (TypeError, ValueError):
                return False
        if ftype == "boolean":
            return isinstance(v, bool) or v in ("true", "false", "")
        if ftype == "date":
            return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(_DATE.match(v)))
        return isinstance(v, (str, int, float, bool))  # text, keyword, ...: values are coerced to strings

    # --- search ---------------------------------------------------------------------------
    def search(self, target: Optional[str], body: dict, query_params: dict, count_only: bool = False) -> dict:
        indices = self._resolve(target, allow_missing=query_params.get("ignore_unavailable") == "true")
        query = body.get("query") if isinstance(body, dict) else None
        if query is None and "q" in query_params:
            query = self._uri_query(query_params["q"])
        query = query or {"match_all": {}}
        hits = []
        for idx in indices:
            for doc_id, doc in idx.docs.items():
                if self._matches(query, doc_id, doc.source, idx):
                    hits.append({"_index": idx.name, "_id": doc_id, "_score": 1.0, "_source": doc.source})
        shards = {"total": len(indices), "successful": len(indices), "skipped": 0, "failed": 0}
        if count_only:
            return {"count": len(hits), "_shards": shards}
        start = int(body.get("from", query_params.get("from", 0)) or 0)
        size = int(body.get("size", query_params.get("size", 10)))
        return {"took": 1, "timed_out": False, "_shards": shards,
                "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": 1.0 if hits else None,
                         "hits": hits[start:start + size]}}

    @staticmethod
    def _uri_query(q: str) -> dict:
        if q.strip() in ("*", "*:*", ""):
            return {"match_all": {}}
        name, sep, value = q.partition(":")
        return {"match": {name: value.strip('"')}} if sep else {"match": {"*": q}}

    @staticmethod
    def _field_values(source: dict, name: str) -> list:
        if name.endswith(".keyword"):
            name = name[: -len(".keyword")]
        values = [source]
        for part in name.split("."):
            nxt = []
            for v in values:
                if isinstance(v, dict) and part in v:
                    got = v[part]
                    nxt += got if isinstance(got, list) else [got]
            values = nxt
        return [v for v in values if v is not None]

    @staticmethod
    def _tokens(text) -> set:
        return set(re.findall(r"\w+", str(text).lower()))

    def _matches(self, query: dict, doc_id: str, source: dict, idx: _Index) -> bool:
        if not isinstance(query, dict) or len(query) != 1:
            raise _Answer(400, error_body(400, "parsing_exception", "[query] malformed query, expected a single "
                                                                    "query type"))
        ((kind, spec),) = query.items()
        if kind == "match_all":
            return True
        if kind == "match_none":
            return False
        if kind == "ids":
            return doc_id in spec.get("values", [])
        if kind in ("term", "terms", "match", "match_phrase"):
            ((name, want),) = [(k, v) for k, v in spec.items() if k != "boost"]
            if kind == "terms":
                wanted = list(want)
            elif isinstance(want, dict):
                wanted = [want.get("value", want.get("query"))]
            else:
                wanted = [want]
            if name == "_id":
                return doc_id in [str(w) for w in wanted]
            values = [v for k, v in source.items()] if name == "*" else self._field_values(source, name)
            for w in wanted:
                for v in values:
                    if kind in ("term", "terms"):
                        if v == w or (isinstance(v, (int, float)) and str(v) == str(w)):
                            return True
                    elif kind == "match_phrase":
                        if str(w).lower() in str(v).lower():
                            return True
                    elif v == w or self._tokens(w) & self._tokens(v):
                        return True
            return False
        if kind == "bool":
            def clauses(key):
                c = spec.get(key, [])
                return c if isinstance(c, list) else [c]
            if not all(self._matches(q, doc_id, source, idx) for q in clauses("must") + clauses("filter")):
                return False
            if any(self._matches(q, doc_id, source, idx) for q in clauses("must_not")):
                return False
            should = clauses("should")
            if should and not (clauses("must") or clauses("filter")):
                return any(self._matches(q, doc_id, source, idx) for q in should)
            return True
        raise _Answer(400, error_body(400, "parsing_exception", f"unknown query [{kind}] (the stand-in "
                                                                "implements match_all, ids, term, terms, match, bool)"))

    def get_doc(self, index: str, doc_id: str) -> tuple:
        idx = self.indices.get(index)
        if idx is None:
            raise _Answer(404, error_body(404, "index_not_found_exception", f"no such index [{index}]",
                                          **{"resource.type": "index_expression", "resource.id": index,
                                             "index_uuid": "_na_", "index": index}))
        doc = idx.docs.get(doc_id)
        if doc is None:
            return 404, {"_index": index, "_id": doc_id, "found": False}
        return 200, {"_index": index, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no,
                     "_primary_term": 1, "found": True, "_source": doc.source}

    # --- routing --------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, headers: dict, body: bytes, record: Recorded) -> tuple:
        """(status, body, extra headers, media type) of one request."""
        record.principal = self.authenticate(headers, path)
        media = self.negotiate(headers, bool(body))
        with self.lock:
            fault = next((f for f in self._request_faults if f[0] is None or path.endswith(f[0])), None)
            if fault:
                self._request_faults.remove(fault)
        if fault and fault[1] == "stall":
            self._released.wait(fault[2])
            raise _Answer(503, error_body(503, "stand_in_stalled", "the stand-in stalled this request"))
        if fault:
            _, _, status, fault_body, fault_headers = fault
            return status, fault_body, fault_headers, media
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []

        def parse_body():
            if not body:
                return {}
            try:
                return json.loads(body)
            except ValueError:
                raise _Answer(400, error_body(400, "parse_exception", "request body is not valid JSON")) from None

        with self.lock:
            if not parts and method in ("GET", "HEAD"):
                return 200, self.info(), {}, media
            if parts and parts[-1] == "_bulk" and len(parts) <= 2 and method in ("POST", "PUT"):
                return 200, self.bulk(body, parts[0] if len(parts) == 2 else None, record.principal), {}, media
            if parts and parts[-1] in ("_search", "_count") and len(parts) <= 2 and method in ("GET", "POST"):
                target = parts[0] if len(parts) == 2 else None
                return 200, self.search(target, parse_body(), query, count_only=parts[-1] == "_count"), {}, media
            if len(parts) == 3 and parts[1] == "_doc" and method in ("GET", "HEAD"):
                status, answer = self.get_doc(parts[0], parts[2])
                return status, answer, {}, media
            if len(parts) == 2 and parts[1] == "_refresh" and method == "POST":
                n = len(self._resolve(parts[0]))
                return 200, {"_shards": {"total": n, "successful": n, "failed": 0}}, {}, media
            if len(parts) == 2 and parts[1] == "_mapping" and method == "GET":
                mappings = {i.name: {"mappings": {"properties": i.properties}} for i in self._resolve(parts[0])}
                return 200, mappings, {}, media
            if len(parts) == 1 and not parts[0].startswith("_") and method == "PUT":
                bad = self._check_index_name(parts[0])
                if bad:
                    raise _Answer(400, {"error": {"root_cause": [bad], **bad}, "status": 400})
                if parts[0] in self.indices:
                    idx = self.indices[parts[0]]
                    raise _Answer(400, error_body(400, "resource_already_exists_exception",
                                                  f"index [{parts[0]}/{idx.uuid}] already exists",
                                                  index_uuid=idx.uuid, index=parts[0]))
                spec = parse_body()
                self.create_index(parts[0], (spec.get("mappings") or {}).get("properties"))
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": parts[0]}, {}, media
        raise _Answer(405 if parts and parts[-1] in ("_bulk", "_search", "_count") else 400,
                      {"error": f"no handler found for uri [{path}] and method [{method}]",
                       "status": 405 if parts and parts[-1] in ("_bulk", "_search", "_count") else 400})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that refused our certificate or went away: nothing to report


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server_standin: StandinElasticsearch = None

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        with self.server_standin.lock:
            self.server_standin._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server_standin.lock:
                self.server_standin._connections.discard(self.connection)

    def log_message(self, fmt, *args):  # the record is self.server_standin.requests
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def _serve(self):
        standin = self.server_standin
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(self.headers.get("Content-Length") or 0)
        record = Recorded(self.command, url.path, query, headers, b"")
        with standin.lock:
            standin.requests.append(record)
        extra, media = {}, "application/json"
        try:
            if length > standin.max_content_length:
                self.rfile.read(length)  # read it, so the client sees the 413 and not a reset
                raise _Answer(413, None)
            body = self._read_body()
            record.body = body
            status, answer, extra, media = standin.handle(self.command, url.path, query, headers, body, record)
        except _Answer as a:
            status, answer, extra = a.status, a.body, a.headers
        except Exception as e:  # a bug in the stand-in: answer as Elasticsearch does to its own bugs
            status, answer = 500, error_body(500, "exception", f"stand-in error: {type(e).__name__}: {e}")
        record.status = status
        data = b"" if answer is None else json.dumps(answer).encode()
        try:
            self.send_response(status)
            if standin.product_header:
                self.send_header("X-Elastic-Product", "Elasticsearch")
            for k, v in extra.items():
                self.send_header(k, str(v))
            if answer is not None:
                self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (its timeout): nothing to answer

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="A stand-in Elasticsearch server for tests (no real one can be had here).")
    p.add_argument("--port", type=int, default=9200)
    p.add_argument("--version", default=DEFAULT_VERSION, help="the Elasticsearch version it claims")
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    p.add_argument("--api-key", action="append", default=[], metavar="ID:KEY")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS with this certificate and key")
    args = p.parse_args(argv)
    standin = StandinElasticsearch(port=args.port, version=args.version,
                                   users=dict(u.split(":", 1) for u in args.user),
                                   api_keys=dict(k.split(":", 1) for k in args.api_key),
                                   tls=tuple(args.tls) if args.tls else None).start()
    print(f"stand-in Elasticsearch {args.version} listening on {standin.url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
