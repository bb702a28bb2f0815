"""Stage 3, processes: what the kernel will not tell at kill time.

The kill line names the victim by pid and 15-byte comm only, and by then its /proc/PID is gone.
connector.py subscribes to the kernel's process events (exec, fork, comm, exit); cache.py keeps
every process's command line and memory cgroup from those events and from scans of /proc, read
by procfs.py (which also puts start times on the kernel log's clock); pidns.py matches a victim
by name and cgroup when the daemon runs in a pid namespace of its own. Which entry belongs to a
kill is the enrichment stage's decision (enrich/lookup.py).
"""
