"""Stage 6, store: what survives a restart, in one SQLite database: the read position and the
kills already recorded (state.py), and the events waiting for each sink (outbox.py), written in
the same transaction."""
