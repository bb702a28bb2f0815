"""Userspace OOM killers on a real Debian 12 (tests/test_vm.py's harness: Debian's kernel 6.1, cgroup
v2, systemd 252 as PID 1, the .deb installed): real systemd-oomd kills a unit of three processes
under memory pressure, the packaged earlyoom.service (1.7, DynamicUser=yes: not root) kills the
hog it prefers, and nohang, which Debian 12 does not ship, is REPLAYED: its documented lines
printed by a script named nohang run as nohang.service (root, comm nohang: the identity a real
nohang has; the same trust check applies). A line forged by nobody names a live process.

One boot (tests/vm/job-userspace.sh). Deselect with `-m "not vm"`.
"""
from __future__ import annotations

import collections
import re
import sys

import pytest

from conftest import MESSAGE_ID
from test_vm import TIMINGS, _boot, debs, image, kills, unit_journal  # noqa: F401 (fixtures)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def userspace_boot(image, debs, tmp_path_factory):  # noqa: F811
    return _boot("userspace", "job-userspace.sh", debs, image, tmp_path_factory)


def test_systemd_oomd_kill_of_a_three_process_unit_is_three_events(userspace_boot):
    b = userspace_boot
    assert b.text("oomd-start").strip().endswith("active"), b.text("oomd-start")
    members = {int(pid): " ".join(argv) for pid, argv in b.json("pressure-members.json").items()}
    assert len(members) == 3, members
    oomd = [m for m in b.messages(_SYSTEMD_UNIT="systemd-oomd.service") if m.startswith("Killed ")]
    assert oomd and oomd[0].startswith("Killed /system.slice/oomj-pressure.service due to memory pressure"), oomd
    counts = b.entries(_PID="1", MESSAGE_ID="d989611b15e44c9dbf31e3c81256e4ed", UNIT="oomj-pressure.service")
    assert [c.get("N_PROCESSES") for c in counts] == ["3"], counts
    got = kills(b, OOM_KILLER="systemd-oomd")
    assert {int(e["OOM_PID"]): e["OOM_CMDLINE"] for e in got} == members, (got, b.describe())
    for e in got:
        assert e["OOM_UNIT"] == "oomj-pressure.service" and e["OOM_CGROUP"] == "/system.slice/oomj-pressure.service"
        assert e["OOM_KILLER_MESSAGE"] == oomd[0] and e["OOM_CMDLINE_SOURCE"] != "not-found"
        assert e["OOM_EVENT_ID"].startswith(e["_BOOT_ID"] + "-systemd-oomd-")
    assert len({e["OOM_EVENT_ID"] for e in got}) == 3
    assert len({e["OOM_INCIDENT_ID"] for e in got}) == 1  # one kill of one cgroup: one incident
    assert not [e for e in got if "OOM_UNSEEN_KILLS" in e]
    # `journalctl -u` shows them with the unit's own lines, and `list --killer` finds them
    shown = [e for e in unit_journal(b, "oomj-pressure.service") if e.get("MESSAGE_ID") == MESSAGE_ID]
    assert len(shown) == 3
    assert b.text("pressure-result").strip() == "Result=oom-kill"
    assert sorted(d["pid"] for d in b.json("list-oomd.json")) == sorted(members)


def test_earlyoom_1_7_kill_is_one_event_with_the_full_command_line(userspace_boot):
    b = userspace_boot
    assert b.text("earlyoom-active").strip() == "active"
    lines = b.entries(_SYSTEMD_UNIT="earlyoom.service", SYSLOG_IDENTIFIER="earlyoom")
    sent = [e for e in lines if re.match(r"sending SIG\w+ to process ", str(e.get("MESSAGE", "")))]
    assert len(sent) == 1 and sent[0]["_UID"] != "0", sent  # DynamicUser=yes: the unit vouches for it
    assert re.search(r": badness -?\d+, VmRSS \d+ MiB$", sent[0]["MESSAGE"]), sent[0]["MESSAGE"]  # 1.7's shape
    pid = int(re.match(r"sending SIG\w+ to process (\d+) ", sent[0]["MESSAGE"]).group(1))
    (e,) = kills(b, OOM_KILLER="earlyoom")
    assert int(e["OOM_PID"]) == pid and e["OOM_UNIT"] == "oomj-eohog.service"
    assert e["OOM_CMDLINE"].startswith("/usr/bin/python3 -c \nimport time\n") and e["OOM_CMDLINE"].endswith(
        f"--token={b.params['token']} --role=earlyoom hog"), e["OOM_CMDLINE"]
    assert e["OOM_KILLER_MESSAGE"] == sent[0]["MESSAGE"]
    assert len([x for x in unit_journal(b, "oomj-eohog.service") if x.get("MESSAGE_ID") == MESSAGE_ID]) == 1


def test_nohang_replayed_and_a_forgery(userspace_boot):
    """nohang is not in Debian 12: its lines are replayed (the job's nohang script), so this shows
    the parsing and trust of its documented lines in a real journal, not nohang itself."""
    b = userspace_boot
    pids = dict(kv.split("=") for kv in b.text("replay-pids").split())
    (e,) = kills(b, OOM_KILLER="nohang")
    assert e["OOM_PID"] == pids["nohang"] and e["OOM_UNIT"] == "oomj-nohang-victim.service"
    assert e["OOM_CMDLINE"] == f"/usr/bin/python3 -c import time; time.sleep(600) --token={b.params['token']} --role=nohang victim"
    assert kills(b, OOM_PID=pids["relog"]) == []  # nohang's `kmsg:` re-log is not a kill
    forged = b.entries(SYSLOG_IDENTIFIER="earlyoom", _UID="65534")
    assert forged and pids["forged"] in forged[0]["MESSAGE"]  # the forgery reached the journal
    assert kills(b, OOM_PID=pids["forged"]) == []


def test_no_userspace_kill_is_a_kernel_kill_nor_any_kill_twice(userspace_boot, capsys):
    b = userspace_boot
    assert kills(b, OOM_KILLER="kernel") == [] and kills(b, OOM_KERNEL_REPORT="lost") == []
    assert not [m for m in b.messages(_TRANSPORT="kernel") if "Killed process" in m or "invoked oom-killer" in m]
    # the kernel's counters did not rise for the userspace kills (the second witness counts on it)
    assert b.text("vmstat-before") == b.text("vmstat-after") and b.text("vmstat-before").strip()
    assert b.text("slice-events-before") == b.text("slice-events-after"), (b.text("slice-events-before"),
                                                                          b.text("slice-events-after"))
    ids = collections.Counter(e.get("OOM_EVENT_ID") for e in kills(b))
    assert sum(ids.values()) == 5 and max(ids.values()) == 1, ids
    with capsys.disabled():
        sys.stderr.write(f"\nVM timings (s): {', '.join(f'{k} {v:.0f}' for k, v in TIMINGS.items())}\n")
