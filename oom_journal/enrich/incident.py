"""Incidents: OOM kills that belong together, under one stable id.

A worker pool, a fork bomb or a memory.oom.group kill is one event for a person and twenty for the
kernel. Kills belong to one incident when they are
  - members of one memory.oom.group kill (the parser names the group's cgroup: KernelKill.oom_group;
    the group's first victim, whose kill line comes before "Tasks in <cg> are going to be killed",
    joins through its own cgroup, which lies inside <cg>), or
  - kills in the same place within INCIDENT_GAP_US of the previous one (kernel time), where the
    place is the cgroup whose limit was hit (a memcg OOM: every victim of one limit), else the
    victim's own cgroup (a global OOM: its unit or container).
An incident is closed after INCIDENT_MAX_US from its first kill, so that a unit that is OOM-killed
all day is not one incident: a person is told again.

The id is the first kill's event id (boot id + kernel timestamp and pid of its kill line): it is derived,
not drawn, so a restart that re-reads the kernel log from before the incident's first kill finds
the same id again. A restart that resumes after the first kill (its report was complete and the
position saved) learns the open incidents from the journal (prime(): the daemon reads this boot's
entries of ours, OOM_INCIDENT_ID with the kill's cgroup facts) before it reads on.
Each kill keeps its own event, journal entry and sink record; incident_id only ties them.
"""
from __future__ import annotations

from oom_journal.records import dataclass
from typing import Optional

# The kernel kills one task per OOM invocation; a pool of workers that keeps allocating is killed
# one after the other, a few hundred ms apart (20 victims in ~5 s measured on this machine's test,
# tests/test_incidents_e2e.py). 10 s without a kill in the same place ends the incident.
INCIDENT_GAP_US = 10_000_000
INCIDENT_MAX_US = 600_000_000  # 10 minutes: then a new incident (and a new Slack message) begins
MAX_OPEN = 256  # places tracked at once; the one idle longest is forgotten first


def incident_place(cgroup: Optional[str], oom_memcg: Optional[str], global_oom: Optional[bool],
                   oom_group: Optional[str] = None) -> str:
    """Where a kill happened, for grouping: see the module docstring. Plain arguments, so that
    the same function reads an event and a journal entry."""
    if oom_memcg and oom_memcg != "/" and not global_oom:
        # The group the kernel kills lies inside the limited cgroup (mem_cgroup_get_oom_group()
        # walks up from the victim no further than the OOM domain), so this covers it too.
        return oom_memcg
    return oom_group or cgroup or oom_memcg or "?"


@dataclass
class _Open:
    incident_id: str
    place: str
    first_us: int
    last_us: int


def _inside(path: str, ancestor: str) -> bool:
    return path == ancestor or (ancestor != "/" and path.startswith(ancestor.rstrip("/") + "/"))


class IncidentTracker:
    """Gives each kill, in kernel-log order, the id of the incident it belongs to."""

    def __init__(self, gap_us: int = INCIDENT_GAP_US, max_us: int = INCIDENT_MAX_US, max_open: int = MAX_OPEN):
        self.gap_us, self.max_us, self.max_open = gap_us, max_us, max_open
        self._open: dict = {}  # place -> _Open

    def assign(self, event_id: str, timestamp_us: int, place: str, cgroup: Optional[str] = None,
               oom_group: Optional[str] = None) -> str:
        """The incident id of this kill (its own event id if it starts one)."""
        found = self._open.get(place)
        if found is None and oom_group:
            # The group's first victim opened an incident at its own cgroup, inside the group's.
            for key, inc in list(self._open.items()):
                if _inside(key, oom_group) and self._fits(inc, timestamp_us):
                    found = self._open.pop(key)
                    found.place = place
                    self._open[place] = found
                    break
        if found is not None and self._fits(found, timestamp_us):
            found.last_us = max(found.last_us, timestamp_us)
            return found.incident_id
        self._open[place] = _Open(event_id, place, timestamp_us, timestamp_us)
        self._forget_idle()
        return event_id

    def assign_event(self, event) -> str:
        """Sets and returns event.incident_id (an enrich.event.OomEvent)."""
        k = event.kill
        place = incident_place(event.cgroup.path, k.oom_memcg, k.global_oom, k.oom_group)
        event.incident_id = self.assign(event.event_id, k.timestamp_us, place, event.cgroup.path, k.oom_group)
        return event.incident_id

    def prime_all(self, recent) -> None:
        """prime() each (incident id, kernel timestamp µs, place) read back from the journal."""
        for incident_id, timestamp_us, place in recent:
            self.prime(incident_id, timestamp_us, place)

    def prime(self, incident_id: str, timestamp_us: int, place: str) -> None:
        """A kill recorded before this start (read back from the journal), in any order."""
        inc = self._open.get(place)
        if inc is None or inc.incident_id != incident_id:
            if inc is not None and inc.last_us > timestamp_us:
                return  # a later incident in that place is known already
            self._open[place] = inc = _Open(incident_id, place, timestamp_us, timestamp_us)
        inc.first_us = min(inc.first_us, timestamp_us)
        inc.last_us = max(inc.last_us, timestamp_us)
        self._forget_idle()

    def _fits(self, inc: _Open, timestamp_us: int) -> bool:
        # abs(): a restart re-reads kills from before the ones the journal primed it with.
        near = timestamp_us - inc.last_us <= self.gap_us and inc.first_us - timestamp_us <= self.gap_us
        return near and timestamp_us - inc.first_us <= self.max_us

    def _forget_idle(self) -> None:
        while len(self._open) > self.max_open:
            oldest = min(self._open, key=lambda k: self._open[k].last_us)
            del self._open[oldest]
