"""Stage 4, enrich: what a kill line does not say. lookup.py decides which command line belongs
to a kill (from the process cache: procs/), cgroup.py what the cgroup path means (unit, slice,
container, pod), host.py the machine, event.py the event and its two renderings (journal fields,
the JSON document)."""
