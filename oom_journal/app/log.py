"""The daemon's log on stderr (the journal, when systemd runs it): one line per record."""
from __future__ import annotations

import logging
import os
import sys
import traceback

from oom_journal.text import printable


def setup_logging(level: str, environ=os.environ) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM"):
        # stderr goes to the journal: "<N>" prefixes set each line's priority (sd-daemon(3)),
        # and journald adds the time itself.
        handler.setFormatter(OneLineFormatter("%(message)s", priority_prefix=True))
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class OneLineFormatter(logging.Formatter):
    """The log's encoder: ONE line per record. journald's stream transport makes every line of
    stderr an entry of its own and reads a "<N>" at a line's start as its priority, so a process
    name such as "x\n<0>sshd[1]: Accepted ..." in a message would otherwise forge an entry at
    priority emerg; on a terminal, ESC sequences would steer it. The message (with whatever it
    quotes) is escaped by text.printable(); a traceback keeps its lines, each escaped and, for
    the journal, each with the record's priority."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, fmt, priority_prefix: bool = False):
        super().__init__(fmt)
        self.priority_prefix = priority_prefix

    def formatMessage(self, record):  # noqa: N802 (logging's naming)
        return printable(super().formatMessage(record))

    def formatException(self, ei):  # noqa: N802
        # A frame is two lines (where, and its source); an exception's own text (which may quote
        # anything) is escaped into one line, whatever newlines it holds.
        lines = []
        for chunk in traceback.TracebackException(*ei).format(chain=True):
            if chunk.startswith("  File"):
                lines += [printable(line) for line in chunk.splitlines()]
            elif chunk.strip("\n"):
                lines.append(printable(chunk.strip("\n")))
        return "\n".join(lines)

    def formatStack(self, stack_info):  # noqa: N802
        return "\n".join(printable(line) for line in super().formatStack(stack_info).splitlines())

    def format(self, record):
        text = super().format(record)
        if not self.priority_prefix:
            return text
        prefix = f"<{self.PRIORITIES.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.split("\n"))
