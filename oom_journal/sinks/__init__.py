"""Sinks: where events go after the journal (Syslog, Elasticsearch, Kafka, Slack)."""
