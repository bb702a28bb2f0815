"""The second witness's policy (enrich/witness.py) on a fixture /proc and cgroup tree: which
missing kills it identifies, which SIGKILL exits it refuses, and the event ids it gives."""
from __future__ import annotations

from oom_journal.enrich.witness import SecondWitness
from oom_journal.model import HostInfo, KernelKill
from oom_journal.procs.cache import Killed
from oom_journal.sources.oom_counters import CgroupCounters

HOST = HostInfo("h", "b" * 32, "6.18")
BASE_NS = 1_000_000_000_000


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Exits:
    """What ProcessCache.killed_since() hands out (the connector's SIGKILL exits)."""

    def __init__(self, killed):
        self.killed = killed

    def killed_since(self, since_ns, wait=0.1):
        return [k for k in self.killed if k.exit_ns >= since_ns]


def tree(tmp_path, vmstat, counters):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "vmstat").write_text(f"nr_free_pages 1\noom_kill {vmstat}\nnuma_hit 2\n")
    root = tmp_path / "cgroup"
    for path, n in counters.items():
        d = root / "memory" / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n")
    (root / "memory").mkdir(parents=True, exist_ok=True)
    (root / "memory" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    return proc


def witness(tmp_path, proc, exits, clock):
    return SecondWitness(exits, HOST, proc_root=str(proc), counters=CgroupCounters(str(tmp_path / "cgroup")),
                         settle=3.0, monotonic_ns=lambda: BASE_NS, clock=clock)


def test_a_missing_kill_is_identified_by_its_sigkill_exit_in_a_cgroup_whose_counter_rose(tmp_path):
    proc = tree(tmp_path, 10, {"/a.service": 0, "/b.service": 0})
    exit_ns = BASE_NS + 5_000_000
    exits = Exits([
        Killed(41, exit_ns, b"sleep", b"sleep\x0099\x00", "/b.service", 1, "exec-event"),  # a user's kill -9
        Killed(42, exit_ns + 1000, b"java", b"java\x00-jar\x00app.jar\x00", "/a.service", 1, "exec-event"),
    ])
    clock = Clock()
    w = witness(tmp_path, proc, exits, clock)
    tree_files = tmp_path / "cgroup" / "memory"
    (proc / "vmstat").write_text("oom_kill 11\n")
    (tree_files / "a.service" / "memory.oom_control").write_text("oom_kill 1\n")
    assert w.check() == []  # missing from now: wait `settle` for a late kill line
    clock.t += 1
    assert w.check() == []
    clock.t += 3
    (event,) = w.check()
    assert (event.kill.pid, event.kill.comm, event.cmdline, event.cgroup.unit) == (42, "java", "java -jar app.jar",
                                                                                  "a.service")
    fields = event.journal_fields()
    assert fields["OOM_KERNEL_REPORT"] == "lost" and fields["OOM_WITNESS"] == "exit"
    assert fields["OOM_EVENT_ID"] == f"{HOST.boot_id}-lost-42-{(exit_ns + 1000) // 1000}"
    assert "a.service" in fields["OOM_WITNESS_NOTE"] and fields["OOM_CMDLINE_SOURCE"] == "exec-event"
    clock.t += 5
    assert w.check() == []  # accounted: never twice
    # Its kill line, late (printed before the exit): the same kill.
    late = KernelKill(reason="Memory cgroup out of memory", pid=42, comm="java", timestamp_us=(exit_ns // 1000) - 300)
    assert w.late_line(late) == fields["OOM_EVENT_ID"]
    other = KernelKill(reason="Memory cgroup out of memory", pid=41, comm="sleep", timestamp_us=exit_ns // 1000)
    assert w.late_line(other) is None


def test_kills_no_exit_accounts_for_are_one_entry_that_counts_them(tmp_path):
    proc = tree(tmp_path, 10, {"/c.service": 0})
    exits = Exits([Killed(50, BASE_NS + 10, b"x", b"x\x00", "/c.service", 1, "exec-event")])  # its line was read
    clock = Clock()
    w = witness(tmp_path, proc, exits, clock)
    (proc / "vmstat").write_text("oom_kill 13\n")
    w.saw_kill_line(KernelKill(reason="Out of memory", pid=50, comm="x", timestamp_us=BASE_NS // 1000 + 5))
    w.check()
    clock.t += 4
    (event,) = w.check()
    fields = event.journal_fields()
    assert event.unseen_kills == 2 and fields["OOM_UNSEEN_KILLS"] == 2 and fields["OOM_WITNESS"] == "counter"
    assert "OOM_PID" not in fields and "OOM_COMM" not in fields
    assert fields["OOM_EVENT_ID"] == f"{HOST.boot_id}-unseen-12-13"
    assert "2 OOM kills" in fields["MESSAGE"]
    doc = event.document()
    assert doc["pid"] is None and doc["unseen_kills"] == 2 and doc["kernel_report"] == "lost"


def test_kill_lines_that_match_the_counter_leave_nothing_missing(tmp_path):
    proc = tree(tmp_path, 10, {})
    clock = Clock()
    w = witness(tmp_path, proc, Exits([]), clock)
    (proc / "vmstat").write_text("oom_kill 11\n")
    w.saw_kill_line(KernelKill(reason="Out of memory", pid=7, comm="x", timestamp_us=BASE_NS // 1000 + 1))
    w.saw_kill_line(KernelKill(reason="Out of memory", pid=7, comm="x", timestamp_us=BASE_NS // 1000 + 1))  # twice read
    for _ in range(3):
        assert w.check() == []
        clock.t += 4
    # A kill line from before the daemon began counting is not counted.
    w.saw_kill_line(KernelKill(reason="Out of memory", pid=8, comm="y", timestamp_us=BASE_NS // 1000 - 1))
    # ... nor one already accounted for, read again (the journal's copy of the doorbell's line).
    w.saw_kill_line(KernelKill(reason="Out of memory", pid=7, comm="x", timestamp_us=BASE_NS // 1000 + 1))
    assert w.seen == {}


def test_kill_lines_of_different_pids_in_one_microsecond_are_two_kills(tmp_path):
    """One memory.oom.group kill's lines can share a µs (tests/fixtures/kernel-timed/): the counter's
    three kills are the three lines, nothing missing, and no SIGKILL exit is taken for a fourth.
    Counted by timestamp alone they were two, and systemd's SIGKILL of 560 was recorded as a lost
    kill (the Debian 12 guest's group kill in CI)."""
    proc = tree(tmp_path, 10, {"/g.service": 0})
    exit_ns = BASE_NS + 5_000_000
    exits = Exits([Killed(560, exit_ns, b"python3", b"python3\x00-c\x00x\x00", "/g.service", 1, "exec-event")])
    clock = Clock()
    w = witness(tmp_path, proc, exits, clock)
    (proc / "vmstat").write_text("oom_kill 13\n")
    (tmp_path / "cgroup" / "memory" / "g.service" / "memory.oom_control").write_text("oom_kill 3\n")
    ts = BASE_NS // 1000 + 1
    for pid, at in ((561, ts), (559, ts), (562, ts + 53_000)):
        w.saw_kill_line(KernelKill(reason="Memory cgroup out of memory", pid=pid, comm="x", timestamp_us=at))
    w.saw_kill_line(KernelKill(reason="Memory cgroup out of memory", pid=559, comm="x", timestamp_us=ts))  # the journal's copy
    for _ in range(3):
        assert w.check() == []
        clock.t += 4


def test_kills_recorded_from_an_exit_by_an_earlier_run_match_their_late_kill_line(tmp_path):
    proc = tree(tmp_path, 10, {})
    w = witness(tmp_path, proc, Exits([]), Clock())
    w.remember_recorded({f"{HOST.boot_id}-lost-77-5000000", f"{HOST.boot_id}-5000", "other-lost-78-1"})
    line = KernelKill(reason="Out of memory", pid=77, comm="x", timestamp_us=4_999_000)
    assert w.late_line(line) == f"{HOST.boot_id}-lost-77-5000000"
    assert w.late_line(KernelKill(reason="Out of memory", pid=78, comm="x", timestamp_us=1)) is None


def v2_tree(tmp_path, vmstat, counters, mount_options="rw,nosuid,nodev,noexec,relatime,nsdelegate"):
    """A cgroup v2 fixture: cgroup.controllers at the root (no memory/ directory), each cgroup's
    memory.events as the kernel writes it (mm/memcontrol.c: memory_events_show()), and a
    mountinfo line for the cgroup2 mount with its options."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "vmstat").write_text(f"nr_free_pages 1\noom_kill {vmstat}\n")
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (proc / "self" / "mountinfo").write_text(
        f"30 23 0:26 / {root} {mount_options} shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n")
    for path, n in counters.items():
        set_v2_count(root, path, n)
    return proc, root


def set_v2_count(root, path, n):
    d = root / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {n}\noom_group_kill 0\n")


def test_v2_memory_events_oom_kill_is_read_and_a_removed_cgroup_reads_its_nearest_ancestor(tmp_path):
    """cgroup v2's memory.events counts a kill in the cgroup and every ancestor below the root
    (memcg_memory_event() walks up parent_mem_cgroup() unless the hierarchy is mounted with
    memory_localevents), so when systemd has removed a unit's cgroup (it does as soon as the
    unit's last process died), its parent's count still holds the kill."""
    proc, root = v2_tree(tmp_path, 0, {"/system.slice": 2, "/system.slice/a.service": 1})
    c = CgroupCounters(str(root), proc_root=str(proc))
    assert c.layout == "v2"
    assert c.oom_kills("/system.slice/a.service") == 1
    assert c.counter("/system.slice/a.service") == ("/system.slice/a.service", 1)
    assert c.counter("/system.slice/gone.service") == ("/system.slice", 2)
    assert c.counter("/system.slice/gone.service/sub") == ("/system.slice", 2)
    assert c.counter("/gone.slice/gone.service") is None  # the root has no memory.events
    assert c.counter("/../etc") is None


def test_v2_with_memory_localevents_a_removed_cgroup_has_no_count(tmp_path):
    proc, root = v2_tree(tmp_path, 0, {"/system.slice": 2},
                         mount_options="rw,nosuid,nodev,noexec,relatime")
    (proc / "self" / "mountinfo").write_text(
        f"30 23 0:26 / {root} rw,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_localevents\n")
    c = CgroupCounters(str(root), proc_root=str(proc))
    assert c.counter("/system.slice/gone.service") is None


def test_v1_a_removed_cgroup_has_no_count(tmp_path):
    """v1's memory.oom_control oom_kill is the cgroup's own (memcg_memory_event() stops at the
    cgroup when the memory controller is not on the default hierarchy)."""
    proc = tree(tmp_path, 0, {"/system.slice": 2})
    c = CgroupCounters(str(tmp_path / "cgroup"), proc_root=str(proc))
    assert c.layout == "v1" and c.counter("/system.slice") == ("/system.slice", 2)
    assert c.counter("/system.slice/gone.service") is None


def test_a_lost_kill_in_a_v2_cgroup_systemd_removed_is_identified_from_its_parents_count(tmp_path):
    """The guest's case (tests/test_vm.py): the victim's unit's cgroup is gone when the daemon
    identifies the kill; its parent's memory.events oom_kill rose."""
    proc, root = v2_tree(tmp_path, 10, {"/system.slice": 4, "/system.slice/victim.service": 0})
    exit_ns = BASE_NS + 5_000_000
    exits = Exits([Killed(42, exit_ns, b"python3", b"python3\x00-c\x00hog\x00", "/system.slice/victim.service", 1,
                          "exec-event")])
    clock = Clock()
    w = SecondWitness(exits, HOST, proc_root=str(proc), counters=CgroupCounters(str(root), proc_root=str(proc)),
                      settle=3.0, monotonic_ns=lambda: BASE_NS, clock=clock)
    (proc / "vmstat").write_text("oom_kill 11\n")
    set_v2_count(root, "/system.slice", 5)
    (root / "system.slice" / "victim.service" / "memory.events").unlink()
    (root / "system.slice" / "victim.service").rmdir()
    assert w.check() == []
    clock.t += 4
    (event,) = w.check()
    fields = event.journal_fields()
    assert fields["OOM_WITNESS"] == "exit" and str(fields["OOM_PID"]) == "42", fields
    assert event.cmdline == "python3 -c hog" and event.cgroup.unit == "victim.service"
    assert "/system.slice's oom_kill counter rose" in fields["OOM_WITNESS_NOTE"], fields["OOM_WITNESS_NOTE"]
    assert "removed" in fields["OOM_WITNESS_NOTE"]


def test_a_v2_cgroup_read_first_counts_only_when_above_zero(tmp_path):
    """A user's kill -9 in a v2 cgroup that never had an OOM kill: its counter reads 0, not taken."""
    proc, root = v2_tree(tmp_path, 10, {"/system.slice/b.service": 0})
    exits = Exits([Killed(41, BASE_NS + 10, b"sleep", b"sleep\x0099\x00", "/system.slice/b.service", 1, "exec-event")])
    clock = Clock()
    w = SecondWitness(exits, HOST, proc_root=str(proc), counters=CgroupCounters(str(root), proc_root=str(proc)),
                      settle=3.0, monotonic_ns=lambda: BASE_NS, clock=clock)
    (proc / "vmstat").write_text("oom_kill 11\n")
    w.check()
    clock.t += 4
    (event,) = w.check()
    assert event.witness == "counter" and event.unseen_kills == 1


def test_a_kill_line_stamped_ahead_of_the_monotonic_clock_does_not_hide_the_next_lost_kill(tmp_path):
    """The kernel stamps its lines with local_clock(), which may run ahead of CLOCK_MONOTONIC
    (measured in the Debian 12 guest under TCG: journald received kernel lines up to 18 ms before
    their own timestamp). A line seen, counted and accounted for must not be counted again for
    the next kill, whatever its timestamp says (seen in tests/test_vm.py: the next kill, whose line
    was lost, was never recorded)."""
    proc, root = v2_tree(tmp_path, 7, {"/system.slice": 1, "/system.slice/victim.service": 0})
    now = {"ns": BASE_NS}
    exit_ns = BASE_NS + 20_000_000_000
    exits = Exits([Killed(42, exit_ns, b"python3", b"python3\x00-c\x00hog\x00", "/system.slice/victim.service", 1,
                          "exec-event")])
    clock = Clock()
    w = SecondWitness(exits, HOST, proc_root=str(proc), counters=CgroupCounters(str(root), proc_root=str(proc)),
                      settle=3.0, monotonic_ns=lambda: now["ns"], clock=clock)
    # A kill read at once from /dev/kmsg, its line stamped 10 ms ahead of the monotonic clock.
    now["ns"] = BASE_NS + 10_000_000_000
    (proc / "vmstat").write_text("oom_kill 8\n")
    w.saw_kill_line(KernelKill(reason="Out of memory", pid=7, comm="x", timestamp_us=(now["ns"] + 10_000_000) // 1000))
    assert w.check() == []  # counted and seen: nothing missing
    clock.t += 2
    # ... its copy from the journal, later: the same line.
    w.saw_kill_line(KernelKill(reason="Out of memory", pid=7, comm="x", timestamp_us=(now["ns"] + 10_000_000) // 1000))
    # The next kill's line is lost; its SIGKILL exit and the counters tell of it.
    now["ns"] = exit_ns + 1_000_000
    (proc / "vmstat").write_text("oom_kill 9\n")
    set_v2_count(root, "/system.slice/victim.service", 1)
    assert w.check() == []
    clock.t += 4
    (event,) = w.check()
    assert event.witness == "exit" and event.kill.pid == 42


def test_an_exit_stamped_after_its_kill_was_accounted_is_not_taken_for_the_next_lost_kill(tmp_path):
    """The kernel counts a kill, sends SIGKILL and prints the kill line; the victim's exit event
    is stamped at the end of do_exit(), after its address space is freed. So the doorbell can read
    the line, and a check account for the kill (a new accounting point), before the exit event's
    time: the exit then lies after the point, and its line, accounted, is no longer among the
    lines seen. Seen in tests/test_vm.py (CI of dc67936): pid 585's kill, recorded from /dev/kmsg,
    was recorded a second time as the lost kill of the next victim, whose kill was never recorded."""
    proc, root = v2_tree(tmp_path, 6, {"/system.slice": 5, "/oomj-lost": 0, "/system.slice/lost2.service": 0})
    now = {"ns": BASE_NS}
    clock = Clock()
    first_exit_ns = BASE_NS + 2_000_000_000
    second_exit_ns = BASE_NS + 9_000_000_000
    killed = []
    w = SecondWitness(Exits(killed), HOST, proc_root=str(proc), counters=CgroupCounters(str(root), proc_root=str(proc)),
                      settle=3.0, monotonic_ns=lambda: now["ns"], clock=clock)
    assert w.check() == []
    # The first kill: counted, its line read at once (stamped 20 ms ahead), accounted 1 ms before
    # its victim's exit event is stamped.
    (proc / "vmstat").write_text("oom_kill 7\n")
    set_v2_count(root, "/oomj-lost", 1)
    now["ns"] = first_exit_ns - 1_000_000
    w.saw_kill_line(KernelKill(reason="Memory cgroup out of memory", pid=585, comm="python3",
                               timestamp_us=(first_exit_ns + 20_000_000) // 1000))
    clock.t += 1
    assert w.check() == []
    killed.append(Killed(585, first_exit_ns, b"python3", b"python3\x00-S\x00young\x00", "/oomj-lost", 1, "exec-event"))
    clock.t += 5
    now["ns"] = first_exit_ns + 5_000_000_000
    assert w.check() == []
    # The next kill's line is lost; its unit's cgroup is gone, its parent counted it.
    killed.append(Killed(600, second_exit_ns, b"python3", b"python3\x00-S\x00lost2\x00",
                         "/system.slice/lost2.service", 1, "exec-event"))
    (proc / "vmstat").write_text("oom_kill 8\n")
    set_v2_count(root, "/system.slice", 6)
    (root / "system.slice" / "lost2.service" / "memory.events").unlink()
    (root / "system.slice" / "lost2.service").rmdir()
    now["ns"] = second_exit_ns + 1_000_000
    clock.t += 5
    assert w.check() == []
    clock.t += 4
    (event,) = w.check()
    assert event.witness == "exit" and event.kill.pid == 600 and event.cmdline == "python3 -S lost2"
