"""A STAND-IN for Slack's incoming webhooks: there is no Slack here (this machine reaches only the
package registries), and Slack ships no server one could run. So this local HTTP server answers
as Slack's incoming webhooks are documented to answer, and the Slack sink's tests post to it:

- POST of a JSON message to the webhook's secret path: `200 ok`.
- Another path: `404 no_service` (what Slack answers for a removed or unknown webhook).
- A message that is not JSON: `400 invalid_payload`; neither `text` nor `blocks`: `400 no_text`;
  blocks that break Block Kit's documented limits: `400 invalid_blocks` (a header's plain_text
  over 150 characters, a section's text over 3000, more than 10 fields or a field over 2000, a
  context with more than 10 elements, more than 50 blocks, a text object that is not plain_text /
  mrkdwn, emoji on mrkdwn or verbatim on plain_text, empty text).
- A `channel` it does not know: `404 channel_not_found`; an archived one: `410 channel_is_archived`.
- Too many posts (a token bucket, when asked: Slack allows about one a second, with short bursts):
  `429 rate_limited` with a `Retry-After` header in seconds.
- Any answer can be scripted for the next requests (`respond_next`), e.g. 429 with Retry-After: 2,
  500 rollup_error, 403 action_prohibited.
- A slow Slack, when asked (`hold`): each post to the webhook is answered only after a delay, so
  a test can act while a delivery is in flight (`in_flight` counts the posts being held).

Sources: api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks (the status
codes and reasons), api.slack.com/docs/rate-limits (429 + Retry-After), docs.slack.dev/reference/
block-kit/blocks/* and composition-objects/text-object (the limits). Lengths are counted in code
points here; the sink counts UTF-16 units, which is never fewer.

Every request is recorded (arrival time, path, headers, raw body, parsed payload, the answer), so
tests assert on what "Slack" received. It listens on 127.0.0.1, port 0 (a free one), threaded;
stop() shuts it down. Nothing here is started by name or stopped by name.
"""
from __future__ import annotations

import json
import math
import secrets
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

BLOCK_TYPES = {"header", "section", "context", "divider", "image", "actions", "rich_text", "markdown"}
TEXT_TYPES = {"plain_text", "mrkdwn"}
MAX_BODY = 1 << 20


@dataclass
class Received:
    """One request as the stand-in saw it, and what it answered."""

    time: float  # time.monotonic() when it arrived
    method: str
    path: str
    headers: dict
    body: bytes
    payload: Optional[dict] = None
    status: int = 0
    answer: str = ""
    problem: str = ""  # why a payload was refused, in more words than Slack gives
    extra_headers: dict = field(default_factory=dict)


def _text_object(obj, where: str, limit: int, plain_only: bool = False) -> Optional[str]:
    if not isinstance(obj, dict):
        return f"{where}: a text object must be an object"
    kind = obj.get("type")
    if kind not in TEXT_TYPES or (plain_only and kind != "plain_text"):
        return f"{where}: type must be {'plain_text' if plain_only else 'plain_text or mrkdwn'}, not {kind!r}"
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return f"{where}: text must be a non-empty string"
    if len(text) > limit:
        return f"{where}: text is {len(text)} characters, more than {limit}"
    if "emoji" in obj and (kind != "plain_text" or not isinstance(obj["emoji"], bool)):
        return f"{where}: emoji is only for plain_text, and a boolean"
    if "verbatim" in obj and (kind != "mrkdwn" or not isinstance(obj["verbatim"], bool)):
        return f"{where}: verbatim is only for mrkdwn, and a boolean"
    unknown = set(obj) - {"type", "text", "emoji", "verbatim"}
    if unknown:
        return f"{where}: unknown fields {sorted(unknown)}"
    return None


def validate_payload(payload) -> tuple:
    """(reason, problem) as Slack would refuse this message, or (None, None) if it accepts it."""
    if not isinstance(payload, dict):
        return "invalid_payload", "the message must be a JSON object"
    text, blocks = payload.get("text"), payload.get("blocks")
    if text is not None and not isinstance(text, str):
        return "invalid_payload", "text must be a string"
    if blocks is not None and not isinstance(blocks, list):
        return "invalid_blocks_format", "blocks must be an array"
    if not text and not blocks:
        return "no_text", "neither text nor blocks"
    if "channel" in payload and not isinstance(payload["channel"], str):
        return "invalid_payload", "channel must be a string"
    for i, block in enumerate(blocks or ()):
        where = f"blocks[{i}]"
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            return "invalid_blocks", f"{where}: unknown block type"
        if len(str(block.get("block_id", ""))) > 255:
            return "invalid_blocks", f"{where}: block_id over 255 characters"
        kind = block["type"]
        problem = None
        if kind == "header":
            problem = _text_object(block.get("text"), where + ".text", 150, plain_only=True)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problem = f"{where}: a section needs text or fields"
            if "text" in block:
                problem = problem or _text_object(block["text"], where + ".text", 3000)
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    problem = problem or f"{where}.fields: 1 to 10 text objects"
                else:
                    for j, f in enumerate(fields):
                        problem = problem or _text_object(f, f"{where}.fields[{j}]", 2000)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                problem = f"{where}.elements: 1 to 10 elements"
            else:
                for j, e in enumerate(elements):
                    if isinstance(e, dict) and e.get("type") == "image":
                        continue
                    problem = problem or _text_object(e, f"{where}.elements[{j}]", 3000)
        if problem:
            return "invalid_blocks", problem
    if blocks and len(blocks) > 50:
        return "invalid_blocks", f"{len(blocks)} blocks, more than 50"
    return None, None


