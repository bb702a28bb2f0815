"""What every sink is: it delivers event documents and says, per document, what happened.

"Should we retry?" is each sink's decision (its protocol knows: a 429 or 5xx is worth another
try, a 400 mapping error is not); "how to retry" (capped exponential backoff with jitter, the
outbox, bounds) is shared, in the delivery stage (delivery/backoff.py, delivery/worker.py). A
sink never raises for a failed delivery: it returns the outcome. Sink libraries are imported in
open(), never at module import, so the daemon runs without the libraries of sinks that are not
configured. Which sinks a configuration turns on: the SINKS table in sinks/__init__.py.
"""
from __future__ import annotations

from oom_journal.records import dataclass
from typing import Optional, Protocol

OK, RETRY, FAILED = "ok", "retry", "failed"


@dataclass(frozen=True)
class Delivery:
    """The outcome for one document."""

    outcome: str  # OK, RETRY (try again later) or FAILED (permanent: report and set aside)
    error: str = ""  # what went wrong, for the log and STATUS; never a secret
    retry_after: Optional[float] = None  # seconds the server asked us to wait (429 Retry-After)


class SinkUnavailable(Exception):
    """The sink cannot work here (its library is missing); the message says what to install.

    `option` names the option that configured the sink: the daemon exits 78 naming it.
    """

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(message)


class Sink(Protocol):
    """The contract between a sink and the delivery stage. A class that declares it (subclasses
    it) gets open(), probe() and close() that do nothing; describe() and deliver() are its own."""

    name: str  # syslog, elasticsearch, kafka, slack
    option: str  # the option that turns it on, e.g. "--kafka-brokers"
    max_batch: int  # most documents per deliver() call

    def open(self) -> None:
        """Imports the library (raising SinkUnavailable) and prepares; does not need the server up."""

    def describe(self) -> str:
        """Where it delivers, secrets masked: 'kafka topic oom at 127.0.0.1:9092'."""
        ...

    def probe(self) -> Optional[str]:
        """A cheap check, sending no event, that the server answers: None if it does, else why
        not (logged at start; a sink that is down at start is not an error: the outbox waits)."""

    def deliver(self, documents: list) -> list[Delivery]:
        """Delivers event documents (dicts, see enrich.event.OomEvent.document); returns one
        Delivery per document, in order. Blocks at most about `timeout` seconds; never raises for
        a network or server failure."""
        ...

    def close(self) -> None:
        """Lets go of connections and threads; what was not delivered stays in the outbox."""
