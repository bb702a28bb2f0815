"""Issue 16, "never twice": the later kill line completes the event a second witness recorded.

The real daemon, real journald, real kills in memory cgroups of the test's own. The daemon reads the
journal without the /dev/kmsg doorbell (`--kmsg-path` names a file that does not exist, as for a
daemon that may not read /dev/kmsg), so while journald is stopped (SIGSTOP, a few seconds, always
continued in a finally: test_lost_kills.journald_stopped) no path gives it the kill line: the
second witness (the kernel's counters, and the victim's SIGKILL exit) records the kill. When
journald runs again it reads the kill line from the kernel's buffer (no overrun: the line is still
there) and the journal delivers it to the daemon, late.
"""
from __future__ import annotations

import io
import json
import time
import uuid
from datetime import datetime, timedelta

from conftest import MESSAGE_ID, journal_entries, kill_in, wait_for_entries
from test_lost_kills import journald_stopped, young_argv
from oom_journal.history.commands import main_list, main_show
from oom_journal.sinks.syslog.format import SD_ID


def run(main, *args):
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(args), stdout=out, stderr=err, environ={})
    assert rc == 0, err.getvalue()
    return out.getvalue()


def wait_until(predicate, what: str, daemon, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{daemon.log.read_text()[-4000:]}")
        time.sleep(0.1)


def ours(daemon, *matches) -> list:
    return journal_entries(f"MESSAGE_ID={MESSAGE_ID}", *matches, writers=[daemon])


def docs_of_pid(es, pid: int) -> list:
    return [(index, doc) for index in list(es.indices) for doc in es.docs(index).values() if doc.get("pid") == pid]


def es_docs(es, event_id: str) -> list:
    return [(index, doc) for index in list(es.indices) for i, doc in es.docs(index).items() if i == event_id]


def test_a_kill_recorded_from_its_exit_is_completed_by_its_late_kill_line_in_the_journal_list_and_sinks(
        memcg, daemon_factory, all_sinks, tmp_path):
    d = daemon_factory("--source", "journal", "--kmsg-path", str(tmp_path / "no-kmsg"), *all_sinks.args()).start()
    cg = memcg()
    time.sleep(2)  # this boot's journal read from its start: idle now
    argv = young_argv(uuid.uuid4().hex)
    began = time.time()
    with journald_stopped():
        pid = kill_in(cg, argv)
        d.wait_for_status("from the second witness", timeout=20)
        # Its document reached Elasticsearch (the sinks do not wait for journald): the first one.
        (index, first_doc), = wait_until(lambda: docs_of_pid(all_sinks.es, pid),
                                         "the lost kill's document at Elasticsearch", d)
        assert first_doc["kernel_report"] == "lost" and first_doc["witness"] == "exit", first_doc
        assert first_doc["constraint"] is None and first_doc["completes"] is None
    event_id = first_doc["event_id"]
    assert "-lost-" in event_id
    # journald runs again: it reads the kill line, the daemon reads it from the journal, late.
    entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_EVENT_ID={event_id}", count=2, timeout=20,
                               writers=[d])
    d.wait_for_status("completed by the kernel's report", timeout=10)
    time.sleep(2)  # nothing more comes for this kill
    assert {e["OOM_EVENT_ID"] for e in ours(d, f"OOM_PID={pid}")} == {event_id}  # one event id for the kill
    entries = ours(d, f"OOM_EVENT_ID={event_id}")
    assert sorted(e["OOM_KERNEL_REPORT"] for e in entries) == ["late", "lost"], entries
    lost = next(e for e in entries if e["OOM_KERNEL_REPORT"] == "lost")
    late = next(e for e in entries if e["OOM_KERNEL_REPORT"] == "late")
    assert lost["OOM_WITNESS"] == "exit" and "OOM_CONSTRAINT" not in lost and "OOM_COMPLETES" not in lost
    # The kernel's report the first entry lacked, and the first entry's victim identity.
    assert late["OOM_COMPLETES"] == event_id and late["OOM_WITNESS"] == "exit"
    assert late["OOM_CONSTRAINT"] == "CONSTRAINT_MEMCG" and late["OOM_MEMCG"] == cg.kernel_path
    assert late["OOM_REASON"] == "Memory cgroup out of memory" and late["OOM_UID"] == "0"
    assert int(late["OOM_ANON_RSS_KB"]) > 0 and "OOM_SCORE_ADJ" in late and "OOM_KERNEL_MESSAGE" in late
    assert late["OOM_CMDLINE"] == lost["OOM_CMDLINE"] == " ".join(argv)
    assert late["OOM_CMDLINE_SOURCE"] == lost["OOM_CMDLINE_SOURCE"]
    assert f"completes the event {event_id} recorded at " in late["MESSAGE"], late["MESSAGE"]
    assert "from its SIGKILL exit" in late["MESSAGE"]
    kill_line_id = event_id.split("-lost-")[0] + "-" + late["OOM_KERNEL_TIMESTAMP_USEC"] + f"-{pid}"
    assert not ours(d, f"OOM_EVENT_ID={kill_line_id}")  # not recorded again as itself

    # list: one row, merged: the kernel's fields, the first entry's command line.
    # This kill's rows: its pid since the test began (a long boot reuses pids: CI's list had an
    # earlier test's kill of the same pid).
    rows = [r for r in json.loads(run(main_list, "--json")) if r["pid"] == pid and r["boot_id"] in event_id
            and datetime.fromisoformat(r["time"]).timestamp() >= began - 1]
    assert [r["event_id"] for r in rows] == [event_id], rows
    (row,) = rows
    assert row["completes"] == event_id and row["kernel_report"] == "late" and row["witness"] == "exit"
    assert row["constraint"] == "CONSTRAINT_MEMCG" and row["cmdline"] == " ".join(argv)
    # The first entry's time (the exit's), as list reckons it from the entry's clocks: to the µs or so.
    assert abs(datetime.fromisoformat(row["time"]) - datetime.fromisoformat(first_doc["time"])) < timedelta(
        milliseconds=5)
    table = [line for line in run(main_list, "--full").splitlines() if argv[4] in line]
    assert len(table) == 1 and "[lost, completed]" in table[0], table
    page = run(main_show, event_id)
    assert "CONSTRAINT_MEMCG" in page
    assert "completes it" in page and argv[4] in page
    assert "invoked oom-killer" in page  # the kernel's lines of the kill, under the merged row

    # The sinks: the completion under the same event id.
    es = all_sinks.es
    docs = wait_until(lambda: (lambda got: got if got and got[0][1]["completes"] else None)(es_docs(es, event_id)),
                      "the completed document at Elasticsearch", d)
    assert len(docs) == 1 and docs[0][0] == index  # replaced in place: the same index, the same _id
    doc = docs[0][1]
    assert doc["kernel_report"] == "late" and doc["constraint"] == "CONSTRAINT_MEMCG"
    assert doc["cmdline"] == " ".join(argv) and doc["oom_memcg"] == cg.kernel_path
    assert es.indices[index].docs[event_id].version == 2  # an `index` over the first one
    assert not [i for i in es.indices if kill_line_id in es.docs(i)]
    kafka = [json.loads(m[3]) for m in all_sinks.broker.read("oom", 2, timeout=15)]
    kafka = [k for k in kafka if k["event_id"] == event_id]
    assert [k["kernel_report"] for k in kafka] == ["lost", "late"], kafka
    assert kafka[1]["completes"] == event_id and kafka[1]["constraint"] == "CONSTRAINT_MEMCG"
    records = wait_until(lambda: (lambda got: got if len(got) >= 2 else None)(
        [r for r in all_sinks.syslog.records() if r["parsed"].get(SD_ID, {}).get("event_id") == event_id]),
        "both records at rsyslog", d)
    assert [r["msgid"] for r in records] == ["OOM_KILL", "OOM_KILL_COMPLETED"]
    assert records[1]["parsed"][SD_ID]["completes"] == event_id
    assert "the kernel's report of the OOM kill of process" in records[1]["msg"]
    posts = wait_until(lambda: (lambda got: got if len(got) >= 2 else None)(
        [r.payload for r in all_sinks.slack.accepted() if event_id in json.dumps(r.payload)]), "two Slack posts", d)
    assert len(posts) == 2
    assert posts[0]["blocks"][0]["text"]["text"].startswith("OOM kill: ")
    assert posts[1]["blocks"][0]["text"]["text"].startswith("Late kernel report: ")  # not a new kill
    assert d.stop() == 0


