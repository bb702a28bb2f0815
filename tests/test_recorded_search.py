"""A first start's search for the kills this boot's journal already holds, in a handle reopened
every SEARCH_REOPEN_EVERY entries (so that its mapped pages, hence the peak RSS, stay bounded):
every id of root's is found across the reopens, none of a forger's (issue #18).

The journal is private, written by systemd-journal-remote (as bench/trust_bench.py writes one)."""
from __future__ import annotations

import os
import subprocess
import uuid

from conftest import MESSAGE_ID, unavailable
from oom_journal.outputs.journal import SEARCH_REOPEN_EVERY, our_event_ids, our_event_ids_in_file

REMOTE = "/lib/systemd/systemd-journal-remote"


def test_search_finds_every_root_id_across_reopens_and_no_forged_one(tmp_path):
    if not os.path.exists(REMOTE):
        unavailable(f"{REMOTE} is missing (apt-get install systemd-journal-remote)")
    from systemd import journal

    boot = uuid.uuid4().hex
    ours = 2 * SEARCH_REOPEN_EVERY + 37
    chunks = []
    for i in range(ours):
        for uid in ("0", "65534"):  # root's entry, and a forged one of the same kind
            mono = 1_000_000 + 10 * i + int(uid == "0")
            chunks.append(f"__REALTIME_TIMESTAMP={1_700_000_000_000_000 + mono}\n__MONOTONIC_TIMESTAMP={mono}\n"
                          f"_BOOT_ID={boot}\n_TRANSPORT=journal\n_UID={uid}\nMESSAGE_ID={MESSAGE_ID}\n"
                          f"OOM_EVENT_ID={boot}-{uid}-{i}\nMESSAGE=killed process {i}\n\n")
    subprocess.run([REMOTE, f"--output={tmp_path}/remote.journal", "-"], input="".join(chunks).encode(),
                   check=True, capture_output=True)
    opened = []

    def reopen():
        opened.append(1)
        return journal.Reader(path=str(tmp_path))

    reader = journal.Reader(path=str(tmp_path))
    try:
        ids = our_event_ids(reader, boot, reopen=reopen)
    finally:
        reader.close()
    assert ids == {f"{boot}-0-{i}" for i in range(ours)}
    # The daemon's search of each file, by the values (query_unique, then root's entry for each).
    reader = journal.Reader(path=str(tmp_path))
    try:
        assert our_event_ids_in_file(reader, boot) == ids
    finally:
        reader.close()
    # It did go on in new handles; and one more for the completions (OOM_KERNEL_REPORT=late), a pass of their own.
    assert len(opened) == ours // SEARCH_REOPEN_EVERY + 1


def test_a_completion_in_the_journal_is_found_under_its_own_key(tmp_path):
    """A crash between a completion's journal write and its state commit: at the next start the
    search says the completion is recorded too (`<id>+late`, OomEvent.record_key), so the late kill
    line, read again, does not write it a second time; an entry of the same id without
    OOM_KERNEL_REPORT=late (the first one) does not. A kill line's id written without its pid (0.1.0
    at first) is found with it (enrich.event.current_event_id)."""
    if not os.path.exists(REMOTE):
        unavailable(f"{REMOTE} is missing (apt-get install systemd-journal-remote)")
    from systemd import journal

    boot = uuid.uuid4().hex
    done, first_only = f"{boot}-lost-42-5000000", f"{boot}-lost-43-6000000"
    # The last: a kill line's entry as 0.1.0 wrote it at first, its id without the pid.
    entries = [(done, "lost", 42), (done, "late", 42), (first_only, "lost", 43), (f"{boot}-7000000-44", None, 44),
               (f"{boot}-8000000", None, 45)]
    chunks = []
    for i, (event_id, report, pid) in enumerate(entries):
        mono = 1_000_000 + i
        chunks.append(f"__REALTIME_TIMESTAMP={1_700_000_000_000_000 + mono}\n__MONOTONIC_TIMESTAMP={mono}\n"
                      f"_BOOT_ID={boot}\n_TRANSPORT=journal\n_UID=0\nMESSAGE_ID={MESSAGE_ID}\n"
                      f"OOM_EVENT_ID={event_id}\nOOM_PID={pid}\n" + (f"OOM_KERNEL_REPORT={report}\n" if report else "")
                      + "MESSAGE=an entry\n\n")
    subprocess.run([REMOTE, f"--output={tmp_path}/remote.journal", "-"], input="".join(chunks).encode(),
                   check=True, capture_output=True)
    reader = journal.Reader(path=str(tmp_path))
    try:
        ids = our_event_ids(reader, boot)
    finally:
        reader.close()
    assert ids == {done, done + "+late", first_only, f"{boot}-7000000-44", f"{boot}-8000000-45"}
    reader = journal.Reader(path=str(tmp_path))
    try:
        assert our_event_ids_in_file(reader, boot) == ids
    finally:
        reader.close()
