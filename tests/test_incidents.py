"""Incidents (enrich/incident.py): which kills share an id, from real parsed kernel lines and from
journal entries read back after a restart."""
from __future__ import annotations

from pathlib import Path

from oom_journal.enrich.event import OomEvent
from oom_journal.enrich.incident import IncidentTracker, incident_place
from oom_journal.model import HostInfo, KernelLine
from oom_journal.parse.oom_report import OomParser

HOST = HostInfo("h", "b" * 32, "6.1")
FIXTURES = Path(__file__).parent / "fixtures" / "kernel"
S = 1_000_000


def events_of(fixture: str) -> list:
    parser, kills = OomParser(), []
    for i, text in enumerate((FIXTURES / fixture).read_text().splitlines()):
        kills += parser.feed(KernelLine(message=text, timestamp_us=1000 + i, position=i))
    return [OomEvent.build(k, HOST, None, event_time=0) for k in kills]


def test_every_member_of_a_memory_oom_group_kill_has_the_first_victims_incident():
    events = events_of("v6.x-memcg-oom-group-kubepods-systemd.txt")
    tracker = IncidentTracker()
    ids = [tracker.assign_event(e) for e in events]
    assert len(events) >= 5
    assert set(ids) == {events[0].event_id}
    # Each kill keeps its own event and journal entry, carrying the incident.
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.journal_fields()["OOM_INCIDENT_ID"] == events[0].event_id for e in events)
    assert all(e.document()["incident_id"] == events[0].event_id for e in events)
    assert events[1].document()["oom_group"].endswith(".scope")


def test_kills_in_one_place_within_the_gap_share_an_incident_and_a_pause_starts_a_new_one():
    t = IncidentTracker(gap_us=10 * S, max_us=60 * S)
    a = "/system.slice/a.service"
    assert t.assign("e1", 0, a) == "e1"
    assert t.assign("e2", 9 * S, a) == "e1"
    assert t.assign("x1", 9 * S, "/system.slice/b.service") == "x1"  # another place
    assert t.assign("e3", 18 * S, a) == "e1"  # 9 s after the previous one
    assert t.assign("e4", 29 * S, a) == "e4"  # 11 s: a new incident
    for i in range(1, 20):  # kills every 5 s: closed after max_us all the same
        last = t.assign(f"f{i}", 29 * S + i * 5 * S, a)
    assert last != "e4"


def test_place_is_the_limited_cgroup_for_a_memcg_oom_and_the_victims_own_for_a_global_one():
    assert incident_place("/a/b/c", "/a", False) == "/a"
    assert incident_place("/a/b/c", "/", True) == "/a/b/c"
    assert incident_place("/a/b/c", None, None) == "/a/b/c"
    assert incident_place("/a/g/x", "/a", False, oom_group="/a/g") == "/a"
    assert incident_place("/g/x", "/", True, oom_group="/g") == "/g"


def test_a_global_oom_group_kill_joins_its_first_victim_from_the_cgroup_inside_the_group():
    t = IncidentTracker()
    first = t.assign("v", 0, incident_place("/g/inner", "/", True), "/g/inner")
    assert t.assign("m", 10, incident_place("/g", "/", True, "/g"), "/g", oom_group="/g") == first == "v"
    assert t.assign("n", 20, incident_place("/g", "/", True, "/g"), "/g", oom_group="/g") == "v"


def test_a_restart_mid_incident_keeps_its_id_from_what_the_journal_holds():
    t = IncidentTracker()
    t.prime_all([("first", 5 * S, "/u"), ("first", 3 * S, "/u"), ("older", 1 * S, "/v")])
    assert t.assign("next", 8 * S, "/u") == "first"
    # A kill re-read from before the primed ones (the restart resumed earlier) joins it too.
    assert t.assign("again", 4 * S, "/u") == "first"
    assert t.assign("late", 20 * S, "/v") == "late"


def test_places_tracked_are_bounded():
    t = IncidentTracker(max_open=3)
    for i in range(10):
        t.assign(f"e{i}", i, f"/p{i}")
    assert len(t._open) == 3
