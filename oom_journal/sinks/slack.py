"""The Slack sink: one Block Kit message per incident in each round, posted to an incoming webhook.

Incidents (a burst of kills in one place, enrich/incident.py): Slack allows one message a second
per webhook, and 20 kills in 5 s sent one by one arrive over 20 s. So each deliver() round puts the
kills of one incident that are waiting into ONE message naming each of them (pid, comm, the command
line shortened for display), up to NAMED_MAX, then "and N more" with the journalctl command that
lists them all. An incoming webhook cannot edit a message it posted (chat.update needs an API token
and the message's ts, which a webhook's `200 ok` does not return), so the kills that come while the
sink waits for its next slot follow in the next message, headed as more kills of the same incident.
The worker asks hold_off() before taking its rows, so a round takes what came during the wait:
every kill of a burst is posted within about one interval of being queued. A lone kill is the
detailed message of one event it always was.

An incoming webhook is an HTTPS POST of a JSON message to a secret URL; Slack answers `200 ok`, or
an error status with a plain-text reason (api.slack.com/changelog/2016-05-17-changes-to-errors-for-
incoming-webhooks): 400 invalid_payload / user_not_found, 403 action_prohibited, 404
channel_not_found (and no_service: the webhook was removed or disabled), 410 channel_is_archived,
500 rollup_error; and 429 with a Retry-After header when rate-limited (api.slack.com/docs/rate-limits:
"no more than one message per second ... bursts over that limit for short periods").

Outcomes ("should we retry?" is this sink's decision; delivery/backoff.py decides how):
  2xx                                   OK
  429                                   RETRY, retry_after = the Retry-After header
  408, 5xx                              RETRY (Slack's side, or a proxy's, is in trouble)
  timeout, refused, DNS, TLS, reset     RETRY (the network; the outbox waits)
  3xx                                   FAILED (a webhook never redirects: the URL is wrong;
                                        the redirect is not followed, so the secret stays put)
  other 4xx (400 invalid_payload, 403 action_prohibited, 404 no_service / channel_not_found,
  410 channel_is_archived, ...)         FAILED, with Slack's reason text
  a document that cannot be rendered    FAILED

The webhook URL is a secret: whoever has it can post to the channel. It never appears in a log
record (urllib3 logs the request line at DEBUG: a filter on its loggers redacts it), in
Delivery.error (requests' exceptions carry the URL: the errors are rebuilt, then redacted), or in
describe() (redact.mask).

Everything that comes from the victim (comm, argv, unit, cgroup) or the host (hostname) is hostile.
Slack treats `&`, `<` and `>` as control characters in text objects, so they are sent as
`&amp;`, `&lt;` and `&gt;` (api.slack.com/reference/surfaces/formatting#escaping) in EVERY text
field, plain_text included: Slack itself stores plain_text with these entities and decodes them for
display (seen in slackapi/bolt-python#513, where a plain_text "Answer & 1" came back as
"Answer &amp; 1"). So `<!channel>`, `<!here>`, `<@U123>` and `<https://evil|click>` arrive as text,
never as a mention or a link. mrkdwn text objects also carry `verbatim: true`, which stops Slack's
automatic parsing (bare URLs to links, #channel names, "certain mentions"). Control characters are
shown escaped (\\x1b), as in the journal's MESSAGE. The command line sits in a ``` code block,
where mrkdwn has no escape for a backtick: each backtick is shown as U+02CB (ˋ, MODIFIER LETTER
GRAVE ACCENT), so nothing can close the block early. Process values elsewhere in mrkdwn (comm,
unit, cgroup, hostname) sit in inline code, where *bold*, _italic_ and ~strike~ do not apply.
The text is shortened FOR DISPLAY only, within each block's limit (header 150, section text 3000,
field 2000 characters), with a visible mark; the journal, and every other sink, keep all of it.
"""
from __future__ import annotations

import json
import logging
import shlex
import socket
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any, Optional

from oom_journal import __version__
from oom_journal.redact import Scrubber, mask, secret_url_forms
from oom_journal.text import human_size, printable
from oom_journal.sinks.base import FAILED, OK, RETRY, Delivery, Sink, SinkUnavailable
from oom_journal.sinks.http import retry_after

log = logging.getLogger(__name__)

