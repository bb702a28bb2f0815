"""Hostile local users: entries of ours forged by an unprivileged user are not believed.

Anyone can send the journal an entry with our MESSAGE_ID and OOM_* fields (`logger --journald`,
or systemd.journal.send, through /run/systemd/journal/socket). journald stamps every entry with
the sender's uid (_UID, from SCM_CREDENTIALS: the sender cannot choose it), so the daemon and
`oom-journal list`/`show` believe only root's entries, as journalctl -u and coredumpctl do.
The forgers here are real: python3 and logger run as nobody (setpriv), into the real journald.
"""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from conftest import MESSAGE_ID, journal_entries, kill_in, victim_argv, wait_for_entries
from oom_journal.history.commands import main_list, main_show
from oom_journal.outputs.journal import JournalWriter
from test_history import event_id_of, kill_line, monotonic_us, run, run_json

AS_NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
SEND = "import sys, systemd.journal as j; j.send(sys.argv[1], **dict(a.split('=', 1) for a in sys.argv[2:]))"


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip().replace("-", "")


def kill_fields(event_id: str, pid: int, comm: str) -> dict:
    ts = event_id.rsplit("-", 1)[1]
    return {"MESSAGE_ID": MESSAGE_ID, "OOM_EVENT_ID": event_id, "OOM_PID": str(pid), "OOM_COMM": comm,
            "OOM_KERNEL_TIMESTAMP_USEC": ts, "OOM_CMDLINE": f"{comm} --forged", "OOM_CMDLINE_SOURCE": "exec-event",
            "OOM_UNIT": "forged.service", "OOM_REASON": "Memory cgroup out of memory"}


def forge_with_python(fields: dict) -> None:
    """systemd.journal.send as nobody: the native protocol, as our daemon writes."""
    subprocess.run(AS_NOBODY + ["/usr/bin/python3", "-c", SEND, f"killed process (forged) {fields['OOM_COMM']}"]
                   + [f"{k}={v}" for k, v in fields.items()], check=True, timeout=30)


def forge_with_logger(fields: dict) -> None:
    """logger --journald as nobody: fields read from stdin, one KEY=value a line."""
    text = "".join(f"{k}={v}\n" for k, v in {"MESSAGE": "forged kill", **fields}.items())
    subprocess.run(AS_NOBODY + ["logger", "--journald"], input=text.encode(), check=True, timeout=30)


def send_as_root(fields: dict) -> None:
    from systemd import journal

    journal.send(f"killed process {fields['OOM_COMM']}", **fields)


def in_journal(event_id: str, uid: str) -> dict:
    """The entry with this event id from this uid, once journald has it (the forgery is real)."""
    entries = wait_for_entries(f"OOM_EVENT_ID={event_id}", f"_UID={uid}")
    assert len(entries) == 1, entries
    return entries[0]


@pytest.mark.parametrize("forge", [forge_with_python, forge_with_logger])
def test_a_forged_entry_is_neither_listed_nor_shown(journald, forge):
    comm = "forged-" + uuid.uuid4().hex[:8]
    event_id = f"{boot_id()}-{monotonic_us() - 1_000_000}-4242"
    forge(kill_fields(event_id, 4242, comm))
    assert in_journal(event_id, "65534")["MESSAGE_ID"] == MESSAGE_ID  # journalctl sees it: it was sent
    listed = run_json(main_list, "-b")
    assert event_id not in [d["event_id"] for d in listed]
    assert comm not in [d["comm"] for d in listed]
    rc, out, err = run(main_show, event_id)
    assert rc == 1 and comm not in out, (out, err)
    rc, out, err = run(main_show, comm)
    assert rc == 1 and comm not in out, (out, err)


def test_a_root_entry_is_listed_and_shown(journald):
    """The same fields from root are believed (the daemon's entries, and the control for the above)."""
    comm = "rooted-" + uuid.uuid4().hex[:8]
    event_id = f"{boot_id()}-{monotonic_us() - 1_000_000}-4243"
    send_as_root(kill_fields(event_id, 4243, comm))
    in_journal(event_id, "0")
    (doc,) = [d for d in run_json(main_list, "-b") if d["event_id"] == event_id]
    assert doc["comm"] == comm and doc["cmdline"] == f"{comm} --forged"
    rc, out, _ = run(main_show, event_id)
    assert rc == 0 and f"{comm} --forged" in out