def test_a_kill_counted_as_unseen_whose_kill_line_comes_later_is_not_two_events(memcg, daemon_factory, tmp_path):
    """Without the process-events connector (--process-events off) no exit identifies a kill whose
    line the daemon did not read: the counters alone record it, `unseen`. The kill line that comes
    when journald runs again is recorded as itself and names that entry (OOM_COMPLETES); list
    shows the kill once: its own row, and no unseen row left."""
    d = daemon_factory("--source", "journal", "--kmsg-path", str(tmp_path / "no-kmsg"),
                       "--process-events", "off").start()
    cg = memcg()
    time.sleep(2)
    argv = young_argv(uuid.uuid4().hex)
    with journald_stopped():
        pid = kill_in(cg, argv)
        d.wait_for_status("from the second witness", timeout=20)
    unseen = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", "OOM_WITNESS=counter", writers=[d], timeout=10)
    assert len(unseen) == 1 and unseen[0]["OOM_UNSEEN_KILLS"] == "1", unseen
    unseen_id = unseen[0]["OOM_EVENT_ID"]
    assert "-unseen-" in unseen_id
    (line,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d], timeout=20)
    assert line["OOM_COMPLETES"] == unseen_id and "OOM_KERNEL_REPORT" not in line
    assert line["OOM_CONSTRAINT"] == "CONSTRAINT_MEMCG" and line["OOM_MEMCG"] == cg.kernel_path
    assert f"counted before, victim unknown, in {unseen_id}" in line["MESSAGE"]
    time.sleep(2)
    assert len(ours(d, f"OOM_PID={pid}")) == 1
    rows = json.loads(run(main_list, "--json"))
    assert not [r for r in rows if r["event_id"] == unseen_id], "the unseen row still counts the kill"
    assert [r["completes"] for r in rows if r["event_id"] == line["OOM_EVENT_ID"]] == [unseen_id]
    assert d.stop() == 0


