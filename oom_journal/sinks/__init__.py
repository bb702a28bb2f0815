"""Sinks: where events go after the journal (Syslog, Elasticsearch, Kafka, Slack).

Only the modules of configured sinks are imported, and each imports its library only in
Sink.open(), so the daemon runs without the libraries of sinks that are not configured.
"""
from __future__ import annotations

import importlib

# (the option that turns the sink on, as a config attribute; module; class), in delivery order.
SINKS = (
    ("syslog_server", "syslog", "SyslogSink"),
    ("elasticsearch_server", "elasticsearch", "ElasticsearchSink"),
    ("kafka_brokers", "kafka", "KafkaSink"),
    ("slack_webhook", "slack", "SlackSink"),
)


def configured_sinks(cfg) -> list:
    """The sinks the configuration turns on (not yet opened)."""
    sinks = []
    for attribute, module, name in SINKS:
        if getattr(cfg, attribute, None):
            cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
            sinks.append(cls(cfg))
    return sinks


def sink_settings(cfg) -> dict:
    """The options that shape the sinks: a reload rebuilds them only if these changed."""
    return {k: v for k, v in sorted(vars(cfg).items())
            if k.split("_")[0] in ("syslog", "elasticsearch", "kafka", "slack", "outbox")}