def test_a_root_entry_with_the_pid_less_id_of_0_1_0_is_listed_and_shown_under_todays_id(journald):
    """0.1.0 wrote a kill line's id as `<boot>-<µs>` at first; such an entry is read as
    `<boot>-<µs>-<pid>` (enrich.event.current_event_id) and shown by either."""
    comm = "legacy-" + uuid.uuid4().hex[:8]
    old_id = f"{boot_id()}-{monotonic_us() - 1_000_000}"
    send_as_root(kill_fields(old_id, 4246, comm))
    in_journal(old_id, "0")
    (doc,) = [d for d in run_json(main_list, "-b") if d["comm"] == comm]
    assert doc["event_id"] == old_id + "-4246"
    for asked in (old_id, old_id + "-4246"):
        rc, out, _ = run(main_show, asked)
        assert rc == 0 and f"{comm} --forged" in out, asked


def test_recorded_event_ids_are_root_entries_of_this_boot_only(journald):
    boot = boot_id()
    forged, rooted = (f"{boot}-{monotonic_us() - n}-{pid}" for n, pid in ((3_000_000, 4244), (2_000_000, 4245)))
    forge_with_python(kill_fields(forged, 4244, "forged"))
    send_as_root(kill_fields(rooted, 4245, "rooted"))
    in_journal(forged, "65534")
    in_journal(rooted, "0")
    ids = JournalWriter().recorded_event_ids(boot)
    assert rooted in ids and forged not in ids
    assert all(i.startswith(boot + "-") for i in ids)


def test_a_forged_event_id_does_not_suppress_the_real_kill(memcg, daemon_factory):
    """Kills while no daemon runs; then a first start of the boot reads this boot's kernel log.
    Kill A's event id was forged by nobody beforehand: A must still get its real entry. Kill B's
    entry is root's (a crash between the journal write and the state commit): not written again.
    Kill C comes after the start: recorded as always (and, read in order, it shows A and B were read)."""
    cg = memcg()
    after = monotonic_us()
    a = kill_in(cg, victim_argv("forged-a-" + uuid.uuid4().hex, 10))
    b = kill_in(cg, victim_argv("rooted-b-" + uuid.uuid4().hex, 10))
    a_id, b_id = event_id_of(kill_line(a, after)), event_id_of(kill_line(b, after))
    forge_with_python(kill_fields(a_id, a, "python3"))
    forge_with_logger(kill_fields(a_id, a, "python3"))
    send_as_root(kill_fields(b_id, b, "python3"))
    assert len(journal_entries(f"OOM_EVENT_ID={a_id}", "_UID=65534")) == 2 or \
        len(wait_for_entries(f"OOM_EVENT_ID={a_id}", "_UID=65534", count=2)) == 2
    in_journal(b_id, "0")

    d = daemon_factory().start()  # its state directory is new: a first start in this boot
    c = kill_in(cg, victim_argv("after-start-" + uuid.uuid4().hex, 10))
    (c_entry,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_PID={c}", writers=[d], timeout=60)
    assert c_entry["OOM_CMDLINE_SOURCE"] == "exec-event"
    # C, a kill of now, is recorded at once, while the history may still be read (issue #18):
    # A and B are judged once the daemon says it has read the history to its end.
    deadline = time.monotonic() + 120
    while "kernel log is read up to the entries that came after the start" not in d.log.read_text():
        assert time.monotonic() < deadline, d.log.read_text()[-2000:]
        time.sleep(0.2)
    (a_entry,) = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_EVENT_ID={a_id}", writers=[d])
    assert a_entry["_UID"] == "0" and a_entry["_PID"] == str(d.pid) and a_entry["OOM_PID"] == str(a)
    assert journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_EVENT_ID={b_id}", writers=[d]) == []
    assert d.stop() == 0
    # And list shows A once, as the daemon recorded it.
    (doc,) = [x for x in run_json(main_list, "-b") if x["event_id"] == a_id]
    assert doc["pid"] == a and "--forged" not in (doc["cmdline"] or "")


def test_a_forged_missed_kernel_messages_entry_is_not_reported(journald):
    """journald's own "Missed N kernel messages" (its driver transport, _UID=0) makes `list` warn that
    kills may be missing; the same MESSAGE_ID from nobody must not (it would cry wolf for anyone)."""
    from oom_journal.sources.journal_fields import MISSED_KERNEL_MESSAGES_ID

    count = 900_000 + int(uuid.uuid4().hex[:4], 16)  # a number no real journald message says
    subprocess.run(AS_NOBODY + ["/usr/bin/python3", "-c", SEND, f"Missed {count} kernel messages",
                                f"MESSAGE_ID={MISSED_KERNEL_MESSAGES_ID}"], check=True, timeout=30)
    assert wait_for_entries(f"MESSAGE_ID={MISSED_KERNEL_MESSAGES_ID}", "_UID=65534")
    rc, out, err = run(main_list, "-b")
    assert rc == 0 and str(count) not in err and str(count) not in out, err
