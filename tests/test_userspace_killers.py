"""The userspace OOM killers' lines (every shape ../shared/KERNEL-FORMATS.md lists) -> KillerAction
(parse.userspace), which entries are believed (sources.killers), and the events they become
(enrich.userspace: the victims' command lines from the cache, oomd's victims from the SIGKILL
exits of its cgroup, PID 1's count, the event ids)."""
from __future__ import annotations

import pytest

from oom_journal.enrich.userspace import UserspaceKills
from oom_journal.model import KILLER_EARLYOOM, KILLER_NOHANG, KILLER_OOMD, HostInfo, KillerLine
from oom_journal.parse.userspace import KillerParser
from oom_journal.procs.cache import CmdlineLookup, Killed
from oom_journal.sources.killers import OOMD_UNIT_KILL_ID, killer_line_here, trusted_killer

HOST = HostInfo("h", "b" * 32, "6.1.0-50-amd64")
T = 500_000_000  # µs: the killer entry's monotonic time in these fixtures


def line(killer, message, ts=T, **kw):
    return KillerLine(killer, message, ts, position=f"c{ts}", **kw)


def actions(killer, *messages):
    p = KillerParser()
    return [a for m in messages for a in p.feed(line(killer, m))]


# --- earlyoom, each version's kill line -----------------------------------------------------
EARLYOOM_17 = 'sending SIGTERM to process 363 uid 0 "python3": badness 1240, VmRSS 187 MiB'
EARLYOOM_18 = ('sending SIGTERM to process 4021 uid 1000 "firefox": oom_score 700, VmRSS 2048 MiB, '
               'cmdline "/usr/lib/firefox/firefox -contentproc -childID 7"')
EARLYOOM_19 = ('sending SIGKILL to process 77 uid 1000 "my \\"odd\\" app": oom_score 900, oom_score_adj 300, '
               'VmRSS 12 MiB, cmdline "/opt/app --x"')


def test_earlyoom_1_7_line_debian_12():
    (a,) = actions(KILLER_EARLYOOM, "low memory! at or below SIGTERM limits: mem 50.00%, swap 100.00%",
                   EARLYOOM_17, "process exited after 0.1 seconds")
    assert (a.killer, a.pid, a.uid, a.comm, a.signal, a.vmrss_mib, a.cmdline_hint) == \
        (KILLER_EARLYOOM, 363, 0, "python3", "SIGTERM", 187, None)
    assert a.message == EARLYOOM_17 and a.timestamp_us == T


def test_earlyoom_1_8_and_1_9_lines():
    (a,) = actions(KILLER_EARLYOOM, EARLYOOM_18)
    assert (a.pid, a.uid, a.comm, a.cmdline_hint) == (4021, 1000, "firefox", "/usr/lib/firefox/firefox -contentproc -childID 7")
    (b,) = actions(KILLER_EARLYOOM, EARLYOOM_19)
    assert (b.pid, b.signal, b.comm, b.vmrss_mib, b.cmdline_hint) == (77, "SIGKILL", 'my \\"odd\\" app', 12, "/opt/app --x")


def test_earlyoom_follow_up_lines_are_not_kills():
    assert actions(KILLER_EARLYOOM, "escalating to SIGKILL after 0.5 seconds", "process 363 exited after 0.112 seconds",
                   "kill failed: Operation not permitted", "mem avail: 1234 of 1999 MiB (61.73%), swap free: 0 of 0 MiB") == []


# --- systemd-oomd ---------------------------------------------------------------------------
OOMD_PRESSURE = ("Killed /system.slice/pressure.service due to memory pressure for /system.slice/pressure.service "
                 "being 48.02% > 10.00% for > 5s with reclaim activity")
OOMD_SWAP = ("Killed /user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope due to memory used "
             "(8000000000) / total (8300000000) and swap used (1900000000) / total (2000000000) being more than 90.00%")


