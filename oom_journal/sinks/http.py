"""What the HTTP sinks (Elasticsearch, Slack) read alike in an answer: the Retry-After header."""
from __future__ import annotations

import email.utils
from datetime import datetime, timezone
from typing import Optional

MAX_RETRY_AFTER = 3600.0  # seconds; a Retry-After beyond an hour is a broken header, not advice: taken as this


def retry_after(headers) -> Optional[float]:
    """Seconds the server asked to wait, from an answer's headers (requests', elastic_transport's,
    or a dict; the name in either case), if there is a Retry-After: delta-seconds, or an HTTP
    date (RFC 9110 10.2.3; Slack sends seconds)."""
    value = None
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except AttributeError:
        pass
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC (RFC 5322 3.3), which parsedate_to_datetime leaves naive
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
