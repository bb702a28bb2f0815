"""The state database: positions per boot, recorded kills, atomic record-and-advance."""
import os

import pytest

from oom_journal.sources import Resume
from oom_journal.state import StateError, StateStore


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