def test_oomd_lines_name_the_cgroup():
    (a,) = actions(KILLER_OOMD, OOMD_PRESSURE)
    assert (a.cgroup, a.reason, a.pid, a.signal) == ("/system.slice/pressure.service", "systemd-oomd: memory pressure",
                                                     None, "SIGKILL")
    (b,) = actions(KILLER_OOMD, OOMD_SWAP)
    assert b.cgroup.endswith("/app-x.scope") and b.reason == "systemd-oomd: swap used"
    assert actions(KILLER_OOMD, "Memory pressure for /system.slice is 30% > 10% for > 5s with reclaim activity") == []


def test_pid1_count():
    p = KillerParser()
    (a,) = p.feed(line(KILLER_OOMD, "pressure.service: systemd-oomd killed 3 process(es) in this unit.",
                       from_pid1=True, unit="pressure.service", n_processes=3))
    assert (a.unit, a.n_processes, a.pid, a.cgroup) == ("pressure.service", 3, None, None)


# --- nohang (0.2.0), one journal entry per line ---------------------------------------------
NOHANG_BLOCK = ["Victim status (found in 12ms):",
                "  PID: 1419, name: stress-ng, state: R (running), EUID: 1000, badness: 872, oom_score: 872, oom_score_adj: 0",
                "  cgroup_v2: /user.slice/user-1000.slice/session-2.scope",
                "  cmdline: stress-ng --vm 1 --vm-bytes 90%",
                "Implementing a corrective action:",
                "  Sending SIGTERM to the victim",
                "The victim died in 0.031s"]


def test_nohang_victim_block():
    (a,) = actions(KILLER_NOHANG, *NOHANG_BLOCK)
    assert (a.pid, a.comm, a.uid, a.signal, a.cgroup, a.cmdline_hint) == (
        1419, "stress-ng", 1000, "SIGTERM", "/user.slice/user-1000.slice/session-2.scope", "stress-ng --vm 1 --vm-bytes 90%")


def test_nohang_block_in_one_entry_and_its_kmsg_relogs():
    assert len(actions(KILLER_NOHANG, "\n".join(NOHANG_BLOCK))) == 1
    assert actions(KILLER_NOHANG, "kmsg: Out of memory: Killed process 380 (python3) total-vm:75160kB, anon-rss:65152kB, "
                                  "file-rss:6644kB, shmem-rss:0kB, UID:0 pgtables:188kB oom_score_adj:0",
                   "  Sending SIGTERM to the victim") == []  # no victim block: nothing to say who


# --- trust: the trusted fields journald added ------------------------------------------------
class Entry:
    """The sd-journal reader's current entry, as sources.journal_fields reads it."""

    def __init__(self, monotonic_us=T, **fields):
        self.fields = {k: str(v).encode() for k, v in fields.items()}
        self.monotonic_us = monotonic_us

    def _get(self, name):
        return self.fields[name]

    def _get_monotonic(self):
        return (self.monotonic_us, b"boot")


@pytest.mark.parametrize("fields, killer", [
    # Debian 12's packaged units: oomd as User=systemd-oom, earlyoom as DynamicUser=yes
    (dict(SYSLOG_IDENTIFIER="systemd-oomd", _COMM="systemd-oomd", _EXE="/usr/lib/systemd/systemd-oomd", _UID=108,
          _SYSTEMD_UNIT="systemd-oomd.service"), KILLER_OOMD),
    (dict(SYSLOG_IDENTIFIER="earlyoom", _COMM="earlyoom", _EXE="/usr/bin/earlyoom", _UID=62000,
          _SYSTEMD_UNIT="earlyoom.service"), KILLER_EARLYOOM),
    (dict(SYSLOG_IDENTIFIER="earlyoom", _COMM="earlyoom", _EXE="/usr/bin/earlyoom", _UID=0,
          _SYSTEMD_UNIT="run-u7.service"), KILLER_EARLYOOM),  # root's, any unit
    (dict(SYSLOG_IDENTIFIER="nohang", _COMM="nohang", _EXE="/usr/bin/python3.11", _UID=0,
          _SYSTEMD_UNIT="nohang.service"), KILLER_NOHANG),
    # forgeries: what the sender chooses (the identifier) without what journald vouches for
    (dict(SYSLOG_IDENTIFIER="earlyoom", _COMM="logger", _EXE="/usr/bin/logger", _UID=65534), None),
    (dict(SYSLOG_IDENTIFIER="earlyoom", _COMM="earlyoom", _EXE="/tmp/x/earlyoom", _UID=65534,
          _SYSTEMD_UNIT="user@65534.service"), None),  # a user's own binary of that name
    (dict(SYSLOG_IDENTIFIER="systemd-oomd", _COMM="python3", _EXE="/usr/bin/python3.11", _UID=0), None),
    (dict(SYSLOG_IDENTIFIER="nohang", _COMM="nohang", _EXE="/usr/bin/python3.11", _UID=1000,
          _SYSTEMD_UNIT="user@1000.service"), None),
])
def test_trusted_killer(fields, killer):
    assert trusted_killer(Entry(**fields)) == killer


