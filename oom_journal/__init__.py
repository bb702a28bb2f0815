"""oom-journal: records every kernel OOM kill, with the victim's full command line, in the journal."""

__version__ = "0.1.0"