def test_a_kill_recorded_from_the_doorbell_is_not_written_again_when_the_journal_delivers_its_line(
        memcg, daemon_factory):
    """The doorbell's path: journald stopped, the daemon reads the kill line from /dev/kmsg and records
    it from that copy (DOORBELL_RECORD_AFTER); journald runs again and the journal delivers the same
    line. The doorbell's copy was the kernel's report itself: nothing to complete, no second entry."""
    d = daemon_factory("--source", "journal").start()
    cg = memcg()
    time.sleep(2)
    argv = young_argv(uuid.uuid4().hex)
    with journald_stopped():
        pid = kill_in(cg, argv)
        d.wait_for_status("from the second witness", timeout=20)
    (entry,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={pid}", writers=[d], timeout=10)
    assert entry["OOM_KERNEL_REPORT"] == "lost" and entry["OOM_WITNESS"] == "kmsg", entry
    assert entry["OOM_CONSTRAINT"] == "CONSTRAINT_MEMCG" and entry["OOM_CMDLINE"] == " ".join(argv)
    ts = entry["OOM_KERNEL_TIMESTAMP_USEC"]
    # The journal has the kernel's own line now, and the daemon read it.
    assert wait_for_entries("_TRANSPORT=kernel", f"_SOURCE_MONOTONIC_TIMESTAMP={ts}", timeout=10)
    wait_until(lambda: "nothing to add" in d.log.read_text(), "the journal's line read by the daemon", d)
    assert len(ours(d, f"OOM_EVENT_ID={entry['OOM_EVENT_ID']}")) == 1
    assert len(ours(d, f"OOM_PID={pid}")) == 1
    assert d.proc.poll() is None and d.stop() == 0
    assert not any("completed by the kernel's report" in m for m in d.messages)
