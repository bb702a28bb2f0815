"""After a suspend: a victim's start time (CLOCK_BOOTTIME) against its kill line (CLOCK_MONOTONIC).

/proc/PID/stat's start time counts the time the machine slept, the kernel log's timestamp does
not (see procs.procfs.suspended_us). A fixture /proc (built from this machine's real stat line, as
in test_proc_cache) whose /proc/uptime says the boot is 6,000 s older than CLOCK_MONOTONIC (the
victim lookup's clock parameter) says: the machine slept 6,000 s. A real suspend cannot be had
in a test (no S3 in a VM's test run; it would stop the test too).
"""
from __future__ import annotations

import time

import pytest

from oom_journal.enrich.lookup import find_cmdline
from oom_journal.model import KernelKill
from oom_journal.procs.cache import NOT_FOUND
from oom_journal.procs.procfs import CLOCK_TICKS, read_uptime_us, start_time_us, suspended_us
from test_pid_namespace import KERNEL_CG, gone, proc_in
from test_proc_cache import fixture_cache, make_proc

S = 1_000_000  # µs


def ticks(seconds: float) -> int:
    return round(seconds * CLOCK_TICKS)


def monotonic_at(seconds: float):
    return lambda: int(seconds * 1e9)


@pytest.mark.parametrize("uptime, monotonic_s, expected", [
    (b"10000.00 19000.00\n", 4000, 6000 * S + 10_000),  # slept 6,000 s (+ the 10 ms of rounding)
    (b"4000.00 7000.00\n", 4000, 10_000),  # never slept
    (b"4000.57 7000.00\n", 4000.5, 80_000),
    (b"3999.99 1.00\n", 4000.5, 0),  # never below 0 (the clocks read a moment apart)
    (b"garbage\n", 4000, 0),
    (b"", 4000, 0),
])
def test_suspended_us(tmp_path, uptime, monotonic_s, expected):
    (tmp_path / "uptime").write_bytes(uptime)
    assert suspended_us(str(tmp_path), monotonic_at(monotonic_s)) == expected


def test_suspended_us_without_uptime_is_0(tmp_path):
    assert read_uptime_us(str(tmp_path)) is None
    assert suspended_us(str(tmp_path), monotonic_at(1)) == 0


def test_this_machines_clocks():
    """The real /proc/uptime against the real CLOCK_MONOTONIC: within 10 ms (plus the rounding)
    of CLOCK_BOOTTIME - CLOCK_MONOTONIC, the kernel's own figure."""
    boot_minus_mono = (time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) // 1000
    assert abs(suspended_us() - boot_minus_mono) <= 20_000


def test_start_time_on_the_log_clock():
    assert start_time_us(ticks(9990), 6000 * S) == 3990 * S
    assert start_time_us(ticks(12.5), 0) == 12_500_000


def slept_machine(tmp_path, slept_s=6000.0, initial_pid_namespace=True):
    """A fixture /proc whose uptime says the machine slept slept_s, with the daemon's victim lookup
    on it, its CLOCK_MONOTONIC frozen at now (the real now: the cache stamps exits with the real clock)."""
    now_s = time.monotonic_ns() // 1000 / S
    (tmp_path / "uptime").write_bytes(b"%.2f 12345.67\n" % (now_s + slept_s))
    cache = fixture_cache(tmp_path)

    def find(kill):
        return find_cmdline(kill, cache, exit_grace=30.0, proc_root=str(tmp_path),
                            initial_pid_namespace=initial_pid_namespace, monotonic_ns=monotonic_at(now_s))
    return find, cache, now_s


def kill_of(pid: int, at_s: float) -> KernelKill:
    return KernelKill(reason="Memory cgroup out of memory", pid=pid, comm="python3", timestamp_us=int(at_s * S),
                      task_memcg=KERNEL_CG)


@pytest.mark.parametrize("slept", [6000.0, 0.0])
def test_a_young_victim_keeps_its_command_line_after_a_suspend(tmp_path, slept):
    """The kill 1 s ago (CLOCK_MONOTONIC). The victim started 9 s before it; another process
    (pid 41) 0.5 s after it. On the start times' clock both are `slept` s later."""
    find, cache, now = slept_machine(tmp_path, slept)
    make_proc(tmp_path, 40, b"python3", b"python3\0victim.py\0", start=ticks(now - 10 + slept))
    make_proc(tmp_path, 41, b"python3", b"python3\0later.py\0", start=ticks(now - 0.5 + slept))
    cache.start()
    try:
        found = find(kill_of(40, now - 1))
        assert found.argv == [b"python3", b"victim.py"], found.note
        refused = find(kill_of(41, now - 1))
        assert refused.argv is None and refused.source == NOT_FOUND
        assert "started after the kill" in refused.note
    finally:
        cache.stop()


def test_in_a_pid_namespace_a_young_victim_is_matched_after_a_suspend(tmp_path):
    """The name-and-cgroup match (a container) checks start times too."""
    find, cache, now = slept_machine(tmp_path, initial_pid_namespace=False)
    victim = proc_in(tmp_path, 40, b"python3\0victim.py\0", start=ticks(now - 10 + 6000))
    later = proc_in(tmp_path, 41, b"python3\0later.py\0", start=ticks(now - 0.5 + 6000))
    cache.start()
    try:
        gone(victim)
        gone(later)  # both died: only the start time tells the victim from the later one
        found = find(kill_of(40, now - 1))
        assert found.argv == [b"python3", b"victim.py"], found.note
    finally:
        cache.stop()