# Slack's documented limits (docs.slack.dev/reference/block-kit/...): header text 150 characters,
# section text 3000, section fields 10 of 2000 each, context elements 10, a message 50 blocks.
HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
# The top-level `text` is the notification (and what clients without blocks show); Slack cuts a
# message's text at 40,000 characters, a notification shows far less: ours stays short.
FALLBACK_MAX = 1000
# Slack allows one message a second per webhook, with short bursts: this sink posts at most one a
# second, counting from its previous post, also across deliver() calls.
POST_INTERVAL = 1.0
# One deliver() blocks about this long at most: pacing, connecting and waiting for Slack's
# answers all come out of it; what does not fit is RETRY, for the next round.
DELIVER_BUDGET = 10.0
CONNECT_TIMEOUT = 5.0  # a connect to Slack takes milliseconds; 5 s means the network is broken
PROBE_TIMEOUT = 3.0  # the daemon waits 5 s for all the sinks' probes together
REASON_BYTES = 1024  # how much of an error answer is read: Slack's reasons are one short word
ELLIPSIS = "…"

# Slack's reasons, with what a person should do about each (the changelog above, and the
# incoming webhooks page).
_HINTS = {
    "invalid_payload": "Slack could not read the message",
    "invalid_blocks": "Slack rejected the message's blocks",
    "user_not_found": "the user in the message does not exist",
    "action_prohibited": "the workspace forbids this webhook to post here",
    "posting_to_general_channel_denied": "only admins may post to this channel",
    "channel_not_found": "the channel does not exist or the webhook cannot post to it (--slack-channel)",
    "channel_is_archived": "the channel is archived",
    "no_service": "the webhook URL is wrong, or the webhook was removed or disabled: make a new one",
    "no_team": "the workspace of this webhook is gone",
    "team_disabled": "the workspace of this webhook is disabled",
    "invalid_token": "the webhook's token is no longer valid: make a new webhook",
}


