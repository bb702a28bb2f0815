"""How to retry, for every sink: capped exponential backoff with jitter, and the server's word.

"Should we retry?" is each sink's decision (its protocol knows; sinks/base.py); when the next try
comes is decided here, once, for all of them.
"""
from __future__ import annotations

import random
from typing import Optional

BACKOFF_BASE = 1.0  # seconds before the first retry
BACKOFF_CAP = 60.0  # a sink that is down is tried at least once a minute


def backoff(attempts: int, retry_after: Optional[float] = None, rand=random.random) -> float:
    """Seconds until the next try after `attempts` failed ones (1, 2, ...).

    "Equal jitter": half the capped exponential delay, plus a random part up to the other half,
    so that many hosts whose sink failed at once do not retry in step. A server's Retry-After
    is honoured as a minimum.
    """
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))
    delay = delay / 2 + rand() * delay / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