def test_pid1_count_only_from_pid1():
    real = Entry(MESSAGE_ID=OOMD_UNIT_KILL_ID, _PID=1, _UID=0, _COMM="systemd", UNIT="pressure.service", N_PROCESSES=3,
                 MESSAGE="pressure.service: systemd-oomd killed 3 process(es) in this unit.")
    got = killer_line_here(real, "cur")
    assert got is not None and (got.from_pid1, got.unit, got.n_processes, got.timestamp_us) == (True, "pressure.service", 3, T)
    assert killer_line_here(Entry(MESSAGE_ID=OOMD_UNIT_KILL_ID, _PID=4242, _UID=65534, UNIT="x.service", N_PROCESSES=3)) is None


# --- events ---------------------------------------------------------------------------------
class Cache:
    """What ProcessCache hands out: lookups by pid and the SIGKILL exits."""

    def __init__(self, argv=None, killed=()):
        self.argv = argv or {}
        self.killed = list(killed)

    def lookup(self, pid, comm, wait=0.1):
        if pid in self.argv:
            return CmdlineLookup(self.argv[pid], "exec-event", None, comm, "", "/system.slice/hog.service")
        return CmdlineLookup(None, "not-found")

    def killed_since(self, since_ns, wait=0.1):
        return [k for k in self.killed if k.exit_ns >= since_ns]


def kills(cache, recorded=()):
    return UserspaceKills(cache, HOST, exit_grace=30.0, monotonic_ns=lambda: (T + 1_000_000) * 1000,
                          recorded_prefix=lambda p: any(r.startswith(p) for r in recorded))


def exit_of(pid, cgroup, argv, dt_us=-2_000):
    return Killed(pid, (T + dt_us) * 1000, b"python3", b"\0".join(argv) + b"\0", cgroup, 100, "exec-event")


def test_earlyoom_event_has_the_exact_cmdline_from_the_cache():
    argv = [b"/usr/bin/python3", b"-c", b"x" * 5000, b"--token=a b"]
    (a,) = actions(KILLER_EARLYOOM, EARLYOOM_17)
    (e,) = kills(Cache({363: argv})).events(a)
    f, d = e.journal_fields(), e.document()
    assert f["OOM_KILLER"] == d["killer"] == "earlyoom" and f["OOM_KILLER_MESSAGE"] == EARLYOOM_17
    assert f["OOM_ARGV"] == b"\0".join(argv) and f["OOM_PID"] == 363 and f["OOM_UNIT"] == "hog.service"
    assert e.event_id == f"{'b' * 32}-earlyoom-{T}-363"
    assert e.message().startswith("earlyoom: low memory: killed process 363 (python3) of hog.service: /usr/bin/python3 -c")


