"""A completion (issue 16: the later kill line completes the same event), piece by piece: the
second witness's unseen entries that a late kill line names, the completion's journal fields
and document, and what each sink makes of it (Elasticsearch's stand-in with both clients, the
syslog and Slack encoders). The whole path with real kills: tests/test_late_kill_line.py."""
from __future__ import annotations

import json

from test_event import HOST, Lookup, kill
from test_sink_elasticsearch import bulk_actions, client, event_doc, rest, run, standin  # noqa: F401 (fixtures)
from test_witness import BASE_NS, Clock, Exits, tree

from oom_journal.enrich.event import KERNEL_REPORT_LATE, OomEvent
from oom_journal.enrich.witness import SecondWitness
from oom_journal.model import KernelKill
from oom_journal.sinks.slack import SlackSink
from oom_journal.sinks.syslog.format import format_rfc5424
from oom_journal.sources.oom_counters import CgroupCounters


class Monotonic:
    def __init__(self, ns: int):
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def line(pid: int, ts_us: int) -> KernelKill:
    return KernelKill(reason="Memory cgroup out of memory", pid=pid, comm="x", timestamp_us=ts_us)


def test_a_late_kill_line_of_the_time_an_unseen_entry_covers_names_it_once_per_kill_it_counted(tmp_path):
    """Unit level, fixture counters: with real kills the sequence is tests/test_late_kill_line.py's
    second test; here each edge of the window is exact."""
    proc = tree(tmp_path, 10, {})
    clock, mono = Clock(), Monotonic(BASE_NS)
    w = SecondWitness(Exits([]), HOST, proc_root=str(proc), counters=CgroupCounters(str(tmp_path / "cgroup")),
                      settle=3.0, monotonic_ns=mono, clock=clock)
    read = line(5, BASE_NS // 1000 + 1000)
    w.saw_kill_line(read)  # read in time: one of the three kills the counter will count
    (proc / "vmstat").write_text("oom_kill 13\n")
    mono.ns = BASE_NS + 2_000_000_000  # the check that finds the two missing: 2 s after the base
    assert w.check() == []
    clock.t += 4
    (unseen,) = w.check()
    assert unseen.event_id == f"{HOST.boot_id}-unseen-12-13" and unseen.unseen_kills == 2
    # Lines that come later: before the base (an older kill) and after the check (a newer one) are not
    # its kills, nor is the line read in time when the journal delivers it again.
    assert w.unseen_line(line(6, BASE_NS // 1000 - 1)) is None
    assert w.unseen_line(line(7, (BASE_NS + 2_000_000_000) // 1000)) is None
    assert w.unseen_line(read) is None
    assert w.unseen_line(line(8, BASE_NS // 1000 + 5000)) == unseen.event_id
    assert w.unseen_line(line(8, BASE_NS // 1000 + 5000)) is None  # the same line again
    assert w.unseen_line(line(9, BASE_NS // 1000 + 9000)) == unseen.event_id
    assert w.unseen_line(line(10, BASE_NS // 1000 + 9500)) is None  # it counted two kills, not three


def completion() -> OomEvent:
    """What the daemon writes when the kill line of a kill recorded from its exit comes."""
    e = OomEvent.build(kill(), HOST, Lookup([b"java", b"-jar", b"app.jar"]), event_time=1795060392.123456)
    e.event_id = e.completes = f"{HOST.boot_id}-lost-2045-79930000"
    e.kernel_report, e.witness, e.completes_time = KERNEL_REPORT_LATE, "exit", 1795060392.123456
    return e


def test_the_completion_entry_carries_the_id_it_completes_and_says_so():
    e = completion()
    fields = e.journal_fields()
    assert fields["OOM_EVENT_ID"] == fields["OOM_COMPLETES"] == e.event_id
    assert fields["OOM_KERNEL_REPORT"] == "late" and fields["OOM_WITNESS"] == "exit"
    assert fields["OOM_CONSTRAINT"] == "CONSTRAINT_MEMCG" and fields["OOM_CMDLINE"] == b"java -jar app.jar"
    assert fields["MESSAGE"].startswith("the kernel's report of the OOM kill of process 1234 (java) came late: "
                                        f"it completes the event {e.event_id} recorded at 2026-11-19T03:53:12+00:00 "
                                        "from its SIGKILL exit")
    assert "CONSTRAINT_MEMCG" in fields["MESSAGE"]
    assert e.record_key == e.event_id + "+late"  # recorded (and queued) beside the first entry
    doc = e.document()
    assert doc["completes"] == doc["event_id"] and doc["kernel_report"] == "late"
    plain = OomEvent.build(kill(), HOST, Lookup([b"x"]))
    assert plain.document()["completes"] is None and "OOM_COMPLETES" not in plain.journal_fields()
    assert plain.record_key == plain.event_id


def test_elasticsearch_replaces_the_first_document_with_its_completion(client, standin):  # noqa: F811
    es = standin()
    first = event_doc()
    first["event_id"] = f"{HOST.boot_id}-lost-2045-79930000"
    first.update(kernel_report="lost", witness="exit", constraint=None)
    late = dict(first, kernel_report="late", constraint="CONSTRAINT_MEMCG", completes=first["event_id"])
    out = run(client, {"elasticsearch_server": [es.url]},
              [["deliver", [first]], ["deliver", [late]], ["deliver", [late]], ["deliver", [first]]])
    # The completion's retry writes the same again; the first's retry finds the id there (409: ok).
    assert [r["out"] for r in out["results"]] == [[["ok", "", None]]] * 4, out["results"]
    assert [next(iter(a)) for a in bulk_actions(es)] == ["create", "index", "index", "create"]
    status, got = rest(es, "GET", f"/oom-events-2026.11.19/_doc/{first['event_id']}")
    assert status == 200 and got["_source"] == late and got["_version"] == 3
    status, found = rest(es, "POST", "/oom-events-*/_search", {"query": {"term": {"pid": 1234}}})
    assert found["hits"]["total"]["value"] == 1


def test_syslog_gives_the_completion_a_msgid_of_its_own():
    first = dict(completion().document(), kernel_report="lost", completes=None)
    late = completion().document()
    records = [format_rfc5424(d, facility=3, procid=1, max_bytes=8096).decode() for d in (first, late)]
    assert records[0].split(" ")[5] == "OOM_KILL" and records[1].split(" ")[5] == "OOM_KILL_COMPLETED"
    assert f'completes="{late["event_id"]}"' in records[1]
    assert records[1].endswith(late["message"])


def test_slack_does_not_announce_the_completion_as_a_new_kill():
    sink = SlackSink.__new__(SlackSink)
    sink.channel = None
    first = dict(completion().document(), kernel_report="lost", completes=None, message="OOM kill, reason ...")
    late = completion().document()
    assert sink.render(first)["blocks"][0]["text"]["text"].startswith("OOM kill: java (pid 1234)")
    payload = sink.render(late)
    assert payload["blocks"][0]["text"]["text"].startswith("Late kernel report: java (pid 1234)")
    text = json.dumps(payload)
    assert "Command line" not in text and late["event_id"] in text and "came late" in payload["text"]
