"""Stage 9, history: oom-journal list/show: past kills from the journal.

What `coredumpctl list/info` is for crashes. It reads back what the daemon wrote (our entries,
root's only) and what the kernel printed (its kill lines, for the kills oom-journal did not
record), each kill once: timespec.py (the --since/--until/-b arguments), entries.py (an entry
back into an event), journal.py (which journal, whether this user may read it, its boots),
query.py (the kills and their kernel reports), render.py (the terminal), commands.py (the CLIs).
"""
