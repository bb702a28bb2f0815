"""The one rule for what is a secret, and how a secret is shown: never.

Every place that prints a configured value (check-config, an error, a log line, STATUS=, a
sink's describe()) asks this module. Secrets are the options listed here, the librdkafka
settings whose keys look like credentials, and the user-information part of any URL.
A leaf module: it imports nothing of oom-journal's.
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Iterable

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
    the last guard for messages built from other people's words (a library's exception)."""
    forms = set()
    for secret in secrets:
        if secret and len(secret) >= 3:  # shorter ones would mask ordinary words
            forms |= {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