def test_oomd_kill_is_one_event_per_sigkill_exit_of_its_cgroup():
    cg = "/system.slice/pressure.service"
    exits = [exit_of(10 + i, cg, [b"python3", f"/hog{i}.py".encode()]) for i in range(3)]
    others = [exit_of(99, "/system.slice/other.service", [b"other"]),  # another cgroup
              exit_of(98, cg, [b"old"], dt_us=-60_000_000)]  # long before the kill
    u = kills(Cache(killed=exits + others))
    (a,) = actions(KILLER_OOMD, OOMD_PRESSURE)
    events = u.events(a)
    assert [e.kill.pid for e in events] == [10, 11, 12]
    assert [e.cmdline for e in events] == ["python3 /hog0.py", "python3 /hog1.py", "python3 /hog2.py"]
    assert {e.journal_fields()["OOM_KILLER"] for e in events} == {"systemd-oomd"}
    assert {e.cgroup.unit for e in events} == {"pressure.service"}
    assert len({e.event_id for e in events}) == 3
    # PID 1 counts 3: nothing more to record
    (count,) = KillerParser().feed(line(KILLER_OOMD, "x", ts=T + 900_000, from_pid1=True, unit="pressure.service",
                                        n_processes=3))
    assert u.events(count) == []


def test_pid1_count_finds_late_exits_and_says_how_many_were_not_seen():
    cg = "/system.slice/pressure.service"
    cache = Cache(killed=[exit_of(10, cg, [b"a"])])
    u = kills(cache)
    (a,) = actions(KILLER_OOMD, OOMD_PRESSURE)
    assert [e.kill.pid for e in u.events(a)] == [10]
    cache.killed.append(exit_of(11, cg, [b"late"], dt_us=+400_000))  # stuck, exited after oomd's line
    (count,) = KillerParser().feed(line(KILLER_OOMD, "x", ts=T + 900_000, from_pid1=True, unit="pressure.service",
                                        n_processes=3))
    late, unseen = u.events(count)
    assert late.kill.pid == 11 and late.cmdline == "late"
    assert unseen.unseen_kills == 1 and unseen.event_id == f"{'b' * 32}-systemd-oomd-{T}-unseen"
    assert "OOM_PID" not in unseen.journal_fields() and unseen.document()["killer"] == "systemd-oomd"


def test_a_restart_does_not_record_an_oomd_kill_again():
    """Re-read after a restart: the new cache saw no exit; an event of that kill is recorded: nothing."""
    (a,) = actions(KILLER_OOMD, OOMD_PRESSURE)
    u = kills(Cache(), recorded=[f"{'b' * 32}-systemd-oomd-{T}-10"])
    assert u.events(a) == []
    (count,) = KillerParser().feed(line(KILLER_OOMD, "x", ts=T + 900_000, from_pid1=True, unit="pressure.service",
                                        n_processes=3))
    assert u.events(count) == []
    # ... while a kill nobody recorded is said (how many, which unit), not dropped
    u = kills(Cache())
    u.events(a)
    (unseen,) = u.events(count)
    assert unseen.unseen_kills == 3 and unseen.cgroup.unit == "pressure.service"


def test_an_entry_of_ours_without_oom_killer_is_the_kernels():
    """Entries written before OOM_KILLER existed are kernel kills; a userspace one reads back whole."""
    from oom_journal.history.entries import event_from_entry

    old = event_from_entry({"OOM_PID": "5", "OOM_KERNEL_TIMESTAMP_USEC": "7", "OOM_COMM": b"x", "_BOOT_ID": "b" * 32})
    assert old is not None and old.kill.killer == "kernel" and old.document()["killer"] == "kernel"
    (a,) = actions(KILLER_EARLYOOM, EARLYOOM_17)
    (e,) = kills(Cache({363: [b"python3", b"x"]})).events(a)
    back = event_from_entry({k: (v.encode() if isinstance(v, str) and k in ("OOM_COMM", "OOM_KILLER_MESSAGE") else
                                 str(v) if isinstance(v, int) else v) for k, v in e.journal_fields().items()})
    assert back is not None and back.kill.killer == "earlyoom" and back.kill.killer_message == EARLYOOM_17
    assert back.event_id == e.event_id and back.document()["killer_message"] == EARLYOOM_17