class SlackStandin:
    """A stand-in for one Slack incoming webhook (there is no Slack here)."""

    def __init__(self, channels=None, archived=()):
        # The webhook's secret path, shaped like Slack's /services/T.../B.../<24 characters>.
        self.token = secrets.token_urlsafe(18)
        self.path = f"/services/T0STANDIN/B0STANDIN/{self.token}"
        self.channels = set(channels) if channels is not None else None  # None: any channel exists
        self.archived = set(archived)
        self.received: list = []
        self._script: deque = deque()
        self._bucket: Optional[list] = None  # [rate per second, burst, tokens, last refill]
        self._hold = 0.0  # seconds each post to the webhook waits before its answer
        self.in_flight = 0  # posts arrived and not yet answered
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # --- control ------------------------------------------------------------------------
    def start(self) -> "SlackStandin":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Slack's front end does
            timeout = 10  # an idle kept-alive connection's thread ends after this

            def do_POST(self):  # noqa: N802 (http.server's naming)
                standin._handle(self)

            def log_message(self, format, *args):  # quiet: the tests read `received`
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="slack-standin")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The webhook URL: a secret, as Slack's are."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    def url_with_path(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def respond_next(self, status: int, body: str, headers: Optional[dict] = None, count: int = 1) -> None:
        """The next `count` posts to the webhook get this answer, whatever they hold."""
        with self._lock:
            for _ in range(count):
                self._script.append((status, body, dict(headers or {})))

    def clear_script(self) -> None:
        """Forget the scripted answers that are left: answer normally again."""
        with self._lock:
            self._script.clear()

    def rate_limit(self, per_second: float = 1.0, burst: float = 2.0) -> None:
        """Refuse posts beyond `per_second`, allowing `burst` at once, as Slack does (429)."""
        with self._lock:
            self._bucket = [per_second, burst, burst, time.monotonic()]

    def hold(self, seconds: float) -> None:
        """Answer each post to the webhook only after `seconds` (0: at once again)."""
        with self._lock:
            self._hold = seconds

    def accepted(self) -> list:
        return [r for r in self.received if r.status == 200]

    # --- the webhook --------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
        try:
            self._respond(h)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _respond(self, h: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(min(length, MAX_BODY)) if length else b""
        rec = Received(time=arrived, method=h.command, path=h.path, headers=dict(h.headers.items()), body=body)
        with self._lock:
            hold = self._hold if urllib.parse.urlsplit(rec.path).path == self.path else 0.0
        time.sleep(hold)
        status, answer, headers = self._answer(rec, length)
        rec.status, rec.answer, rec.extra_headers = status, answer, headers
        with self._lock:
            self.received.append(rec)
        data = answer.encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/html")  # what Slack labels its one-word answers with
        h.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)
        if headers.get("Connection") == "close":
            h.close_connection = True

    def _answer(self, rec: Received, length: int) -> tuple:
        if urllib.parse.urlsplit(rec.path).path != self.path:
            return 404, "no_service", {}
        with self._lock:
            if self._script:
                return self._script.popleft()
            if self._bucket is not None:
                rate, burst, tokens, last = self._bucket
                tokens = min(burst, tokens + (rec.time - last) * rate)
                if tokens < 1:
                    self._bucket[2:] = [tokens, rec.time]
                    return 429, "rate_limited", {"Retry-After": str(math.ceil((1 - tokens) / rate))}
                self._bucket[2:] = [tokens - 1, rec.time]
        if length > MAX_BODY:  # not read to its end: this connection cannot carry another request
            return 413, "request_too_large", {"Connection": "close"}
        ctype = rec.headers.get("Content-Type", "")
        try:
            if ctype.startswith("application/x-www-form-urlencoded"):
                form = urllib.parse.parse_qs(rec.body.decode("utf-8"))
                rec.payload = json.loads(form["payload"][0])
            else:
                rec.payload = json.loads(rec.body.decode("utf-8"))
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            rec.problem = f"not JSON: {e}"
            return 400, "invalid_payload", {}
        reason, rec.problem = validate_payload(rec.payload)
        if reason:
            return 400, reason, {}
        channel = rec.payload.get("channel")
        if channel is not None:
            if channel in self.archived:
                return 410, "channel_is_archived", {}
            if self.channels is not None and channel not in self.channels:
                return 404, "channel_not_found", {}
        return 200, "ok", {}
