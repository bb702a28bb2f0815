"""Prometheus metrics: what the daemon recorded and how its sinks deliver, for alerts.

Off unless --metrics-listen (an HTTP /metrics endpoint) or --metrics-textfile (node_exporter's
textfile collector) is set; prometheus_client (python3-prometheus-client) is imported only then.
The values are read from the daemon at each scrape or write (a custom collector), so nothing is
counted twice and a reload, which replaces the sinks' workers, loses no count.

Label sets are bounded: kills are counted by unit (or container), killer and cmdline_source,
never by pid or command line. A unit name is chosen by whoever starts the unit, so at most
MAX_UNITS distinct ones get their own label; the kills of every further one count under
unit="other" (a unit's name always has a dot and a type, so no unit is called "other"). Every label
value is hostile text: prometheus_client escapes \\, " and newline in the text format
(exposition.py), and bytes that are not UTF-8 (surrogate escapes in a cgroup name) are shown as
\\xNN here, since the exposition is UTF-8 (tests/test_metrics.py sends such a unit through both outputs
and parses them back with prometheus_client's own parser).

Counters start at 0 when the daemon starts (Prometheus' rate() and increase() handle the reset);
the journal keeps the history.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from oom_journal import __version__
from oom_journal.app.config import ConfigError, split_listen
from oom_journal.parse.oom_report import REASON_MEMCG
from oom_journal.model import KILLER_KERNEL

log = logging.getLogger(__name__)

MAX_UNITS = 200  # distinct unit labels; the rest count as "other" (bounded series per host)
OTHER = "other"
TEXTFILE_EVERY = 5.0  # seconds: the backlog gauges move without kills; node_exporter reads on scrape


def killer_of(reason: str) -> str:
    """Which OOM killer acted: a cgroup's limit (memcg), or the whole machine's (global)."""
    if reason == REASON_MEMCG:
        return "memcg"
    if "oom_kill_allocating_task" in reason:
        return "allocating-task"
    return "global"


def owner_label(event) -> str:
    cg = event.cgroup
    if cg.unit:
        return cg.unit
    if cg.container_id:
        return f"container:{cg.container_id[:12]}"
    return "none"


def _clean(text: str) -> str:
    # The exposition is UTF-8: a byte that was not UTF-8 (kept as a surrogate escape) is shown
    # as \xNN, as the journal's MESSAGE shows it.
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Metrics:
    """Counts kills (kill()), and exposes them with the daemon's sink and source figures."""

    def __init__(self, daemon, *, listen: Optional[str] = None, textfile: Optional[str] = None,
                 max_units: int = MAX_UNITS):
        try:
            import prometheus_client  # noqa: F401 - only to fail early with a clear message
        except ImportError:
            option = "--metrics-listen" if listen else "--metrics-textfile"
            raise ConfigError(option, "needs the Python module prometheus_client: "
                                      "apt install python3-prometheus-client") from None
        from prometheus_client import CollectorRegistry

        self.daemon = daemon
        self.listen, self.textfile = listen, textfile
        self.max_units = max_units
        self.kills: dict = {}  # (unit, killer, cmdline_source) -> count
        self.units: set = set()
        self.last_kill: Optional[float] = None
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)  # type: ignore[arg-type]  # a collector by its collect(), not by class
        self._server = None
        self._written_at = 0.0

    # --- feeding ---------------------------------------------------------------------------
    def kill(self, event) -> None:
        unit = _clean(owner_label(event))
        with self._lock:
            if unit not in self.units:
                if len(self.units) >= self.max_units:
                    unit = OTHER
                else:
                    self.units.add(unit)
            killer = event.kill.killer if event.kill.killer != KILLER_KERNEL else killer_of(event.kill.reason)
            key = (unit, killer, event.cmdline_source)
            self.kills[key] = self.kills.get(key, 0) + 1
            self.last_kill = event.time
        self.write_textfile()

    # --- the collector (prometheus_client calls collect() at each scrape) -------------------
    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        yield InfoMetricFamily("oom_journal_build", "The oom-journal version running.", value={"version": __version__})
        kills = CounterMetricFamily("oom_journal_kills", "OOM kills recorded, by the victim's unit (or container; "
                                    f"beyond {self.max_units} units: other), the OOM killer (memcg, global, "
                                    "allocating-task) and where the command line came from.",
                                    labels=["unit", "killer", "cmdline_source"])
        with self._lock:
            counts, last = dict(self.kills), self.last_kill
        for (unit, killer, source), n in sorted(counts.items()):
            kills.add_metric([unit, killer, source], n)
        yield kills
        last_kill = GaugeMetricFamily("oom_journal_last_kill_timestamp_seconds",
                                      "Time of the last OOM kill recorded since the start (its kernel log line).")
        if last is not None:
            last_kill.add_metric([], last)
        yield last_kill
        daemon = self.daemon
        source = getattr(daemon, "source", None)
        losses = CounterMetricFamily("oom_journal_kernel_log_losses", "Reports that kernel messages were lost "
                                     "before oom-journal could read them (journald's \"Missed N kernel messages\"): "
                                     "an OOM kill among them is not recorded.", labels=["source"])
        if source is not None and hasattr(source, "missed"):
            losses.add_metric([getattr(source, "name", "journal")], int(source.missed))
        yield losses
        unlogged = CounterMetricFamily("oom_journal_kills_unlogged", "OOM kills the kernel counted "
                                       "(/proc/vmstat oom_kill) whose kill line the log source did not "
                                       "deliver: recorded from the second witness.")
        unlogged.add_metric([], int(daemon.unlogged_kills))
        yield unlogged
        families = {name: CounterMetricFamily(f"oom_journal_sink_{name}", text, labels=["sink"]) for name, text in (
            ("delivered", "Events the sink confirmed."),
            ("retried", "Deliveries the sink answered with 'later' (each event each time)."),
            ("failed", "Events the sink refused for good (set aside in the outbox)."),
            ("dropped", "Undelivered events dropped by the outbox's bounds (age, events, bytes)."))}
        backlog = GaugeMetricFamily("oom_journal_sink_backlog", "Events waiting in the outbox for the sink.",
                                    labels=["sink"])
        for name, counters in sorted(dict(getattr(daemon, "sink_counters", {})).items()):
            for key, family in families.items():
                family.add_metric([name], counters.get(key, 0))
        for worker in list(getattr(daemon, "workers", [])):
            backlog.add_metric([worker.name], worker.backlog())
        yield from families.values()
        yield backlog

    def describe(self):
        return []  # families are dynamic; registering must not call collect() before the daemon starts

    # --- outputs ---------------------------------------------------------------------------
    def start(self) -> None:
        """Binds --metrics-listen (a ConfigError naming it if it cannot) and writes the textfile once."""
        if self.listen:
            self._server = _serve(self.listen, self.registry)
            log.info("serving metrics on http://%s/metrics", self.listen)
        self.write_textfile(force=True)

    def tick(self) -> None:
        """Called by the daemon's loop now and then: the textfile follows the backlog gauges."""
        if time.monotonic() - self._written_at >= TEXTFILE_EVERY:
            self.write_textfile(force=True)

    def write_textfile(self, force: bool = True) -> None:
        if not self.textfile:
            return
        from prometheus_client import write_to_textfile

        self._written_at = time.monotonic()
        try:
            # A temporary file beside it (not *.prom: node_exporter skips it), then rename(2):
            # node_exporter never reads half a file.
            write_to_textfile(self.textfile, self.registry)
        except OSError as e:
            log.warning("cannot write the metrics file %s: %s", self.textfile, e.strerror or e)

    def stop(self) -> None:
        self.write_textfile(force=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _serve(listen: str, registry):
    """prometheus_client's WSGI app on a server of our own: start_http_server() (0.16) cannot be
    stopped, and a reload or a stop must let the port go."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    host, port = split_listen(listen)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # a scrape every 15 s is not news
            pass

    try:
        server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=QuietHandler)
    except OSError as e:
        raise ConfigError("--metrics-listen", f"cannot listen on {listen}: {e.strerror or e}") from None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
