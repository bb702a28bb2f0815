"""The one rule for what is a secret, and how a secret is shown: never.

Every place that prints a configured value (check-config, an error, a log line, STATUS=, a
sink's describe()) asks this module. Secrets are the options listed here, the librdkafka
settings whose keys look like credentials, and the user-information part of any URL.
Text that others wrote (a library's exception, a server's reason, a log record) is scrubbed of
every form a configured secret can take there (Scrubber): as given, URL-encoded, base64 in an
Authorization header, a secret URL's path, query and token.
A leaf module: it imports nothing of oom-journal's.
"""
from __future__ import annotations

import base64
import re
import urllib.parse
from typing import Iterable, Mapping, Optional

# Options (config attribute names) whose whole value is a secret.
SECRET_OPTIONS = ("slack_webhook", "elasticsearch_password", "elasticsearch_api_key")
# Options whose value may hold a secret in part: a URL's user:password@, a librdkafka password.
PARTLY_SECRET_OPTIONS = ("elasticsearch_server", "kafka_option")
MASK = "****"

# librdkafka keys whose values are never shown: passwords, secrets, private keys, OAuth
# configuration (CONFIGURATION.md: ssl.key.password, sasl.password, sasl.oauthbearer.config,
# ssl.keystore.password, sasl.oauthbearer.client.secret, ssl.key.pem, ...).
_SECRET_KAFKA_KEY = re.compile(r"password|passphrase|secret|private|key\.pem|oauthbearer\.config|token", re.I)
# scheme://userinfo@ : the userinfo is masked without parsing the URL (a malformed URL, e.g.
# "http://u:pw@[es:9200", makes urllib.parse raise, and must still be shown masked).
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<user>[^/@?#]*?)(?::[^/@?#]*)?@")
# scheme://user:password@ anywhere in a text: masked whole, the user too (scrub_userinfo).
_USERINFO_IN_TEXT = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/\s@]*@")


def is_secret_option(dest: str) -> bool:
    """dest: a config attribute (slack_webhook) or an option (--slack-webhook)."""
    return dest.lstrip("-").replace("-", "_") in SECRET_OPTIONS


def holds_secret(dest: str) -> bool:
    """The value may hold a secret, wholly or in part: errors must not quote it."""
    name = dest.lstrip("-").replace("-", "_")
    return name in SECRET_OPTIONS or name in PARTLY_SECRET_OPTIONS


def is_secret_kafka_key(key: str) -> bool:
    return bool(_SECRET_KAFKA_KEY.search(key))


def mask(secret: str) -> str:
    """Shows the kind of secret, never the secret: https://hooks.slack.com/****."""
    try:
        parsed = urllib.parse.urlsplit(secret)
        if parsed.scheme and parsed.hostname:
            return f"{parsed.scheme}://{parsed.hostname}/{MASK}"
    except ValueError:  # not a URL that parses: nothing of it is shown
        pass
    return MASK


def mask_userinfo(url: str) -> str:
    """http://user:secret@host:9200 -> http://user:****@host:9200, whether the URL parses or not."""
    m = _USERINFO.match(url)
    if not m:
        return url
    return f"{m.group('scheme') or ''}{m.group('user')}:{MASK}@" + url[m.end():]


def mask_kafka_option(option: str) -> str:
    """KEY=VALUE, the value masked when the key is a secret's."""
    key, sep, _value = option.partition("=")
    if sep and is_secret_kafka_key(key.strip()):
        return f"{key}={MASK}"
    return option


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Text with every occurrence of each secret (as given, and URL-encoded) replaced by ****:
    the last guard for messages built from other people's words (a library's exception).
    For guesses at a secret's parts (config.py): one shorter than 3 characters is left alone, as
    it would mask ordinary words; a Scrubber of configured secrets masks each one, whatever its length."""
    return Scrubber(secret for secret in secrets if secret and len(secret) >= 3)(text)


def scrub_userinfo(text: str) -> str:
    """Every scheme://user:password@ in a text we did not write, masked whole: scheme://****@."""
    return _USERINFO_IN_TEXT.sub(r"\1" + MASK + "@", text)


def credential_forms(user: Optional[str], password: Optional[str], api_key: Optional[str]) -> list:
    """HTTP credentials' secrets, and the forms the Authorization header gives them: the password
    and the API key as given, base64 of user:password (Basic), and base64 of an API key given as
    ID:KEY (Elasticsearch's encoded form)."""
    forms = [secret for secret in (password, api_key) if secret]
    if user is not None and password:
        forms.append(base64.b64encode(f"{user}:{password}".encode()).decode())
    if api_key and ":" in api_key:
        forms.append(base64.b64encode(api_key.encode()).decode())
    return forms


def secret_url_forms(url: str) -> dict:
    """A URL that is a secret whole (a Slack webhook) and the parts of it that are, each with how
    it is shown: the URL as mask() shows it, its path and query as /**** and ****, and a token on
    its own (the last part of /services/T../B../TOKEN, or any part of 16 characters or more) as ****."""
    parts = urllib.parse.urlsplit(url)
    path_query = parts.path + ("?" + parts.query if parts.query else "")
    forms = {url: mask(url), url.rstrip("/"): mask(url)}
    for value in (path_query, parts.path, parts.query):
        if len(value) > 1:
            forms[value] = "/" + MASK if value.startswith("/") else MASK
    segments = [s for s in parts.path.split("/") if s]
    for i, segment in enumerate(segments):
        if len(segment) >= 16 or (i == len(segments) - 1 and len(segment) >= 6):
            forms[segment] = MASK
    return forms


class Scrubber:
    """Takes configured secrets out of text: each secret, as given and URL-encoded, is shown as
    ****, or as `shown` says (form -> how it is shown). Longest first, so that a secret holding
    another is replaced whole. The forms are found once: for text seen often (every log record
    of a library)."""

    def __init__(self, secrets: Iterable[str] = (), shown: Optional[Mapping[str, str]] = None):
        forms = dict(shown or {})
        for secret in secrets:
            forms.setdefault(secret, MASK)
        for form, replacement in list(forms.items()):
            for variant in (urllib.parse.quote(form, safe=""), urllib.parse.quote(form)):
                forms.setdefault(variant, replacement)
        self._forms = sorted(((f, r) for f, r in forms.items() if f), key=lambda item: -len(item[0]))

    def __call__(self, text: str) -> str:
        for form, replacement in self._forms:
            if form in text:
                text = text.replace(form, replacement)
        return text
