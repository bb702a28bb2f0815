"""Delivery: the stage between the outbox and the sinks.

worker.py runs one thread per sink that takes its due outbox rows, hands them to the sink and
settles each row by the sink's verdict; backoff.py says when a row that must be retried is due
again. The sinks decide whether to retry (sinks/base.py); this stage decides how.
"""
