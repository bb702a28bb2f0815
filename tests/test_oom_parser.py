"""Tests of oom_journal.oom_parser against real kernel OOM reports and hostile input.

Each fixture under fixtures/kernel/ is one report (or a few) as the kernel printed it, one bare
message per line, with a '# ' header saying where it came from. The table below holds every
field the parser must produce for each kill; a field not named there must be None.
"""
from __future__ import annotations

import random
import string
import time
from pathlib import Path

import pytest

from oom_journal.model import KernelKill, KernelLine
from oom_journal.parse.oom_report import REASON_UNKNOWN, OomParser
from oom_journal.records import field_names

FIXTURES = Path(__file__).parent / "fixtures" / "kernel"
START_US = 5_000_000_000  # kernel time of a fixture's first line
STEP_US = 7  # kernel time between two lines

# The fields that come from the line the kill was returned for, checked for every kill.
_FROM_KILL_LINE = {"timestamp_us", "seq", "kill_message"}
_ALL_FIELDS = list(field_names(KernelKill))


def load_fixture(name: str) -> list[str]:
    """The messages of a fixture: its lines after the leading '# ' header, verbatim."""
    text = (FIXTURES / name).read_text(encoding="utf-8", errors="surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    while lines and lines[0].startswith("# "):
        lines.pop(0)
    return lines


def kernel_lines(messages, start_us=START_US, step_us=STEP_US, first_seq=1000):
    return [
        KernelLine(message=m, timestamp_us=start_us + i * step_us, seq=first_seq + i, position=("kmsg", first_seq + i))
        for i, m in enumerate(messages)
    ]


def feed_all(parser: OomParser, lines) -> list[tuple[KernelLine, KernelKill]]:
    out = []
    for line in lines:
        for kill in parser.feed(line):
            out.append((line, kill))
    return out


def expect(**fields) -> dict:
    """A kill as the table gives it: every KernelKill field, None unless named."""
    unknown = set(fields) - set(_ALL_FIELDS)
    assert not unknown, f"not KernelKill fields: {unknown}"
    full = {name: None for name in _ALL_FIELDS if name not in _FROM_KILL_LINE}
    full.update(killer="kernel", killer_message="")  # the parser's kills are the kernel's
    full.update(fields)
    return full


def assert_kills(got: list[tuple[KernelLine, KernelKill]], want: list[dict]) -> None:
    assert len(got) == len(want), [k for _, k in got]
    for i, ((line, kill), fields) in enumerate(zip(got, want, strict=True)):
        assert kill.timestamp_us == line.timestamp_us, i
        assert kill.seq == line.seq, i
        assert kill.kill_message == line.message, i
        actual = {name: getattr(kill, name) for name in fields}
        assert actual == fields, f"kill #{i}"


DOCKER_1 = "/docker/2e088fe462e25e60be1dafafe2c05c47bda1a97978648d10ad2b7484fc0b8f50"
DOCKER_2 = "/docker/6c6fcab8562fd3150854986b78552c732f234fd405b624207b8843528a145e70"
KATA_POD = "/kubepods/burstable/podacfa3d53-2068-4b61-a754-fa21968b4201"
GROUP_POD = "/kubepods.slice/kubepods-podf9411888_a753_41f4_9520_afc45712f5b5.slice"
GROUP_SCOPE = "cri-containerd-85d3a7f5db9b92df4f5930b5bf062cff540084aacfc05310acc6c5cc963023ad.scope"

MEMCG = "Memory cgroup out of memory"
GLOBAL = "Out of memory"

KILL_3_13_MEMCG = expect(
    reason=MEMCG, pid=13536, comm="memorymonster",
    total_vm_kb=33558652, anon_rss_kb=920, file_rss_kb=452,
    constraint="CONSTRAINT_MEMCG", oom_memcg="/mem2", task_memcg="/mem2", cpuset="/", mems_allowed="0",
    memcg_usage_kb=980, memcg_limit_kb=980,
    trigger_comm="memorymonster", trigger_pid=13536, trigger_gfp_mask="0xd0", trigger_order=0, trigger_oom_score_adj=0,
)
KILL_4_8_DOCKER_1 = expect(
    reason=MEMCG, pid=1381, comm="gunpowder-memho",
    total_vm_kb=2121528, anon_rss_kb=18624, file_rss_kb=2140, shmem_rss_kb=0,
    constraint="CONSTRAINT_MEMCG", oom_memcg=DOCKER_1, task_memcg=DOCKER_1,
    cpuset=DOCKER_1.rsplit("/", 1)[1], mems_allowed="0", memcg_usage_kb=20480, memcg_limit_kb=20480,
    trigger_comm="gunpowder-memho", trigger_pid=1381, trigger_gfp_mask="0x24000c0(GFP_KERNEL)",
    trigger_order=0, trigger_oom_score_adj=0,
)
KILL_4_8_DOCKER_2 = expect(
    reason=MEMCG, pid=1667, comm="gunpowder-memho",
    total_vm_kb=843576, anon_rss_kb=248180, file_rss_kb=2048, shmem_rss_kb=0,
    constraint="CONSTRAINT_MEMCG", oom_memcg=DOCKER_2, task_memcg=DOCKER_2,
    cpuset=DOCKER_2.rsplit("/", 1)[1], mems_allowed="0", memcg_usage_kb=307112, memcg_limit_kb=307200,
    trigger_comm="gunpowder-memho", trigger_pid=1667, trigger_gfp_mask="0x24000c0(GFP_KERNEL)",
    trigger_order=0, trigger_oom_score_adj=0,
)
KILL_6_18 = expect(
    reason=MEMCG, pid=3373, comm="python3", uid=0,
    total_vm_kb=50488, anon_rss_kb=40576, file_rss_kb=6644, shmem_rss_kb=0, pgtables_kb=140, oom_score_adj=0,
    constraint="CONSTRAINT_MEMCG", global_oom=False,
    oom_memcg="/parser-fixture-2540", task_memcg="/parser-fixture-2540", cpuset="/", mems_allowed="0",
    memcg_usage_kb=40960, memcg_limit_kb=40960,
    trigger_comm="python3", trigger_pid=3373, trigger_gfp_mask="0xcc0(GFP_KERNEL)", trigger_order=0,
    trigger_oom_score_adj=0,
)
KILL_5_4_KATA = expect(
    reason=MEMCG, pid=1887079, comm="qemu-kata-syste", uid=0,
    total_vm_kb=13598556, anon_rss_kb=39836, file_rss_kb=8712, shmem_rss_kb=12017992, pgtables_kb=24204,
    oom_score_adj=-100, constraint="CONSTRAINT_MEMCG", global_oom=False, oom_memcg=KATA_POD, task_memcg=KATA_POD,
    cpuset="podacfa3d53-2068-4b61-a754-fa21968b4201", mems_allowed="0-1",
    memcg_usage_kb=12218368, memcg_limit_kb=12218368,
    trigger_comm="qemu-kata-syste",
    trigger_gfp_mask="0x101c4a(GFP_NOFS|__GFP_HIGHMEM|__GFP_HARDWALL|__GFP_MOVABLE|__GFP_WRITE)",
    trigger_order=0, trigger_oom_score_adj=-100,
)


def _group_member(pid, comm, total_vm, anon, file, pgtables):
    # A memory.oom.group member: the report's cgroup facts, not the chosen task's.
    return expect(
        reason=MEMCG, pid=pid, comm=comm, uid=0, total_vm_kb=total_vm, anon_rss_kb=anon, file_rss_kb=file,
        shmem_rss_kb=0, pgtables_kb=pgtables, oom_score_adj=-997,
        constraint="CONSTRAINT_MEMCG", global_oom=False, oom_memcg=GROUP_POD, cpuset=GROUP_SCOPE, mems_allowed="0-7",
        oom_group=GROUP_POD + "/" + GROUP_SCOPE,  # the "Tasks in <cg> are going to be killed" line's
    )


# fixture -> (kills in order, reports still open at the end, index of the first line of the oldest one)
FIXTURE_TABLE = {
    "v3.13-memcg-cadvisor.txt": ([KILL_3_13_MEMCG], 0, None),
    "v3.13-global-cadvisor.txt": ([expect(
        reason=GLOBAL, pid=1532, comm="badsysprogram", total_vm_kb=1641388, anon_rss_kb=1595164, file_rss_kb=76,
        cpuset="/", mems_allowed="0",
        trigger_comm="badsysprogram", trigger_pid=1532, trigger_gfp_mask="0x280da", trigger_order=0,
        trigger_oom_score_adj=0,
    )], 0, None),
    "v4.5-oom-kill-allocating-task-lkml.txt": ([expect(
        # The chosen task was 10595; its child 10596 was killed (sacrificed).
        reason="Out of memory (oom_kill_allocating_task)", pid=10596, comm="a.out",
        total_vm_kb=4176, anon_rss_kb=80, file_rss_kb=0, shmem_rss_kb=0, cpuset="/", mems_allowed="0",
        trigger_comm="a.out", trigger_gfp_mask="0x24280ca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO)", trigger_order=0,
        trigger_oom_score_adj=0,
    )], 0, None),
    "v4.8-docker-memcg-two-reports-cadvisor.txt": ([KILL_4_8_DOCKER_1, KILL_4_8_DOCKER_2], 0, None),
    "v4.13-global-lkml.txt": ([expect(
        reason=GLOBAL, pid=2763, comm="insmod", total_vm_kb=13084, anon_rss_kb=132, file_rss_kb=0, shmem_rss_kb=0,
        cpuset="/", mems_allowed="0", trigger_comm="insmod", trigger_pid=2763,
        trigger_gfp_mask="0x14002c2(GFP_KERNEL|__GFP_HIGHMEM|__GFP_NOWARN)", trigger_order=0, trigger_oom_score_adj=0,
    )], 0, None),
    "v4.18-rhel-memcg-no-killable-lkml.txt": ([], 1, 6),
    "v4.19-global-lkml.txt": ([
        # The kill of a report whose start is not in the fixture: what its two lines say.
        expect(reason=GLOBAL, pid=3359, comm="a.out", total_vm_kb=4267252, anon_rss_kb=2894908, file_rss_kb=0,
               shmem_rss_kb=0),
        expect(reason=GLOBAL, pid=1089, comm="java", total_vm_kb=5555688, anon_rss_kb=181976, file_rss_kb=0,
               shmem_rss_kb=0, cpuset="/", mems_allowed="0", trigger_comm="in:imjournal", trigger_pid=1001,
               trigger_gfp_mask="0x6200ca(GFP_HIGHUSER_MOVABLE)", trigger_order=0, trigger_oom_score_adj=0),
    ], 0, None),
    "v5.0-global-constructed.txt": ([expect(
        # The summary names the chosen parent 2300, so its task_memcg and uid are not the child's.
        reason=GLOBAL, pid=2301, comm="stress", total_vm_kb=2105240, anon_rss_kb=2040000, file_rss_kb=0,
        shmem_rss_kb=0, constraint="CONSTRAINT_NONE", global_oom=True, cpuset="/", mems_allowed="0",
        trigger_comm="stress", trigger_pid=2301, trigger_gfp_mask="0x6280ca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO)",
        trigger_order=0, trigger_oom_score_adj=0,
    )], 0, None),
    "v5.2-memcg-lkml.txt": ([expect(
        # Read mid-report: the summary opens the burst; the memcg usage before it is lost.
        reason=MEMCG, pid=210, comm="stress", uid=0, total_vm_kb=265768, anon_rss_kb=0, file_rss_kb=224,
        shmem_rss_kb=0, constraint="CONSTRAINT_NONE", global_oom=False, oom_memcg="/foo", task_memcg="/foo",
    )], 0, None),
    "v5.4-memcg-kubepods-cgroupfs-lkml.txt": ([KILL_5_4_KATA], 0, None),
    "v5.4-memcg-reportportal.txt": ([expect(
        reason=MEMCG, pid=63214, comm="uwsgi", uid=0, total_vm_kb=3149468, anon_rss_kb=164992, file_rss_kb=52176,
        shmem_rss_kb=92, pgtables_kb=1372, oom_score_adj=986, constraint="CONSTRAINT_MEMCG",
    )], 1, 2),
    "v5.x-global-kill-lines-only-docker-for-linux.txt": ([
        expect(reason=GLOBAL, pid=15784, comm="python3", total_vm_kb=11964, anon_rss_kb=4288, file_rss_kb=3028,
               shmem_rss_kb=0),
        expect(reason=GLOBAL, pid=15925, comm="(resolved)", total_vm_kb=168424, anon_rss_kb=4064,
               file_rss_kb=3584, shmem_rss_kb=0),
        expect(reason=GLOBAL, pid=15783, comm="python3", total_vm_kb=11964, anon_rss_kb=4288, file_rss_kb=3028,
               shmem_rss_kb=0),
        expect(reason=GLOBAL, pid=15934, comm="(resolved)", total_vm_kb=168424, anon_rss_kb=4064,
               file_rss_kb=3584, shmem_rss_kb=0),
    ], 0, None),
    "v6.x-memcg-oom-group-kubepods-systemd.txt": ([
        expect(
            reason=MEMCG, pid=3804874, comm="stress", uid=0, total_vm_kb=13632272, anon_rss_kb=1489488,
            file_rss_kb=264, shmem_rss_kb=0, pgtables_kb=2956, oom_score_adj=-997,
            constraint="CONSTRAINT_MEMCG", global_oom=False, oom_memcg=GROUP_POD,
            task_memcg=f"{GROUP_POD}/{GROUP_SCOPE}", cpuset=GROUP_SCOPE, mems_allowed="0-7",
        ),
        _group_member(3803554, "sleep", 1572, 4, 0, 32),
        _group_member(3803846, "bash", 2416, 436, 1632, 44),
        _group_member(3804873, "stress", 13632272, 1258752, 264, 2508),
        # 3804874's kill line again (the chosen victim is a member too): the same kill, no event.
        _group_member(3804875, "stress", 13632272, 992376, 264, 1984),
        _group_member(3804876, "stress", 13632272, 896808, 264, 1796),
        _group_member(3804879, "stress", 13632272, 1162128, 264, 2320),
        _group_member(3804880, "stress", 13632272, 1112496, 264, 2220),
        _group_member(3804881, "stress", 13632272, 1034616, 264, 2068),
        _group_member(3804883, "stress", 13632272, 1034352, 264, 2068),
    ], 0, None),
    "v6.16-global-relate.txt": ([expect(
        reason=GLOBAL, pid=3581527, comm="uwsgi", uid=33, total_vm_kb=517892, anon_rss_kb=263092, file_rss_kb=29128,
        shmem_rss_kb=0, pgtables_kb=740, oom_score_adj=0, trigger_comm="postgres", trigger_pid=3589817,
        trigger_gfp_mask="0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP)", trigger_order=0,
        trigger_oom_score_adj=0,
    )], 0, None),
    "v6.18-memcg-captured.txt": ([KILL_6_18], 0, None),
    # RHEL 6's 2.6.32: "Pid: N, comm: X Not tainted" names the trigger; the kill line's uid comes before the comm.
    "v2.6.32-rhel6-memcg-mruby.txt": ([expect(
        reason=MEMCG, pid=14095, comm="mruby", uid=0, total_vm_kb=14476, anon_rss_kb=1408, file_rss_kb=1300,
        constraint="CONSTRAINT_MEMCG", oom_memcg="/test", task_memcg="/test", cpuset="/", mems_allowed="0",
        memcg_usage_kb=8, memcg_limit_kb=8, trigger_comm="mruby", trigger_pid=14095, trigger_gfp_mask="0xd0",
        trigger_order=0, trigger_oom_score_adj=0,
    )], 0, None),
    "v2.6.32-rhel6-global-java-hadoop.txt": ([expect(
        reason=GLOBAL, pid=8120, comm="java", uid=0, total_vm_kb=1314832, anon_rss_kb=572096, file_rss_kb=80,
    )], 0, None),
}


def test_every_fixture_is_in_the_table():
    assert sorted(p.name for p in FIXTURES.glob("*.txt")) == sorted(FIXTURE_TABLE)


@pytest.mark.parametrize("name", sorted(FIXTURE_TABLE))
def test_fixture(name):
    want, open_after, oldest_index = FIXTURE_TABLE[name]
    lines = kernel_lines(load_fixture(name))
    parser = OomParser()
    assert_kills(feed_all(parser, lines), want)
    assert parser.open_bursts() == open_after
    expected_position = None if oldest_index is None else lines[oldest_index].position
    assert parser.oldest_open_position() == expected_position
    assert parser.internal_errors == 0


@pytest.mark.parametrize("name", sorted(FIXTURE_TABLE))
def test_fixture_with_trailing_whitespace_and_crlf(name):
    # journald and serial consoles can leave "\r" or blanks at the end of a record.
    want, _, _ = FIXTURE_TABLE[name]
    lines = kernel_lines([m + " \r" for m in load_fixture(name)])
    got = feed_all(OomParser(), lines)
    assert [k.pid for _, k in got] == [w["pid"] for w in want]
    assert [k.comm for _, k in got] == [w["comm"] for w in want]
    assert [k.oom_memcg for _, k in got] == [w["oom_memcg"] for w in want]


# -- several reports at once -------------------------------------------------------------------

UNRELATED = [
    "eth0: renamed from veth4b89c12",
    "audit: type=1400 audit(1700000000.123:42): apparmor=\"DENIED\" operation=\"open\" profile=\"snap.x\"",
    "EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro",
    "usb 1-1: new high-speed USB device number 3 using xhci_hcd",
    "kauditd_printk_skb: 12 callbacks suppressed",
    "TCP: request_sock_TCP: Possible SYN flooding on port 443. Sending cookies.",
    "systemd-journald[375]: Under memory pressure, flushing caches.",
    "CPU: 3 PID: 999 Comm: kworker/3:1 Not tainted 6.18.44 #1",
    "nfs: server filer not responding, still trying",
    "Killed", "Kill", "memory", "cpuset=", "oom-kill:",
]


def _interleave(a: list[str], b: list[str], noise: list[str]) -> list[str]:
    out = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            out.append(a[i])
        out.append(noise[i % len(noise)])
        if i < len(b):
            out.append(b[i])
    return out


def test_two_pre_5_0_memcg_reports_interleaved_line_by_line():
    # 3.x memcg OOMs of different hierarchies were not serialised: their lines mixed.
    a = load_fixture("v3.13-memcg-cadvisor.txt")
    b_all = load_fixture("v4.8-docker-memcg-two-reports-cadvisor.txt")
    start = next(i for i, m in enumerate(b_all) if "invoked oom-killer" in m)
    end = next(i for i, m in enumerate(b_all) if m.startswith("oom_reaper:"))
    b = b_all[start:end + 1]
    got = feed_all(OomParser(), kernel_lines(_interleave(a, b, UNRELATED)))
    by_pid = {k.pid: (line, k) for line, k in got}
    assert sorted(by_pid) == [1381, 13536]
    assert_kills([by_pid[13536]], [KILL_3_13_MEMCG])
    assert_kills([by_pid[1381]], [KILL_4_8_DOCKER_1])


def test_two_reports_interleaved_the_other_way_round():
    a = load_fixture("v3.13-memcg-cadvisor.txt")
    b_all = load_fixture("v4.8-docker-memcg-two-reports-cadvisor.txt")
    start = next(i for i, m in enumerate(b_all) if "invoked oom-killer" in m)
    end = next(i for i, m in enumerate(b_all) if m.startswith("oom_reaper:"))
    got = feed_all(OomParser(), kernel_lines(_interleave(b_all[start:end + 1], a, UNRELATED[::-1])))
    by_pid = {k.pid: (line, k) for line, k in got}
    assert_kills([by_pid[13536]], [KILL_3_13_MEMCG])
    assert_kills([by_pid[1381]], [KILL_4_8_DOCKER_1])


def test_5x_report_with_unrelated_lines_between_every_line():
    report = load_fixture("v6.18-memcg-captured.txt")
    mixed = []
    for i, m in enumerate(report):
        mixed.append(m)
        mixed.append(UNRELATED[i % len(UNRELATED)])
    assert_kills(feed_all(OomParser(), kernel_lines(mixed)), [KILL_6_18])


def test_back_to_back_5x_reports_each_get_their_own_cgroup():
    kata = load_fixture("v5.4-memcg-kubepods-cgroupfs-lkml.txt")
    mine = load_fixture("v6.18-memcg-captured.txt")
    got = feed_all(OomParser(), kernel_lines(kata + UNRELATED + mine))
    assert_kills(got, [KILL_5_4_KATA, KILL_6_18])


def test_a_lone_kill_line_still_yields_a_kill():
    line = ("Memory cgroup out of memory: Killed process 4242 (java) total-vm:8123456kB, anon-rss:4096000kB, "
            "file-rss:1024kB, shmem-rss:0kB, UID:1001 pgtables:9000kB oom_score_adj:-998")
    got = feed_all(OomParser(), kernel_lines([line]))
    assert_kills(got, [expect(
        reason=MEMCG, pid=4242, comm="java", uid=1001, total_vm_kb=8123456, anon_rss_kb=4096000, file_rss_kb=1024,
        shmem_rss_kb=0, pgtables_kb=9000, oom_score_adj=-998, constraint="CONSTRAINT_MEMCG",
    )])


def test_a_bare_pre_5_1_kill_line_alone_says_its_reason_is_unknown():
    # Up to 5.0 the reason is on the "Kill process ... or sacrifice child" line before; without
    # it (lost, or the daemon started between the two) it may as well have been a memcg's limit.
    got = feed_all(OomParser(), kernel_lines([
        "Killed process 77 (mysqld) total-vm:100kB, anon-rss:50kB, file-rss:4kB",
    ]))
    assert_kills(got, [expect(reason=REASON_UNKNOWN, pid=77, comm="mysqld", total_vm_kb=100, anon_rss_kb=50,
                              file_rss_kb=4)])


def test_an_enterprise_kill_line_with_the_uid_before_the_comm():
    got = feed_all(OomParser(), kernel_lines([
        "Out of memory: Kill process 10212 (java) score 121 or sacrifice child",
        "Killed process 10212, UID 0, (java) total-vm:13098572kB, anon-rss:5027928kB, file-rss:208kB",
    ]))
    assert_kills(got, [expect(reason=GLOBAL, pid=10212, comm="java", uid=0, total_vm_kb=13098572,
                              anon_rss_kb=5027928, file_rss_kb=208)])


@pytest.mark.parametrize("line, pid, comm, reason", [
    # A shape no kernel printed yet: sizes renamed.
    ("Out of memory: Killed process 4321 (newshape) vm-total=1kB rss=2kB", 4321, "newshape", GLOBAL),
    # Cut after the comm (a truncated record).
    ("Memory cgroup out of memory: Killed process 99 (cut", 99, "cut", MEMCG),
    ("Killed process 1234 (worker) ", 1234, "worker", REASON_UNKNOWN),
    # No comm at all.
    ("Out of memory: Killed process 555", 555, "", GLOBAL),
    ("Killed process 556, UID 7, (x y) whatever", 556, "x y", REASON_UNKNOWN),
])
def test_an_unknown_kill_line_shape_degrades_to_pid_and_comm_and_warns_once(line, pid, comm, reason, caplog):
    parser = OomParser()
    with caplog.at_level("WARNING", logger="oom_journal.parse.oom_report"):
        (kill,) = [k for k in parser.feed(KernelLine(line, 1000)) if k]
        again = parser.feed(KernelLine(line, 2000))  # the same line read twice (a re-read after a restart)
    assert (kill.pid, kill.comm, kill.reason, kill.kill_message) == (pid, comm, reason, line)
    assert kill.total_vm_kb is None and kill.anon_rss_kb is None
    assert [k.pid for k in again] == [pid]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and repr(line) in warnings[0], warnings


def test_a_group_kill_that_prints_the_chosen_victim_again_is_one_kill():
    lines = kernel_lines([
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/g,task_memcg=/g,"
        "task=a,pid=10,uid=0",
        "Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",
        "Tasks in /g are going to be killed due to memory.oom.group set",
        "Memory cgroup out of memory: Killed process 11 (b) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",
        "Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",
        "Memory cgroup out of memory: Killed process 12 (c) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",
    ])
    parser = OomParser()
    assert [k.pid for _, k in feed_all(parser, lines)] == [10, 11, 12]
    # The kernel counted the repeat as a kill (/proc/vmstat oom_kill): the second witness is told.
    assert parser.repeated == [(lines[4].timestamp_us, 10)]


def test_rhel7_kill_line_with_uid_before_the_sizes():
    # RHEL 7's 3.10: "Killed process %d (%s), UID %u, total-vm:..." (github.com/apache/doris/issues/3525)
    got = feed_all(OomParser(), kernel_lines([
        "Memory cgroup out of memory: Kill process 24984 (palo_be) score 968 or sacrifice child",
        "Killed process 18177 (palo_be), UID 0, total-vm:70347780kB, anon-rss:45563572kB, file-rss:0kB, shmem-rss:0kB",
    ]))
    assert_kills(got, [expect(
        reason=MEMCG, pid=18177, comm="palo_be", uid=0, total_vm_kb=70347780, anon_rss_kb=45563572, file_rss_kb=0,
        shmem_rss_kb=0, constraint="CONSTRAINT_MEMCG",
    )])


def test_two_line_kill_split_by_unrelated_lines():
    report = load_fixture("v3.13-memcg-cadvisor.txt")
    select = next(i for i, m in enumerate(report) if ": Kill process " in m)
    split = report[:select + 1] + UNRELATED + report[select + 1:]
    assert_kills(feed_all(OomParser(), kernel_lines(split)), [KILL_3_13_MEMCG])


def test_a_report_cut_before_its_kill_is_dropped_after_the_timeout():
    cut = [m for m in load_fixture("v4.13-global-lkml.txt") if "Kill" not in m and "oom_reaper" not in m]
    parser = OomParser(burst_timeout_us=1_000_000)
    first = kernel_lines(cut)
    assert feed_all(parser, first) == []
    assert parser.open_bursts() == 1
    assert parser.oldest_open_position() == first[1].position  # line 0 is the taint message

    # A second report starts half a second later: the first is still the oldest.
    later = kernel_lines(load_fixture("v6.18-memcg-captured.txt"), start_us=first[0].timestamp_us + 500_000,
                         first_seq=5000)
    feed_all(parser, later[:10])
    assert parser.open_bursts() == 2
    assert parser.oldest_open_position() == first[1].position

    # Past the timeout the cut report is given up and the position moves on to the second.
    nothing = KernelLine("usb 1-1: USB disconnect, device number 3", first[1].timestamp_us + 1_000_001, seq=6000,
                         position=("kmsg", 6000))
    assert parser.feed(nothing) == []
    assert parser.open_bursts() == 1
    assert parser.oldest_open_position() == later[0].position
    assert parser.dropped_bursts == 1

    # The second report's kill still comes out whole.
    assert_kills(feed_all(parser, later[10:]), [KILL_6_18])
    assert parser.oldest_open_position() is None


def test_oldest_open_position_is_the_first_line_then_none_after_the_kill():
    lines = kernel_lines(load_fixture("v6.18-memcg-captured.txt"))
    parser = OomParser()
    assert parser.oldest_open_position() is None
    for line in lines[:-1]:
        assert parser.feed(line) == []
        assert parser.oldest_open_position() == lines[0].position
    assert len(parser.feed(lines[-1])) == 1
    assert parser.oldest_open_position() is None
    assert parser.open_bursts() == 0


def test_position_of_a_burst_opened_by_its_summary_or_choice():
    # Read mid-report (the daemon started late): the first OOM line seen opens the burst.
    lines = kernel_lines(load_fixture("v5.2-memcg-lkml.txt"))
    parser = OomParser()
    summary_at = next(i for i, l in enumerate(lines) if l.message.startswith("oom-kill:"))
    feed_all(parser, lines[:summary_at + 1])
    assert parser.oldest_open_position() == lines[summary_at].position


def test_too_many_open_bursts_drop_the_oldest():
    parser = OomParser(max_open_bursts=4)
    lines = kernel_lines([f"task{i} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0"
                          for i in range(10)])
    feed_all(parser, lines)
    assert parser.open_bursts() == 4
    assert parser.oldest_open_position() == lines[6].position
    assert parser.dropped_bursts == 6


def test_a_clock_that_jumps_back_drops_open_bursts():
    parser = OomParser(burst_timeout_us=1_000_000)
    parser.feed(KernelLine("a invoked oom-killer: gfp_mask=0x0(), order=0, oom_score_adj=0", 50_000_000, position=1))
    parser.feed(KernelLine("random: crng init done", 1_000, position=2))  # a new boot's clock
    assert parser.open_bursts() == 0


def test_no_killable_processes_closes_the_burst_without_a_kill():
    parser = OomParser()
    got = feed_all(parser, kernel_lines([
        "node invoked oom-killer: gfp_mask=0x6000c0(GFP_KERNEL), nodemask=(null), order=0, oom_score_adj=999",
        "memory: usage 204800kB, limit 204800kB, failcnt 49116",
        "Out of memory and no killable processes...",
    ]))
    assert got == []
    assert parser.open_bursts() == 0
    assert parser.oldest_open_position() is None


def test_victim_already_exiting_closes_the_burst_without_a_kill():
    parser = OomParser()
    got = feed_all(parser, kernel_lines([
        "java invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,"
        "task_memcg=/a,task=java,pid=42,uid=0",
        "Memory cgroup out of memory: OOM victim 42 (java) is already exiting. Skip killing the task",
    ]))
    assert got == []
    assert parser.open_bursts() == 0


def test_oom_reaper_lines_are_not_kills():
    parser = OomParser()
    assert feed_all(parser, kernel_lines([
        "oom_reaper: reaped process 1381 (gunpowder-memho), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
        "oom_reaper: unable to reap pid:1234 (java)",
    ])) == []
    assert parser.open_bursts() == 0


# -- cgroup paths of real summary lines -----------------------------------------------------------

# Real summary lines; the kill line after each is constructed to match its pid and task.
SUMMARIES = [
    pytest.param(
        # kubepods, cgroupfs driver, container id: kmsg records in a public Go test of an OOM watcher
        # (found through the code-search index, which did not expose its repository).
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=9f02d9fa0049eb2655fc83c765f142362b2cb403b57b70ba3185071015ca3b64,mems_allowed=0-1,oom_memcg=/kubepods/burstable/podd11ab7b0-d6db-4a24-a7de-4a2faf1e6980/9f02d9fa0049eb2655fc83c765f142362b2cb403b57b70ba3185071015ca3b64,task_memcg=/kubepods/burstable/podd11ab7b0-d6db-4a24-a7de-4a2faf1e6980/9f02d9fa0049eb2655fc83c765f142362b2cb403b57b70ba3185071015ca3b64,task=prometheus-conf,pid=3401999,uid=0",
        dict(constraint="CONSTRAINT_MEMCG", global_oom=False, cpuset="9f02d9fa0049eb2655fc83c765f142362b2cb403b57b70ba3185071015ca3b64", mems_allowed="0-1",
             oom_memcg="/kubepods/burstable/podd11ab7b0-d6db-4a24-a7de-4a2faf1e6980/9f02d9fa0049eb2655fc83c765f142362b2cb403b57b70ba3185071015ca3b64",
             task_memcg="/kubepods/burstable/podd11ab7b0-d6db-4a24-a7de-4a2faf1e6980/9f02d9fa0049eb2655fc83c765f142362b2cb403b57b70ba3185071015ca3b64"),
        "prometheus-conf", 3401999, 0, id="kubepods-cgroupfs-container",
    ),
    pytest.param(
        # kubepods, systemd driver, docker: same source.
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=docker-2260b35b008a15bd118e629c0c5d74e7f3a1fe18c724fbac61a54862fea196dc.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poddfc377c9_c533_4d51_af9e_6e0e0b3db83b.slice,task_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poddfc377c9_c533_4d51_af9e_6e0e0b3db83b.slice/docker-2260b35b008a15bd118e629c0c5d74e7f3a1fe18c724fbac61a54862fea196dc.scope,task=stress,pid=255629,uid=0",
        dict(constraint="CONSTRAINT_MEMCG", global_oom=False, cpuset="docker-2260b35b008a15bd118e629c0c5d74e7f3a1fe18c724fbac61a54862fea196dc.scope", mems_allowed="0",
             oom_memcg="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poddfc377c9_c533_4d51_af9e_6e0e0b3db83b.slice",
             task_memcg="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poddfc377c9_c533_4d51_af9e_6e0e0b3db83b.slice/docker-2260b35b008a15bd118e629c0c5d74e7f3a1fe18c724fbac61a54862fea196dc.scope"),
        "stress", 255629, 0, id="kubepods-systemd-docker",
    ),
    pytest.param(
        # kubepods under a host prefix (an LXC container): https://github.com/leptonai/gpud/pull/70
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-ec9ee26695deb4cc72bc665efff1cf3a03fdfb12f1303e02fe9252985e084a95.scope,mems_allowed=0-1,oom_memcg=/lxc.payload.ny2g2r5hh3-lxc/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podeded8c65_6e8e_4c6e_a889_3e427565c740.slice,task_memcg=/lxc.payload.ny2g2r5hh3-lxc/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podeded8c65_6e8e_4c6e_a889_3e427565c740.slice/cri-containerd-ec9ee26695deb4cc72bc665efff1cf3a03fdfb12f1303e02fe9252985e084a95.scope,task=pt_main_thread,pid=461754,uid=0",
        dict(constraint="CONSTRAINT_MEMCG", global_oom=False, cpuset="cri-containerd-ec9ee26695deb4cc72bc665efff1cf3a03fdfb12f1303e02fe9252985e084a95.scope", mems_allowed="0-1",
             oom_memcg="/lxc.payload.ny2g2r5hh3-lxc/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podeded8c65_6e8e_4c6e_a889_3e427565c740.slice",
             task_memcg="/lxc.payload.ny2g2r5hh3-lxc/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podeded8c65_6e8e_4c6e_a889_3e427565c740.slice/cri-containerd-ec9ee26695deb4cc72bc665efff1cf3a03fdfb12f1303e02fe9252985e084a95.scope"),
        "pt_main_thread", 461754, 0, id="container-prefix-lxc",
    ),
    pytest.param(
        # kubelet in a rootless podman container: https://github.com/syntara-orchestration/syntara/pull/330
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=user.slice,mems_allowed=0,oom_memcg=/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-11017d9ed95ddc35b24735fce395331554737a0676defb9930e07b0ee6d802e5.scope/container/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod17d1d0b1_bbeb_4252_a45c_c9f426d1cb34.slice,task_memcg=/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-11017d9ed95ddc35b24735fce395331554737a0676defb9930e07b0ee6d802e5.scope/container/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod17d1d0b1_bbeb_4252_a45c_c9f426d1cb34.slice/cri-containerd-799855c3e9e23ea07677c581b96f444dffb0932d7a907973bb08a8391803c559.scope,task=uvicorn,pid=32550,uid=525287",
        dict(constraint="CONSTRAINT_MEMCG", global_oom=False, cpuset="user.slice", mems_allowed="0",
             oom_memcg="/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-11017d9ed95ddc35b24735fce395331554737a0676defb9930e07b0ee6d802e5.scope/container/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod17d1d0b1_bbeb_4252_a45c_c9f426d1cb34.slice",
             task_memcg="/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-11017d9ed95ddc35b24735fce395331554737a0676defb9930e07b0ee6d802e5.scope/container/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod17d1d0b1_bbeb_4252_a45c_c9f426d1cb34.slice/cri-containerd-799855c3e9e23ea07677c581b96f444dffb0932d7a907973bb08a8391803c559.scope"),
        "uvicorn", 32550, 525287, id="container-prefix-podman-kubelet",
    ),
    pytest.param(
        # docker scope under system.slice, global OOM: a public dmesg write-up (code-search index).
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=user.slice,mems_allowed=0,global_oom,task_memcg=/system.slice/docker-97f0fa6b72ce802702bb17ba1f6cb7c5a0edbb18c59e08bf0bdd47ee0bf9195c.scope,task=redis-server,pid=60540,uid=999",
        dict(constraint="CONSTRAINT_NONE", global_oom=True, cpuset="user.slice", mems_allowed="0", oom_memcg=None,
             task_memcg="/system.slice/docker-97f0fa6b72ce802702bb17ba1f6cb7c5a0edbb18c59e08bf0bdd47ee0bf9195c.scope"),
        "redis-server", 60540, 999, id="docker-scope-global",
    ),
    pytest.param(
        # The example of shared/KERNEL-FORMATS.md (6.18).
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomtest,task_memcg=/oomtest,task=python3,pid=2045,uid=0",
        dict(constraint="CONSTRAINT_MEMCG", global_oom=False, cpuset="/", mems_allowed="0", oom_memcg="/oomtest",
             task_memcg="/oomtest"),
        "python3", 2045, 0, id="kernel-formats-example",
    ),
]


@pytest.mark.parametrize("summary, fields, task, pid, uid", SUMMARIES)
def test_summary_cgroup_paths(summary, fields, task, pid, uid):
    reason = GLOBAL if fields["global_oom"] else MEMCG
    kill = (f"{reason}: Killed process {pid} ({task}) total-vm:1000kB, anon-rss:500kB, file-rss:4kB, "
            f"shmem-rss:0kB, UID:{uid} pgtables:64kB oom_score_adj:0")
    got = feed_all(OomParser(), kernel_lines([
        f"{task} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0", summary, kill,
    ]))
    assert len(got) == 1
    k = got[0][1]
    assert {name: getattr(k, name) for name in fields} == fields
    assert (k.pid, k.comm, k.uid) == (pid, task, uid)


def test_summary_without_the_kill_line_uid_gives_the_uid():
    got = feed_all(OomParser(), kernel_lines([
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
        "task_memcg=/user.slice/user-1000.slice/session-1.scope,task=stress-ng,pid=1811,uid=1000",
        "Out of memory: Killed process 1811 (stress-ng) total-vm:43240kB, anon-rss:0kB, file-rss:64kB, shmem-rss:0kB",
    ]))
    assert got[0][1].uid == 1000
    assert got[0][1].task_memcg == "/user.slice/user-1000.slice/session-1.scope"


def test_summary_node_lists_with_commas():
    got = feed_all(OomParser(), kernel_lines([
        "oom-kill:constraint=CONSTRAINT_MEMORY_POLICY,nodemask=0-1,3,cpuset=/,mems_allowed=0-3,5,global_oom,"
        "task_memcg=/,task=a.out,pid=9,uid=0",
        "Out of memory: Killed process 9 (a.out) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",
    ]))
    k = got[0][1]
    assert (k.constraint, k.cpuset, k.mems_allowed, k.global_oom, k.task_memcg) == (
        "CONSTRAINT_MEMORY_POLICY", "/", "0-3,5", True, "/")


# -- hostile comms ----------------------------------------------------------------------------------

HOSTILE_KILLS = [
    # (comm as the process set it, kill line in the 5.4+ shape)
    "a) b (",
    "x) total-vm:1kB",
    "x) total-vm:1kB,",
    "my app (v2)",
    "((",
    "))",
    ") ",
    " ",
    "Killed process ",
    ": Kill process ",
    "), UID 5, total",
    "a) vsz:1kB, anon",
    "\udcff\udcfe\udcc3",  # bytes that are not UTF-8, as surrogate escapes
    "tab\there",
    "\\x41 escaped",
]


@pytest.mark.parametrize("comm", HOSTILE_KILLS)
@pytest.mark.parametrize("shape", ["5.4", "5.1", "bare", "rhel7"])
def test_hostile_comm_in_kill_line(comm, shape):
    if shape == "5.4":
        lines = [f"Out of memory: Killed process 31337 ({comm}) total-vm:75160kB, anon-rss:65152kB, file-rss:6644kB, "
                 f"shmem-rss:0kB, UID:1000 pgtables:188kB oom_score_adj:300"]
    elif shape == "5.1":
        lines = [f"Out of memory: Killed process 31337 ({comm}) total-vm:75160kB, anon-rss:65152kB, file-rss:6644kB, "
                 f"shmem-rss:0kB"]
    elif shape == "bare":
        lines = [f"Out of memory: Kill process 31337 ({comm}) score 900 or sacrifice child",
                 f"Killed process 31337 ({comm}) total-vm:75160kB, anon-rss:65152kB, file-rss:6644kB, shmem-rss:0kB"]
    else:
        lines = [f"Out of memory: Kill process 31337 ({comm}) score 900 or sacrifice child",
                 f"Killed process 31337 ({comm}), UID 1000, total-vm:75160kB, anon-rss:65152kB, file-rss:6644kB, "
                 f"shmem-rss:0kB"]
    got = feed_all(OomParser(), kernel_lines(lines))
    assert len(got) == 1
    k = got[0][1]
    assert (k.pid, k.comm, k.reason) == (31337, comm, GLOBAL)
    assert (k.total_vm_kb, k.anon_rss_kb, k.file_rss_kb, k.shmem_rss_kb) == (75160, 65152, 6644, 0)
    if shape in ("5.4", "rhel7"):
        assert k.uid == 1000
    if shape == "5.4":
        assert (k.pgtables_kb, k.oom_score_adj) == (188, 300)


@pytest.mark.parametrize("comm", ["Web Content", "a) b (", "x (y) z", "(sd-pam)", "runc:[1:CHILD]",
                                  "kworker/u8:2", "\udcff\udcfe", "x invoked", "Killed process ",
                                  ": Kill process ", "oom-kill:"])
def test_hostile_trigger_comm(comm):
    got = feed_all(OomParser(), kernel_lines([
        f"{comm} invoked oom-killer: gfp_mask=0x100cca(GFP_HIGHUSER_MOVABLE), order=3, oom_score_adj=-17",
        f"{comm} cpuset=/ mems_allowed=0",
        f"CPU: 1 PID: 2045 Comm: {comm} Not tainted 4.14.0 #1",
        "Out of memory: Kill process 2045 (a) score 5 or sacrifice child",
        "Killed process 2045 (a) total-vm:4kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB",
    ]))
    k = got[0][1]
    assert (k.trigger_comm, k.trigger_pid, k.trigger_gfp_mask, k.trigger_order, k.trigger_oom_score_adj) == (
        comm, 2045, "0x100cca(GFP_HIGHUSER_MOVABLE)", 3, -17)
    assert (k.cpuset, k.mems_allowed) == ("/", "0")


def test_dump_stack_of_another_task_is_not_the_trigger():
    got = feed_all(OomParser(), kernel_lines([
        "java invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "CPU: 3 PID: 999 Comm: kworker/3:1 Not tainted 6.18.44 #1",  # a WARN elsewhere
        "CPU: 0 UID: 1000 PID: 4242 Comm: java Not tainted 6.18.44 #1 PREEMPT(none) ",
        "Out of memory: Killed process 4242 (java) total-vm:4kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB",
    ]))
    assert got[0][1].trigger_pid == 4242


def test_summary_with_hostile_task_name():
    got = feed_all(OomParser(), kernel_lines([
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/a,"
        "task=x,pid=1,uid=2,pid=77,uid=1000",
        "Out of memory: Killed process 77 (x,pid=1,uid=2) total-vm:4kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB",
    ]))
    k = got[0][1]
    assert (k.pid, k.comm, k.uid, k.task_memcg, k.global_oom) == (77, "x,pid=1,uid=2", 1000, "/a", True)


def test_huge_numbers_are_not_taken():
    huge = "9" * 5000  # int() refuses more than 4300 digits
    got = feed_all(OomParser(), kernel_lines([
        f"a invoked oom-killer: gfp_mask=0x0(), order={huge}, oom_score_adj=0",
        f"memory: usage {huge}kB, limit 1kB, failcnt 0",
        f"Out of memory: Killed process {huge} (a) total-vm:1kB, anon-rss:1kB, file-rss:1kB",
        f"Out of memory: Killed process 5 (a) total-vm:{huge}kB, anon-rss:1kB, file-rss:1kB",
        "Out of memory: Killed process 6 (a) total-vm:18446744073709551615kB, anon-rss:1kB, file-rss:1kB",
    ]))
    # No pid of 5,000 digits; pid 5's kill is certain, its sizes are not.
    assert [k.pid for _, k in got] == [5, 6]
    assert (got[0][1].comm, got[0][1].total_vm_kb, got[0][1].anon_rss_kb) == ("a", None, None)
    assert got[1][1].total_vm_kb == 18446744073709551615


# -- garbage ----------------------------------------------------------------------------------------


def _oom_line_prefixes(rng: random.Random) -> list[str]:
    """Prefixes of every line of every fixture, none of them a complete kill line.

    A kill line counts once it has the kernel's verb and the pid ("Killed process 38"): the
    kernel said it killed that process, so even a line cut right after the pid is a kill (with its
    pid and what else is certain). So the prefixes of kill lines stop before the pid.
    """
    out = []
    for path in sorted(FIXTURES.glob("*.txt")):
        for message in load_fixture(path.name):
            limit = len(message)
            if "Killed process" in message:
                limit = message.index("Killed process ") + len("Killed process ")
            for _ in range(3):
                out.append(message[:rng.randrange(0, max(1, limit))])
    return out


def _unrelated_line(rng: random.Random) -> str:
    n = rng.randrange(1, 10**6)
    return rng.choice([
        f"[UFW BLOCK] IN=eth0 OUT= MAC=00:00 SRC=10.0.0.{n % 255} DST=10.0.0.1 LEN=40 PROTO=TCP SPT={n % 65535} DPT=22",
        f"audit: type=1400 audit({n}.123:{n}): apparmor=\"ALLOWED\" operation=\"open\" pid={n} comm=\"snapd\"",
        f"EXT4-fs (dm-{n % 9}): mounted filesystem with ordered data mode. Quota mode: none.",
        f"sd {n % 9}:0:0:0: [sdb] {n} 512-byte logical blocks: ({n} GB/{n} GiB)",
        f"python3[{n}]: segfault at 0 ip 00007f sp 00007ffd error 6 in libc.so.6",
        f"TCP: request_sock_TCP: Possible SYN flooding on port {n % 65535}. Sending cookies.",
        f"perf: interrupt took too long ({n} > {n // 2}), lowering kernel.perf_event_max_sample_rate to {n}",
        f"CPU: {n % 64} PID: {n} Comm: kworker/{n % 64}:1 Tainted: G        W         6.1.0 #1",
        f"WARNING: CPU: {n % 64} PID: {n} at mm/page_alloc.c:4000 __alloc_pages+0x1/0x2",
        f"systemd[1]: session-{n}.scope: A process of this unit has been killed by the OOM killer.",
        f"Memory cgroup stats for /system.slice/x-{n}.service:",
        "Mem-Info:",
        f"memory+swap: usage {n}kB, limit 9007199254740988kB, failcnt 0",
        f"[{n:>7}]  1000 {n} {n} {n} {n} 0 0 stress",
        "Killed",
        f"kill: process {n} killed",
        "x cpuset=/ mems_allowed=0",
        "Task in /a killed",
    ])


def _random_garbage(rng: random.Random) -> str:
    alphabet = string.printable + "()[]:,=\udcff\udc80\u00e9\u4e2d\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))


def test_100000_unrelated_and_garbage_lines_give_no_kill_and_no_error():
    rng = random.Random(20240601)
    prefixes = _oom_line_prefixes(rng)
    messages = []
    for _i in range(100_000):
        kind = rng.random()
        if kind < 0.6:
            messages.append(_unrelated_line(rng))
        elif kind < 0.8:
            messages.append(_random_garbage(rng))
        else:
            messages.append(rng.choice(prefixes))
    messages += ["", " ", "\n", "\udcff" * 3, "Killed process ", "Killed process x", "oom-kill:", "oom-kill:constraint=", "Tasks in ",
                 "x invoked oom-killer: "]
    parser = OomParser(max_open_bursts=64)
    started = time.perf_counter()
    kills = feed_all(parser, kernel_lines(messages, step_us=1))
    elapsed = time.perf_counter() - started
    assert kills == []
    assert parser.internal_errors == 0
    assert parser.open_bursts() <= 64
    # ~0.3 s measured on the 2-core CI machine; the bound only catches a pathological slowdown.
    assert elapsed < 10, elapsed


def test_nonsense_input_types_never_raise():
    parser = OomParser()
    for line in [KernelLine(None, 0), KernelLine(b"Killed process 1", 0), KernelLine("x", None),  # type: ignore[arg-type]
                 None, "Killed process 1 (a) total-vm:1kB, anon-rss:1kB, file-rss:1kB"]:
        assert parser.feed(line) == []  # type: ignore[arg-type]


def test_memory_limit_reached_line_gives_the_oom_memcg():
    # 4.19-4.20 mem_cgroup_print_oom_context() without a task: "Memory limit reached of cgroup %s".
    got = feed_all(OomParser(), kernel_lines([
        "java invoked oom-killer: gfp_mask=0x6000c0(GFP_KERNEL), nodemask=(null), order=0, oom_score_adj=0",
        "Memory limit reached of cgroup /kubepods/burstable/pod1",
        "memory: usage 1024kB, limit 1024kB, failcnt 3",
        "Memory cgroup out of memory: Kill process 42 (java) score 990 or sacrifice child",
        "Killed process 42 (java) total-vm:4kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB",
    ]))
    k = got[0][1]
    assert (k.oom_memcg, k.task_memcg, k.memcg_usage_kb, k.constraint) == (
        "/kubepods/burstable/pod1", None, 1024, "CONSTRAINT_MEMCG")
