"""The state database: positions per boot, recorded kills, atomic record-and-advance."""
import os
import sqlite3
import threading
import time

import pytest

from oom_journal.store import outbox
from oom_journal.model import Resume
from oom_journal.store.state import StateCorrupt, StateError, StateStore, is_corruption, state_error


def test_position_survives_reopen_and_is_per_boot(tmp_path):
    s = StateStore(str(tmp_path), "boot1")
    assert s.resume_point("kmsg") is None
    s.record("boot1-100", "kmsg", Resume(42, inclusive=False))
    s.save_position("journal", Resume("s=abc;i=1", inclusive=True))
    s.close()
    s = StateStore(str(tmp_path), "boot1")
    assert s.resume_point("kmsg") == Resume(42, False)
    assert s.resume_point("journal") == Resume("s=abc;i=1", True)
    assert s.is_recorded("boot1-100") and not s.is_recorded("boot1-101")
    s.close()
    # Another boot: nothing is replayed, and the old boot's ids are forgotten.
    s = StateStore(str(tmp_path), "boot2")
    assert s.resume_point("kmsg") is None
    assert not s.is_recorded("boot1-100")


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=str(blocker)):
        StateStore(str(blocker / "state"), "b")


def test_state_dir_is_private(tmp_path):
    StateStore(str(tmp_path / "st"), "b").close()
    assert os.stat(tmp_path / "st").st_mode & 0o077 == 0


def test_a_garbage_file_is_corrupt_at_open(tmp_path):
    (tmp_path / StateStore.FILENAME).write_bytes(os.urandom(8192))
    with pytest.raises(StateCorrupt, match="file is not a database"):
        StateStore(str(tmp_path), "b")


def test_garbage_under_an_open_store_is_corrupt_for_every_method(tmp_path):
    s = StateStore(str(tmp_path), "b")
    s.record("b-1", "kmsg", Resume(1, inclusive=False), sinks=["slack"], document={"event_id": "b-1"})
    for name in os.listdir(tmp_path):  # the database, its -wal and -shm: the same inodes
        with open(tmp_path / name, "r+b") as f:
            f.write(os.urandom(max(os.fstat(f.fileno()).st_size, 4096)))
    calls = [lambda: s.is_recorded("b-1"), lambda: s.resume_point("kmsg"), s.check,
             lambda: s.record("b-2", "kmsg", Resume(2, inclusive=False)), lambda: s.mark_recorded(["b-3"]),
             lambda: s.save_position("kmsg", Resume(3, inclusive=False))]
    for call in calls:
        with pytest.raises(StateCorrupt, match=str(tmp_path)):
            call()


def test_a_locked_database_is_a_transient_error_not_corruption(tmp_path):
    s = StateStore(str(tmp_path), "b")
    other = sqlite3.connect(s.path, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        quick = sqlite3.connect(s.path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError) as raised:
            quick.execute("BEGIN IMMEDIATE")
        assert not is_corruption(raised.value)  # SQLITE_BUSY: waiting helps
        assert isinstance(state_error("x", raised.value), StateError)
        assert not isinstance(state_error("x", raised.value), StateCorrupt)
    finally:
        other.execute("ROLLBACK")


def test_in_memory_store_readers_wait_for_a_write_in_progress(tmp_path):
    """The sinks' workers read the in-memory outbox through connections of their own while the main
    thread records: a read that meets the write waits for it (shared-cache memory databases answer
    SQLITE_LOCKED at once instead, which stopped the worker: "database table is locked: outbox")."""
    s = StateStore(str(tmp_path), "b", in_memory=True)
    reader = outbox.connect(s.path)
    seen, errors = [], []

    def read():
        try:
            seen.extend(r[0] for r in reader.execute("SELECT event_id FROM outbox"))
        except sqlite3.Error as e:
            errors.append(e)

    with s._transaction():
        outbox.enqueue(s.db, ["slack"], "b-1", {"event_id": "b-1"})
        t = threading.Thread(target=read)
        t.start()
        time.sleep(0.3)
    t.join(10)
    assert errors == [] and seen == ["b-1"]
    assert not os.listdir(tmp_path)  # in memory: nothing written to the state directory
