#!/usr/bin/env python3
"""Benchmark of oom_journal.procs.cache on this machine (root, real /proc, real connector).

Prints:
  - the first scan, on the machine as it is and with N extra processes;
  - an incremental scan that finds N new processes (no connector: the scan reads them all),
    and one that finds none;
  - an exec storm (~1,000 execs/s for 5 s, run by a child process): CPU seconds used by the
    cache's thread, events, lost events (ENOBUFS), how many of the storm's processes (each
    living ~5 ms after its exec) the cache can name afterwards, and the exec-to-read delay;
  - RSS of this process, and the cache's entries and bytes.

The N extra processes are `sleep 60`, started here and killed here by their pids.
Usage: python3 bench/proc_cache_bench.py [--procs 2000] [--rate 1000] [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from oom_journal.procs.cache import ProcessCache  # noqa: E402


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def thread_cpu(cache: ProcessCache) -> float:
    """CPU seconds (user + system) of the cache's thread, from its own CPU clock."""
    return time.clock_gettime(time.pthread_getcpuclockid(cache._thread.ident))


class TimedCache(ProcessCache):
    """Records, for each exec event, how long after the exec the thread began reading /proc."""

    delays_ns: list

    def _on_exec(self, ev):
        self.delays_ns.append(time.monotonic_ns() - ev.timestamp_ns)
        super()._on_exec(ev)


STORM = textwrap.dedent("""
    import os, sys, time
    rate, seconds, tag = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    out = open(sys.argv[4], "w")
    t0 = time.monotonic()
    n = 0
    running = []
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        due = int((now - t0) * rate)
        while n < due:
            # argv[0] is unique; /bin/sleep 0.005 lives ~5 ms after its exec.
            pid = os.posix_spawn("/bin/sleep", [f"{tag}-{n}-" + "x" * 150, "0.005"], os.environ)
            running.append(pid)
            out.write(f"{pid} {n}\\n")
            n += 1
        still = []
        for pid in running:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                still.append(pid)
        running = still
        time.sleep(0.0005)
    for pid in running:
        os.waitpid(pid, 0)
    out.close()
    print(n, time.monotonic() - t0)
""")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (reads every process's /proc files, subscribes to the connector)")
        return 2

    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(f"RSS before any cache: {rss_kib()} KiB")
    base = sum(1 for n in os.listdir("/proc") if n.isdigit())

    # 1. First scan, as the machine is.
    cache = ProcessCache(use_connector=False, scan_interval=3600)
    t = time.perf_counter()
    cache.start()
    first = time.perf_counter() - t
    st = cache.stats()
    print(f"first scan, {base} processes: {st['last_scan_seconds'] * 1e3:.1f} ms "
          f"(start() {first * 1e3:.1f} ms), {st['entries']} entries, {st['bytes']} bytes")

    # 2. N extra processes; incremental scan finding them all, then one finding none.
    sleepers = []
    try:
        for _ in range(args.procs):
            sleepers.append(subprocess.Popen(["/bin/sleep", "60"], stdin=subprocess.DEVNULL))
        cache.rescan()
        st = cache.stats()
        print(f"incremental scan, {args.procs} new processes read: "
              f"{st['last_scan_seconds'] * 1e3:.1f} ms, {st['entries']} entries")
        cache.rescan()
        print(f"incremental scan, nothing new: {cache.stats()['last_scan_seconds'] * 1e3:.1f} ms")
        cache.rescan(verify=True)
        print(f"verify scan (after lost events: every stat re-read): "
              f"{cache.stats()['last_scan_seconds'] * 1e3:.1f} ms")
        cache.stop()
        cache2 = ProcessCache(use_connector=False, scan_interval=3600)
        cache2.start()
        print(f"first scan with {args.procs} extra processes: "
              f"{cache2.stats()['last_scan_seconds'] * 1e3:.1f} ms")
        cache2.stop()
        del cache, cache2

        # 3. Exec storm with the connector.
        cache = TimedCache(exit_grace=120.0)
        cache.delays_ns = []
        cache.start()
        st = cache.stats()
        print(f"with connector: first scan {st['last_scan_seconds'] * 1e3:.1f} ms, "
              f"{st['entries']} entries, connector {st['connector']}")
        idle0 = thread_cpu(cache)
        time.sleep(2.0)
        idle = thread_cpu(cache) - idle0
        print(f"idle thread CPU: {idle * 1e3:.2f} ms over 2 s")
        tag = f"storm{os.getpid()}"
        listfile = f"/tmp/proc_cache_bench.{os.getpid()}.pids"
        cpu0 = thread_cpu(cache)
        ev0 = cache.stats()
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", STORM, str(args.rate), str(args.seconds), tag,
                              listfile], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        # Let the thread finish what is queued (a barrier through a lookup), then measure.
        cache.lookup(1, "", wait=5.0)
        cpu = thread_cpu(cache) - cpu0
        st = cache.stats()
        n, storm_secs = out.stdout.split()
        n = int(n)
        with open(listfile) as f:
            spawned = [tuple(map(int, line.split())) for line in f]
        os.unlink(listfile)
        found = exact = 0
        for pid, i in spawned:
            r = cache.lookup(pid, "sleep", wait=0)
            if r.source == "exec-event":
                found += 1
                if r.argv == [f"{tag}-{i}-".encode() + b"x" * 150, b"0.005"]:
                    exact += 1
        events = st["events"] - ev0["events"]
        execs = st["exec_events"] - ev0["exec_events"]
        print(f"exec storm: {n} execs in {float(storm_secs):.2f} s "
              f"({n / float(storm_secs):.0f}/s), wall {wall:.2f} s")
        print(f"  thread CPU: {cpu:.3f} s ({cpu / float(storm_secs) * 100:.1f}% of one CPU), "
              f"{cpu / max(execs, 1) * 1e6:.0f} us per exec event, {events} events "
              f"({execs} exec)")
        print(f"  lost events (ENOBUFS): {st['lost_events'] - ev0['lost_events']}, "
              f"verify scans: {st['verify_scans'] - ev0['verify_scans']}")
        print(f"  storm processes named via exec-event: {found}/{len(spawned)}, "
              f"exact argv {exact}")
        d = [x / 1e3 for x in cache.delays_ns[-execs:]]
        print(f"  exec-to-read delay: p50 {percentile(d, 0.5):.0f} us, "
              f"p99 {percentile(d, 0.99):.0f} us, max {max(d) if d else float('nan'):.0f} us")
        print(f"RSS with the cache holding {st['entries']} entries ({st['exited']} exited), "
              f"{st['bytes']} bytes of argv: {rss_kib()} KiB")
        cache.stop()
    finally:
        for p in sleepers:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
        for p in sleepers:
            p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