class SlackSink(Sink):
    name = "slack"
    option = "--slack-webhook"
    # A round posts one message per incident among its documents, one a second: a burst's kills
    # are one message, and kills of up to ~9 places fit in DELIVER_BUDGET; the rest wait a round.
    max_batch = 100

    def __init__(self, cfg, *, timeout: float = DELIVER_BUDGET, interval: float = POST_INTERVAL,
                 clock=time.monotonic, sleep=time.sleep, connect=socket.create_connection):
        self.url = cfg.slack_webhook
        self.channel = getattr(cfg, "slack_channel", None) or None
        self.timeout = timeout
        self.interval = interval
        self._clock, self._sleep, self._connect = clock, sleep, connect
        self._session: Any = None  # a requests.Session, made by open()
        self._requests: Any = None  # the requests module, imported by open()
        self._redactor = _Redactor(self.url)
        self._last_post: Optional[float] = None  # clock() of the previous post
        self._not_before: Optional[float] = None  # clock() before which Slack asked us not to post

    # --- life cycle -------------------------------------------------------------------------
    def open(self) -> None:
        try:
            import requests
        except ImportError:
            raise SinkUnavailable(self.option, "the Slack sink needs the Python module requests: "
                                               "apt install python3-requests") from None
        self._requests = requests
        # Loggers exist once their modules are imported: now every urllib3/requests logger does.
        self._redactor.attach()
        session = requests.Session()
        session.headers.update({"Content-Type": "application/json; charset=utf-8",
                                "User-Agent": f"oom-journal/{__version__}"})
        self._session = session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._redactor.detach()

    def describe(self) -> str:
        text = f"slack webhook {mask(self.url)}"
        return text + f" channel {self.channel}" if self.channel else text

    def probe(self) -> Optional[str]:
        """Can this machine reach the webhook's host (or its proxy)? Only that: the webhook itself
        cannot be checked without posting a message to the channel, which a start must not do
        (`oom-journal test-sinks` posts a marked test message on purpose)."""
        parts = urllib.parse.urlsplit(self.url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        via = ""
        proxy = _proxy_for(parts.scheme, host)
        if proxy:
            p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
            if p.hostname:  # only host and port: a proxy URL may hold a password
                host, port = p.hostname, p.port or (443 if p.scheme == "https" else 80)
                via = " (the proxy)"
        try:
            self._connect((host, port), timeout=PROBE_TIMEOUT).close()
        except socket.gaierror as e:
            return f"cannot resolve {host}{via}: {e.strerror or e}"
        except socket.timeout:
            return f"no answer from {host}:{port}{via} within {PROBE_TIMEOUT:.0f} s"
        except OSError as e:
            return f"cannot connect to {host}:{port}{via}: {e.strerror or type(e).__name__}"
        return None

    # --- delivery ---------------------------------------------------------------------------
    def hold_off(self) -> float:
        """Seconds until this sink may post again (its pacing, or Slack's Retry-After): the worker
        waits that long before it takes its rows, so the next message carries what came meanwhile."""
        now = self._clock()
        ready = max(self._last_post + self.interval if self._last_post is not None else now,
                    self._not_before if self._not_before is not None else now)
        return max(0.0, ready - now)

    def deliver(self, documents: list) -> list:
        """One message per incident among the documents (a document without incident_id alone),
        in order of their first document; every document of a message gets its outcome."""
        groups: dict = {}
        for i, doc in enumerate(documents):
            key = doc.get("incident_id") if isinstance(doc, dict) else None
            if is_completion(doc):
                key = None  # its own short message: not a victim of the incident again
            groups.setdefault(key if isinstance(key, str) and key else ("alone", i), []).append(i)
        messages = list(groups.values())
        outcomes = self._deliver_messages([[documents[i] for i in m] for m in messages])
        results: list = [None] * len(documents)
        for members, outcome in zip(messages, outcomes, strict=True):
            for i in members:
                results[i] = outcome
        return results

    def _deliver_messages(self, documents: list) -> list:
        """Posts one message per document, one a second, in order. Stops at the first answer that
        says "later" (429, 5xx, the network): the rest of the round is RETRY without a post, as
        they would meet the same answer, and a 429 asks for fewer posts, not more.

        Blocks about `timeout` (10 s) at most: pacing and Slack's answers come out of one budget;
        the last post's read waits only for what is left of it (a connect that hangs can add up to
        CONNECT_TIMEOUT). Events that do not fit are RETRY, with retry_after one interval."""
        if self._session is None:
            self.open()
        deadline = self._clock() + self.timeout
        results: list = []
        for i, doc in enumerate(documents):
            now = self._clock()
            if self._not_before is not None and now < self._not_before:
                wait = self._not_before - now
                results += [Delivery(RETRY, f"Slack asked to wait {wait:.1f} s more (HTTP 429)", retry_after=wait)
                            ] * (len(documents) - i)
                break
            try:
                body = self.render_json(doc[0]) if len(doc) == 1 else self.render_incident_json(doc)
            except Exception as e:  # a malformed document: no use trying it again
                log.debug("slack: cannot render event %r: %s", _event_id(doc[0]), e, exc_info=True)
                results.append(Delivery(FAILED, f"cannot render the event for Slack: {type(e).__name__}: "
                                                f"{self._redactor.redact(printable(str(e)))[:200]}"))
                continue
            # Pacing: one post a second, counted from the previous post.
            if self._last_post is not None:
                pause = self._last_post + self.interval - self._clock()
                if pause > 0:
                    if self._clock() + pause >= deadline:
                        results += [Delivery(RETRY, "not sent in this round (one Slack message a second)",
                                             retry_after=self.interval)] * (len(documents) - i)
                        break
                    self._sleep(pause)
            remaining = deadline - self._clock()
            if remaining < 0.5:
                results += [Delivery(RETRY, "not sent in this round (one Slack message a second)",
                                     retry_after=self.interval)] * (len(documents) - i)
                break
            result = self._post(body, remaining)
            log.debug("slack: event %s (+%d): %s%s", _event_id(doc[0]), len(doc) - 1, result.outcome,
                      f" ({result.error})" if result.error else "")
            results.append(result)
            if result.outcome == RETRY:
                rest = len(documents) - i - 1
                if rest:
                    results += [Delivery(RETRY, f"not sent: {result.error}", retry_after=result.retry_after)] * rest
                break
        return results

    def _post(self, body: bytes, remaining: float) -> Delivery:
        requests = self._requests
        self._last_post = self._clock()
        try:
            response = self._session.post(self.url, data=body, allow_redirects=False, stream=True,
                                          timeout=(min(CONNECT_TIMEOUT, remaining), remaining))
        except requests.exceptions.RequestException as e:
            return Delivery(RETRY, self._transport_error(e))
        try:
            status = response.status_code
            try:
                raw = response.raw.read(REASON_BYTES, decode_content=True) or b""
            except Exception:  # the answer broke off: its status line is what counts
                raw = b""
            headers = response.headers
        finally:
            response.close()
        if 200 <= status < 300:
            return Delivery(OK)
        reason = self._reason(raw)
        text = f"Slack answered HTTP {status}" + (f": {reason}" if reason else "")
        hint = _HINTS.get(reason)
        if hint:
            text += f" ({hint})"
        if status == 429:
            wait = retry_after(headers)
            if wait is not None:
                self._not_before = self._clock() + wait
            return Delivery(RETRY, text, retry_after=wait)
        if status == 408 or status >= 500:
            return Delivery(RETRY, text)
        if 300 <= status < 400:
            return Delivery(FAILED, text + " (a redirect: the webhook URL is wrong; not followed)")
        return Delivery(FAILED, text)

    def _reason(self, raw: bytes) -> str:
        """Slack's reason: a word in plain text (or, from some front ends, JSON with "error")."""
        text = raw.decode("utf-8", "replace").strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
                if isinstance(data, dict) and isinstance(data.get("error"), str):
                    text = data["error"]
            except ValueError:
                pass
        text = text.splitlines()[0] if text else ""
        return self._redactor.redact(printable(text))[:200]

    def _transport_error(self, e) -> str:
        """What went wrong on the way, in words that hold no URL (requests' messages do)."""
        exc = self._requests.exceptions
        if isinstance(e, exc.ConnectTimeout):
            what = "timed out connecting to Slack"
        elif isinstance(e, exc.Timeout):
            what = "no answer from Slack in time"
        elif isinstance(e, exc.SSLError):
            what = "TLS error"
        elif isinstance(e, exc.ProxyError):
            what = "proxy error"
        elif isinstance(e, exc.ConnectionError):
            what = "cannot reach Slack"
        else:
            what = type(e).__name__
        cause = _innermost(e)
        detail = ""
        if isinstance(cause, socket.gaierror) or "Name or service not known" in str(cause) \
                or "Temporary failure in name resolution" in str(cause):
            detail = "cannot resolve " + (urllib.parse.urlsplit(self.url).hostname or "the host")
        elif isinstance(cause, OSError) and cause.strerror:
            detail = cause.strerror
        elif cause is not e:
            # urllib3's messages name an object, then say what happened after the last ': '.
            detail = str(cause).rsplit(": ", 1)[-1]
        detail = self._redactor.redact(printable(detail))[:200]
        return f"{what}: {detail}" if detail and detail not in what else what

    # --- the message ------------------------------------------------------------------------
    def render_json(self, doc: dict) -> bytes:
        """The webhook's request body for one event document."""
        # ensure_ascii: the body is ASCII whatever the document holds (no UTF-8 can go wrong).
        return json.dumps(self.render(doc), ensure_ascii=True, separators=(",", ":")).encode("ascii")

    def render_incident_json(self, docs: list) -> bytes:
        """The request body for several kills of one incident."""
        payload = {"text": _incident_fallback(docs), "blocks": _incident_blocks(docs),
                   "unfurl_links": False, "unfurl_media": False}
        if self.channel:
            payload["channel"] = self.channel
        return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    def render(self, doc: dict) -> dict:
        """The Slack message for one event document: blocks, and a plain `text` for notifications."""
        payload = {"text": _fallback(doc), "blocks": _blocks(doc),
                   # A link in a command line is not to be previewed in the channel.
                   "unfurl_links": False, "unfurl_media": False}
        if self.channel:
            payload["channel"] = self.channel
        return payload


# --- rendering: pure functions of the document ------------------------------------------------
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _token(c: str, code: bool) -> str:
    """How one character of hostile text is sent: control characters as \\xNN (event.printable),
    & < > as entities, and in a code block a backtick as U+02CB."""
    shown = printable(c)
    if shown != c:
        return shown
    if c in _ENTITIES:
        return _ENTITIES[c]
    if code and c == "`":
        return "\u02cb"
    return c


def _units(text: str) -> int:
    """Length as Slack may count it: UTF-16 code units (an emoji counts 2); never less than len()."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _render(text, limit: int, code: bool = False, marker: str = ELLIPSIS) -> tuple:
    """`text` made safe for Slack in at most `limit` units: (rendered, characters of text shown).

    A cut never splits an entity or an escape, and ends with `marker`. Only what is shown is
    looked at, so a 128 KiB command line costs no more than a short one."""
    text = "" if text is None else str(text)
    tokens: list = []
    used, reserve = 0, limit - _units(marker)
    for i, c in enumerate(text):
        t = _token(c, code)
        u = _units(t)
        if used + u > reserve:
            # The rest fits only if it is no longer than the marker it would make room for.
            tail, total = [], used
            for c2 in text[i:i + limit - used + 1]:
                t2 = _token(c2, code)
                total += _units(t2)
                if total > limit:
                    return "".join(tokens) + marker, i
                tail.append(t2)
            if i + len(tail) == len(text):
                return "".join(tokens + tail), len(text)
            return "".join(tokens) + marker, i
        tokens.append(t)
        used += u
    return "".join(tokens), len(text)


def _plain(text, limit: int) -> str:
    return _render(text, limit)[0]


def _code(text, limit: int) -> str:
    """Inline code: mrkdwn's *bold* _italic_ ~strike~ do not apply inside it."""
    return "`" + _render(text, limit, code=True)[0] + "`"


def _int(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _event_id(doc) -> str:
    return str(doc.get("event_id")) if isinstance(doc, dict) else "?"


def _mrkdwn(text: str) -> dict:
    # verbatim: no automatic links, channel names or mentions in what we send.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _owner(doc: dict) -> Optional[tuple]:
    if doc.get("unit"):
        return "Unit", doc["unit"]
    if doc.get("container_id"):
        runtime = doc.get("container_runtime") or "container"
        return "Container", f"{runtime} {str(doc['container_id'])[:12]}"
    return None


def _header(doc: dict) -> str:
    host = _plain(doc.get("hostname") or "?", 64)
    if doc.get("test"):
        return _plain(f"Test event from oom-journal on {doc.get('hostname') or '?'}", HEADER_MAX)
    number = _int(doc.get("pid"))
    pid = str(number)[:20] if number is not None else "?"
    # At most 10 + 40 + 6 + 20 + 5 + 64 = 145 units: within HEADER_MAX, whatever the values.
    return f"OOM kill: {_plain(doc.get('comm') or '?', 40)} (pid {pid}) on {host}"


def _fields(doc: dict) -> list:
    fields = [f"*Host*\n{_code(doc.get('hostname') or '?', 255)}"]
    owner = _owner(doc)
    if owner:
        fields.append(f"*{owner[0]}*\n{_code(owner[1], 500)}")
    if doc.get("cgroup"):
        fields.append(f"*Cgroup*\n{_code(doc['cgroup'], 500)}")
    if doc.get("oom_memcg") and doc.get("oom_memcg") != doc.get("cgroup"):
        fields.append(f"*Limit reached in*\n{_code(doc['oom_memcg'], 500)}")
    process = f"{_code(doc.get('comm') or '?', 80)} pid {_int(doc.get('pid'))}"
    # Names with underscores go in inline code, where mrkdwn's _italic_ does not apply.
    for key, label in (("uid", "uid"), ("oom_score_adj", "`oom_score_adj`")):
        if _int(doc.get(key)) is not None:
            process += f", {label} {doc[key]}"
    fields.append(f"*Process*\n{process}")
    reason = _plain(doc.get("reason") or "?", 200)
    if doc.get("constraint"):
        reason += f" ({_code(doc['constraint'], 100)})"
    fields.append(f"*Reason*\n{reason}")
    memory = [f"{name} {human_size(_int(doc.get(key)))}" for key, name in
              (("anon_rss_kb", "anon-rss"), ("file_rss_kb", "file-rss"), ("shmem_rss_kb", "shmem-rss"),
               ("total_vm_kb", "total-vm")) if _int(doc.get(key)) is not None]
    if memory:
        fields.append("*Memory*\n" + ", ".join(memory))
    usage, limit = _int(doc.get("memcg_usage_kb")), _int(doc.get("memcg_limit_kb"))
    if usage is not None or limit is not None:
        fields.append(f"*Cgroup memory*\nusage {human_size(usage)} of limit {human_size(limit)}")
    trigger = doc.get("trigger")
    if isinstance(trigger, dict) and trigger.get("comm") is not None:
        pid = _int(trigger.get("pid"))
        fields.append(f"*Allocation by*\n{_code(trigger['comm'], 80)}" + (f" pid {pid}" if pid is not None else ""))
    return [_mrkdwn(f) for f in fields[:10]]


def _command_line(doc: dict) -> str:
    label = "*Command line*"
    argv = doc.get("argv")
    if isinstance(argv, list) and argv:
        # shlex.join: the arguments' boundaries show ("an argument with spaces" stays one).
        shown = shlex.join(str(a) for a in argv)
        label += f" ({len(argv)} argument{'s' if len(argv) != 1 else ''})"
    elif doc.get("cmdline"):
        shown = str(doc["cmdline"])
    else:
        source = _plain(doc.get("cmdline_source") or "not-found", 50)
        return f"{label}\n_unknown_ ({source}: the process was gone before its command line could be read)"
    event_id = _plain(_event_id(doc), 200)
    # The note with the most digits it can have, so the code block's room is known beforehand.
    def note(count: int) -> str:
        return (f"\n_shortened for display: {count:,} of {len(shown):,} characters shown; the whole "
                f"command line is in the journal:_ `journalctl OOM_EVENT_ID={event_id}`")
    room = SECTION_MAX - _units(label) - len("\n``````") - _units(note(len(shown)))
    code, count = _render(shown, room, code=True)
    text = f"{label}\n```{code}```"
    return text + note(count) if count < len(shown) else text


def _context(doc: dict) -> list:
    when = doc.get("time")
    try:
        when = datetime.fromisoformat(str(when)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        when = str(when)
    elements = [f"event {_code(_event_id(doc), 200)}", _plain(when, 100)]
    if doc.get("kernel"):
        elements.append(f"kernel {_code(doc['kernel'], 200)}")
    if doc.get("cmdline_source"):
        elements.append(f"command line from {_plain(doc['cmdline_source'], 50)}")
    incident = doc.get("incident_id")
    if isinstance(incident, str) and incident:
        # Kills that follow in the same place join this incident: the command lists them all.
        what = "incident" if incident == doc.get("event_id") else "more kills of incident"
        elements.append(f"{what} {_code(incident, 200)}: `journalctl OOM_INCIDENT_ID={_plain(incident, 200)}`")
    return [_mrkdwn(e) for e in elements]


# --- an incident: several kills in one message -------------------------------------------------
NAMED_MAX = 20  # victims named in one message: 20 sections + 4 blocks, within Slack's 50 blocks
VICTIM_CMDLINE_CHARS = 300  # of each victim's command line, for display; the journal has it all


def _victim(doc: dict) -> str:
    pid = _int(doc.get("pid"))
    line = f"{_code(doc.get('comm') or '?', 40)} pid {pid if pid is not None else '?'}"
    rss = _int(doc.get("anon_rss_kb"))
    if rss is not None:
        line += f", anon-rss {human_size(rss)}"
    argv = doc.get("argv")
    shown = shlex.join(str(a) for a in argv) if isinstance(argv, list) and argv else doc.get("cmdline")
    if shown:
        line += ": " + _code(shown, VICTIM_CMDLINE_CHARS)
    else:
        line += ": command line unknown"
    return line


def _incident_blocks(docs: list) -> list:
    first = docs[0]
    incident = _plain(str(first.get("incident_id") or _event_id(first)), 200)
    opens = any(d.get("event_id") == first.get("incident_id") for d in docs)
    host = _plain(first.get("hostname") or "?", 64)
    owner = _owner(first)
    where = _plain(owner[1], 50) if owner else _plain(first.get("oom_memcg") or first.get("cgroup") or "?", 50)
    n = len(docs)
    # At most 11 + 3 + 14 + 50 + 4 + 64 = 146 units (n <= max_batch): within HEADER_MAX.
    header = (f"OOM kills: {n} processes of {where} on {host}" if opens
              else f"{n} more OOM kills of {where} on {host}")
    fields = [f"*Host*\n{_code(first.get('hostname') or '?', 255)}"]
    if owner:
        fields.append(f"*{owner[0]}*\n{_code(owner[1], 500)}")
    if first.get("oom_memcg"):
        fields.append(f"*Limit reached in*\n{_code(first['oom_memcg'], 500)}")
    fields.append(f"*Reason*\n{_plain(first.get('reason') or '?', 200)}")
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": header, "emoji": False}},
              {"type": "section", "fields": [_mrkdwn(f) for f in fields]}]
    blocks += [{"type": "section", "text": _mrkdwn(_victim(d))} for d in docs[:NAMED_MAX]]
    command = f"`journalctl OOM_INCIDENT_ID={incident}`"
    if n > NAMED_MAX:
        blocks.append({"type": "section", "text": _mrkdwn(f"_and {n - NAMED_MAX} more:_ {command}")})
    elements = [f"incident {_code(incident, 200)}" + ("" if opens else " (continued)"),
                f"every kill of it, command lines whole: {command}"]
    blocks.append({"type": "context", "elements": [_mrkdwn(e) for e in elements]})
    return blocks


def _incident_fallback(docs: list) -> str:
    first = docs[0]
    owner = _owner(first)
    victims = ", ".join(f"{d.get('comm') or '?'} ({d.get('pid')})" for d in docs[:NAMED_MAX])
    more = f" and {len(docs) - NAMED_MAX} more" if len(docs) > NAMED_MAX else ""
    return _plain(f"[{first.get('hostname') or '?'}] {len(docs)} OOM kills"
                  f"{' of ' + owner[1] if owner else ''}: {victims}{more}", FALLBACK_MAX)


def is_completion(doc) -> bool:
    """The kernel's late report of a kill already announced (enrich/witness.py): same event id."""
    return isinstance(doc, dict) and bool(doc.get("completes")) and doc.get("completes") == doc.get("event_id")


def _completion_blocks(doc: dict) -> list:
    """Short, and not headed as a kill: the kill was announced when it was recorded; this says what
    the kernel's report, which came later, adds to it."""
    number = _int(doc.get("pid"))
    # At most 20 + 32 + 6 + 20 + 5 + 64 = 147 units: within HEADER_MAX.
    header = (f"Late kernel report: {_plain(doc.get('comm') or '?', 32)} "
              f"(pid {str(number)[:20] if number is not None else '?'}) on {_plain(doc.get('hostname') or '?', 64)}")
    return [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": False}},
        {"type": "section", "text": _mrkdwn(_plain(doc.get("message") or "", SECTION_MAX))},
        {"type": "context", "elements": _context(doc)},
    ]


def _blocks(doc: dict) -> list:
    if is_completion(doc):
        return _completion_blocks(doc)
    return [
        {"type": "header", "text": {"type": "plain_text", "text": _header(doc), "emoji": False}},
        {"type": "section", "fields": _fields(doc)},
        {"type": "section", "text": _mrkdwn(_command_line(doc))},
        {"type": "context", "elements": _context(doc)},
    ]


def _fallback(doc: dict) -> str:
    """The notification: the journal's one-line MESSAGE, with the host in front."""
    message = doc.get("message") or f"OOM kill of {doc.get('comm')} (pid {doc.get('pid')})"
    return _plain(f"[{doc.get('hostname') or '?'}] {message}", FALLBACK_MAX)


# --- HTTP details ---------------------------------------------------------------------------
def _innermost(e: BaseException) -> BaseException:
    """The root cause: requests wraps urllib3's MaxRetryError, which holds the socket's error."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = getattr(e, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = e.args[0] if e.args and isinstance(e.args[0], BaseException) else None
        if nxt is None:
            nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


def _proxy_for(scheme: str, host: str) -> Optional[str]:
    """The proxy requests would use for this URL (the *_proxy environment variables)."""
    proxies = urllib.request.getproxies()
    if not proxies or urllib.request.proxy_bypass(host):
        return None
    return proxies.get(scheme) or proxies.get("all")


class _Redactor(logging.Filter):
    """Takes the webhook's secret out of text and out of log records.

    urllib3 logs every request line at DEBUG ('"POST /services/T../B../secret HTTP/1.1" 200 2'),
    and the URL in warnings and retries; a filter on its loggers rewrites those records before
    any handler sees them."""

    def __init__(self, url: str):
        super().__init__()
        # The URL, its path and query, its token: in every form (redact.py).
        self.redact = Scrubber(shown=secret_url_forms(url))
        self._loggers: list = []

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def attach(self) -> None:
        """On every logger of urllib3 and requests (a filter on a logger sees only that logger's
        own records, not its children's, so each one gets it)."""
        if self._loggers:
            return
        names = ["urllib3", "requests"] + [name for name in list(logging.root.manager.loggerDict)
                                           if name.startswith(("urllib3.", "requests."))]
        for name in dict.fromkeys(names):
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._loggers.append(logger)

    def detach(self) -> None:
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers = []
