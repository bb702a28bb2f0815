#!/usr/bin/env python3
"""oom-journal's benchmark: how fast, how complete, how cheap, side by side with the seeds'
polling design (bench/baseline_seed.py), on real OOM kills in memory cgroups and a real journald.

Run it with `bash bench/run` (root; it installs what it needs). In one run, with the baseline
running the whole time on the same machine and the same kills:

  1. latency: kill line (kernel timestamp) -> our journal entry (journald's receive time),
     for the journal source and for the kmsg source;
  2. completeness by victim age (~5 ms, ~30 ms, ~300 ms, ~3 s after exec);
  3. cost: idle CPU and RSS with 0, 1,000 and 10,000 extra processes; CPU in an exec storm;
  4. a storm of 200 kills in 10 s, with all four sinks configured: all recorded, all at Kafka.

Writes bench/results.json (every figure) and bench/results.md (the table), and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))  # the stand-ins and the tansu broker

import harness as h  # noqa: E402
import long_boot_bench  # noqa: E402
import report  # noqa: E402

JOURNALD = "/lib/systemd/systemd-journald"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentiles(values: list) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def pct(p):  # nearest rank: the smallest value with at least p of all at or below it
        return v[min(len(v), max(1, math.ceil(p * len(v)))) - 1]

    return {"n": len(v), "p50": pct(0.50), "p99": pct(0.99), "max": v[-1], "mean": statistics.fmean(v)}


def ensure_journald() -> None:
    """journald must run and record kernel messages (it runs without systemd as PID 1 here)."""
    pids = subprocess.run(["pgrep", "-x", "systemd-journal"], capture_output=True, text=True).stdout.split()
    if not (pids and JOURNAL_SOCKET.exists()):
        log("starting systemd-journald")
        subprocess.Popen([JOURNALD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not JOURNAL_SOCKET.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if not JOURNAL_SOCKET.exists():
        raise SystemExit("systemd-journald is not running and did not start")


def machine_info() -> dict:
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(mem_kib / (1 << 20), 1), "python": platform.python_version(),
            "os": _os_release(), "pid_max": pid_max, "processes": sum(1 for p in os.listdir("/proc") if p.isdigit())}


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KafkaReader(threading.Thread):
    """A consumer from offset 0 of partition 0 (assign(): instant, no group join), noting when
    each event arrived (CLOCK_MONOTONIC)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True, name="kafka-reader")
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                  "fetch.message.max.bytes": 4 << 20})
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.arrived: dict = {}  # (pid, kernel µs) -> monotonic ns of its first arrival
        self.messages = 0
        self.errors: list = []
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            msg = self.consumer.poll(0.05)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != -191:  # _PARTITION_EOF
                    self.errors.append(str(msg.error()))
                continue
            now = time.monotonic_ns()
            self.messages += 1
            try:
                doc = json.loads(msg.value())
                self.arrived.setdefault((doc["pid"], doc["kernel_timestamp_us"]), now)
            except (ValueError, KeyError, TypeError):
                pass

    def stop(self) -> None:
        self.stopping = True
        self.join(5)
        self.consumer.close()


class Profiler:
    """py-spy (sampling, --nonblocking: the daemon is never paused) on the daemon during a
    window, its stacks folded into OUT/profiles/<name>.txt with a summary of the busiest lines."""

    def __init__(self, out: Path, enabled: bool):
        self.out = out / "profiles"
        self.exe = None
        if enabled:
            self.exe = shutil.which("py-spy", path=str(BENCH.parent / ".venv" / "bin")) or shutil.which("py-spy")
            if self.exe is None:
                log("installing py-spy into .venv for --profile")
                subprocess.run([str(BENCH.parent / ".venv" / "bin" / "python"), "-m", "pip", "install", "-q",
                                "--disable-pip-version-check", "py-spy"], check=True)
                self.exe = str(BENCH.parent / ".venv" / "bin" / "py-spy")
            self.out.mkdir(parents=True, exist_ok=True)

    def start(self, pid: int, name: str, seconds: float):
        if self.exe is None:
            return None
        raw = self.out / f"{name}.raw"
        proc = subprocess.Popen([self.exe, "record", "-p", str(pid), "-d", str(int(seconds) + 1), "-r", "200",
                                 "--nonblocking", "-f", "raw", "-o", str(raw)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, raw, name

    def finish(self, handle) -> None:
        if handle is None:
            return
        proc, raw, name = handle
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if raw.exists():
            (self.out / f"{name}.txt").write_text(fold_summary(raw.read_text()))


def fold_summary(raw: str, top: int = 25) -> str:
    """The busiest frames of py-spy's folded stacks, by own samples and by samples within."""
    import collections

    own, within, total = collections.Counter(), collections.Counter(), 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            within[f] += n
    out = [f"{total} samples (a thread blocked in poll()/select() counts as its line)", "", "own:"]
    out += [f"{c:6d} {100.0 * c / max(total, 1):5.1f}%  {f}" for f, c in own.most_common(top)]
    out += ["", "within:"]
    out += [f"{c:6d} {100.0 * c / max(total, 1):5.1f}%  {f}" for f, c in within.most_common(top)]
    return "\n".join(out) + "\n"


# --- analysis ------------------------------------------------------------------------------------
def attach_kill_times(victims: list, kills: h.KillLines, wait: float = 5.0) -> None:
    deadline = time.monotonic() + wait
    for v in victims:
        while True:
            v.kill_us = kills.kill_time(v.pid, v.exec_ns / 1000 - 1_000_000)
            if v.kill_us is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)


def wait_entries(daemon: h.DaemonProc, victims: list, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        entries = h.daemon_entries(daemon.pid)
        missing = [v for v in victims if v.kill_us is not None and (v.pid, v.kill_us) not in entries]
        if not missing or time.monotonic() > deadline:
            return entries
        time.sleep(0.3)


def judge(victims: list, entries: dict, baseline: dict, offset_us: float) -> list:
    """One row per killed victim: age, what each design reported, and when."""
    rows = []
    for v in victims:
        if v.kill_us is None or v.returncode != -9:
            continue
        kill_mono_us = v.kill_us + offset_us
        row = {"bucket": v.bucket, "phase": v.phase, "pid": v.pid,
               "age_ms": (kill_mono_us - v.exec_ns / 1000) / 1000}
        e = entries.get((v.pid, v.kill_us))
        if e is None:
            row["ours"] = "missing"
        else:
            argv = h.entry_argv(e)
            row["ours"] = "full" if argv == v.argv else ("wrong" if argv else "none")
            row["ours_source"] = e.get("OOM_CMDLINE_SOURCE")
            row["ours_ms"] = (int(e["__MONOTONIC_TIMESTAMP"]) - kill_mono_us) / 1000
        b = baseline["kills"].get((v.pid, v.kill_us))
        if b is None:
            row["base"] = "missing"
        else:
            row["base"] = "full" if b["cmdline"] == v.argv else ("wrong" if b["cmdline"] else "none")
            row["base_ms"] = (b["reported_mono_ns"] / 1000 - kill_mono_us) / 1000
        rows.append(row)
    return rows


def share(rows: list, key: str) -> dict:
    out = {"n": len(rows)}
    for kind in ("full", "wrong", "none", "missing"):
        out[kind] = sum(1 for r in rows if r.get(key) == kind)
    return out


# --- the run -------------------------------------------------------------------------------------
def cache_share(o: dict, n_exec: int) -> dict:
    """The process cache's own cost in a storm (issue #18's target: the cache, <= 50 us per
    fork+exec+exit, <= 5 % of a core): the daemon's CPU time less its main thread's (journal
    only, the daemon has these two threads; the main thread's share is the kills' handling)."""
    cache_s = max(o["cpu_s"] - o["main_thread_percent"] * o["seconds"] / 100, 0.0)
    return {"cache_us_per_exec": round(cache_s * 1e6 / max(n_exec, 1), 1),
            "cache_percent": round(100.0 * cache_s / o["seconds"], 2)}


def run(args) -> dict:
    quick = args.quick
    rng = random.Random(args.seed)
    profiler = Profiler(Path(args.out), args.profile)
    results: dict = {"profiled": args.profile, "work_dir": None, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": machine_info(), "quick": quick, "version": _version()}
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="oomj-bench-"))
    results["work_dir"] = str(work)
    log(f"work directory {work} (the daemons' logs, the baseline's output; removed after a run that "
        "completes, unless --keep)")
    state = work / "state"
    with contextlib.ExitStack() as cleanup:
        offset, how = h.clock_offset_us()
        results["clock_offset_us"], results["clock_offset_how"] = offset, how
        log(f"CLOCK_MONOTONIC - kmsg clock: {offset:.0f} µs ({how})")
        kills = h.KillLines()
        kills.start()
        pool = h.CgroupPool(16)
        cleanup.callback(pool.remove)
        sleepers = h.Sleepers()
        cleanup.callback(sleepers.kill_all)
        base_out = work / "baseline.jsonl"
        baseline = subprocess.Popen([sys.executable, str(BENCH / "baseline_seed.py"), "--out", str(base_out)],
                                    stdin=subprocess.DEVNULL)
        cleanup.callback(_stop_proc, baseline)
        all_rows: list = []
        last_kill = [time.monotonic()]

        def phase_kills(daemon, plan, phase, slot):
            victims = h.run_victims(pool, plan, phase, slot, rng)
            last_kill[0] = time.monotonic()
            attach_kill_times(victims, kills)
            entries = wait_entries(daemon, victims)
            return victims, entries

        # 0. Kills while the daemon reads this boot's kernel log at its first start (an empty state
        #    directory): its main thread is busy for as long as that takes, and the process cache's
        #    thread needs the interpreter's lock for every exec it reads.
        log("phase 0: victims killed while oom-journal reads this boot's kernel log at its start")
        d0 = h.DaemonProc(work, "startup", ["--source", "journal"], work / "state-startup").start()
        cleanup.callback(d0.stop)
        t_ready = time.monotonic()
        n0 = 30 if not quick else 10
        victims_0 = h.run_victims(pool, [("5ms", 0.005, n0 // 2), ("30ms", 0.030, n0 - n0 // 2)], "startup", 0.03, rng)
        killed_in = time.monotonic() - t_ready
        catch_up = killed_in + d0.wait_idle()
        attach_kill_times(victims_0, kills)
        entries_0 = wait_entries(d0, victims_0)
        d0.stop()
        results["startup_kills"] = {"ready_s": round(d0.ready_s, 3), "killed_in_s": round(killed_in, 2),
                                    "catch_up_s": round(catch_up, 2)}
        log(f"  {len(victims_0)} victims killed in the first {killed_in:.1f} s; the boot's kernel log was read "
            f"after {catch_up:.1f} s")

        # 1. The journal source, journal only: latency, completeness, then cost.
        log("phase 1: oom-journal --source journal (no sinks)")
        dj = h.DaemonProc(work, "journal", ["--source", "journal"], state).start()
        cleanup.callback(dj.stop)
        results["startup"] = {"ready_s": round(dj.ready_s, 3), "catch_up_s": round(dj.wait_idle(), 2)}
        log(f"  ready in {dj.ready_s:.2f} s; this boot's kernel log read in {results['startup']['catch_up_s']} s")
        plan = h.AGES if not quick else [(b, a, max(2, n // 5)) for b, a, n in h.AGES]
        victims_j, entries_j = phase_kills(dj, plan, "journal", 0.1)
        log(f"  {len(victims_j)} victims killed")

        log("phase 1b: cost, idle")
        window = 9.0 if quick else 30.0
        settle = 11.0 if not quick else 5.0
        cost: dict = {"window_s": window}
        procs = {"ours": dj.pid, "base": baseline.pid}
        procs_window = lambda: h.CpuWindow(procs, kills).start()  # noqa: E731
        extra_counts = [0, 1000, args.procs] if not quick else [0, 1000]
        why_not = h.resource_headroom(args.procs)
        if why_not:
            log(f"  cannot start {args.procs} extra processes ({why_not}); measuring with 1,000 at most")
            extra_counts = [0, 1000]
        cost["extra"] = {}
        for extra in extra_counts:
            added = extra - len(sleepers.pids)
            if added > 0:
                spawn_s = sleepers.add(added)
                log(f"  {extra} extra processes (started {added} in {spawn_s:.1f} s)")
                dj.wait_idle(quiet=0.5, timeout=60)
                time.sleep(settle)  # a scan of each design has seen them
            prof = profiler.start(dj.pid, f"idle-{extra}", window)
            # The whole window, and its three thirds: other people's work on the machine (forks,
            # kernel messages) wakes both designs and comes in bursts; the thirds show the spread.
            whole, subs = procs_window(), []
            for _ in range(3):
                w = procs_window()
                time.sleep(window / 3)
                subs.append(w.stop())
            cpu = whole.stop()
            cpu["windows"] = subs
            profiler.finish(prof)
            cost["extra"][str(extra)] = {"cpu": cpu, "mem": {k: h.memory_kib(p) for k, p in procs.items()}}
            log(f"  idle with {extra}: ours {cpu['ours']['percent']:.3f} %, baseline {cpu['base']['percent']:.3f} %")
        sleepers.kill_all()
        dj.wait_idle(quiet=0.5, timeout=30)

        # The daemon's own CPU time (utime + stime, whole process and main thread: the rest is the
        # process cache's thread) per exec, over 3 storms (1 in --quick), reported with their spread:
        # the machine is shared, and CPU time per exec is disturbed by other load far less than a
        # wall-clock share. Victims in each: ~5 ms and ~50 ms after their exec (issue #18: 10/10 of
        # the ~50 ms ones keep their command line).
        storm_s = 10.0 if not quick else 5.0
        rounds = 3 if not quick else 1
        per_round = 4 if not quick else 2  # of each age: 12 + 12 victims in all
        log(f"phase 1c: exec storm, ~1,000 execs/s, {rounds} x {storm_s:.0f} s, with kills in it")
        log_before = len(dj.log_text())
        victims_storm, victims_storm50, storms = [], [], []
        for rnd in range(rounds):
            prof = profiler.start(dj.pid, f"exec-storm-{rnd + 1}", storm_s) if rnd == 0 else None
            storm = h.start_exec_storm(1000.0, storm_s)
            cleanup.callback(_stop_proc, storm)
            w = procs_window()
            time.sleep(0.5)
            killed = h.run_victims(pool, [("5ms", 0.005, per_round), ("50ms", 0.05, per_round)], "exec-storm",
                                   (storm_s - 1.5) / (2 * per_round), rng)
            out, _ = storm.communicate(timeout=60)
            cpu = w.stop()
            if prof is not None:
                profiler.finish(prof)
            victims_storm += [v for v in killed if v.bucket == "5ms"]
            victims_storm50 += [v for v in killed if v.bucket == "50ms"]
            n_exec, secs = out.split()
            o = cpu["ours"]
            storms.append({"execs": int(n_exec), "seconds": round(float(secs), 2), "rate": round(int(n_exec) / float(secs)),
                           "cpu": cpu, "us_per_exec": round(o["cpu_s"] * 1e6 / max(int(n_exec), 1), 1),
                           "main_us_per_exec": round(o["main_thread_percent"] * o["seconds"] / 100 * 1e6
                                                     / max(int(n_exec), 1), 1),
                           **cache_share(o, int(n_exec))})
            log(f"  storm {rnd + 1}: {n_exec} execs in {float(secs):.1f} s: ours {o['percent']:.2f} % "
                f"({storms[-1]['us_per_exec']:.0f} us per exec), baseline {cpu['base']['percent']:.2f} %")
        # One more storm whose processes live ~50 ms: each is still running when the cache reads its
        # exec (the storm above's 5 ms ones are often gone by then, and a read of a gone process is
        # cheaper), the cost per exec a build server's longer-lived compilers see.
        storm = h.start_exec_storm(1000.0, storm_s, life=0.05)
        cleanup.callback(_stop_proc, storm)
        w = procs_window()
        out, _ = storm.communicate(timeout=60)
        cpu = w.stop()
        n_exec, secs = out.split()
        o = cpu["ours"]
        long_lived = {"execs": int(n_exec), "seconds": round(float(secs), 2), "rate": round(int(n_exec) / float(secs)),
                      "life_s": 0.05, "cpu": cpu, "us_per_exec": round(o["cpu_s"] * 1e6 / max(int(n_exec), 1), 1),
                      **cache_share(o, int(n_exec))}
        log(f"  storm of ~50 ms processes: {n_exec} execs in {float(secs):.1f} s: ours {o['percent']:.2f} % "
            f"({long_lived['us_per_exec']:.0f} us per exec)")
        last_kill[0] = time.monotonic()
        attach_kill_times(victims_storm + victims_storm50, kills)
        wait_entries(dj, victims_storm + victims_storm50)
        storm_log = dj.log_text()[log_before:]
        cost["exec_storm"] = dict(storms[0], rounds=storms, lost_reports=storm_log.count("events lost"),
                                  long_lived=long_lived,
                                  ours_threads_note="utime+stime of the whole process over each storm")
        entries_j.update(h.daemon_entries(dj.pid))
        cost["rss_journal_end"] = h.memory_kib(dj.pid)
        results["cost"] = cost
        dj.stop()

        # 2. The kmsg source.
        log("phase 2: oom-journal --source kmsg (no sinks)")
        dk = h.DaemonProc(work, "kmsg", ["--source", "kmsg"], state).start()
        cleanup.callback(dk.stop)
        dk.wait_idle()
        victims_k, entries_k = phase_kills(dk, plan, "kmsg", 0.1)
        log(f"  {len(victims_k)} victims killed")
        results["rss_kmsg_end"] = h.memory_kib(dk.pid)
        dk.stop()

        # 3. All four sinks, a storm of 200 kills in 10 s.
        log("phase 3: all sinks (Kafka at tansu, Elasticsearch and Slack stand-ins, syslog UDP); a storm of kills")
        from es_standin import StandinElasticsearch
        from kafka_broker import TansuBroker
        from slack_standin import SlackStandin

        broker = TansuBroker(work).start()
        cleanup.callback(broker.stop)
        topic = "oom-bench"
        broker.create_topic(topic)
        es = StandinElasticsearch().start()
        cleanup.callback(es.stop)
        slack = SlackStandin().start()
        cleanup.callback(slack.stop)
        reader = KafkaReader(broker.bootstrap, topic)
        reader.start()
        cleanup.callback(reader.stop)
        sink_args = ["--source", "journal", "--kafka-brokers", broker.bootstrap, "--kafka-topic", topic,
                     "--elasticsearch-server", es.url, "--slack-webhook", slack.url,
                     "--syslog-server", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--syslog-proto", "udp"]
        ds = h.DaemonProc(work, "sinks", sink_args, state).start()
        cleanup.callback(ds.stop)
        ds.wait_idle()
        storm_n = 200 if not quick else 40
        rss_sinks_idle = h.memory_kib(ds.pid)
        prof = profiler.start(ds.pid, "kill-storm", 12)
        t_storm = time.monotonic()
        victims_s, entries_s = phase_kills(ds, [("5ms", 0.005, storm_n)], "kill-storm", 10.0 / storm_n)
        storm_wall = time.monotonic() - t_storm
        profiler.finish(prof)
        deadline = time.monotonic() + 60
        want = {(v.pid, v.kill_us) for v in victims_s if v.kill_us is not None}
        while not want <= set(reader.arrived) and time.monotonic() < deadline:
            time.sleep(0.1)
        last_kill_us = max((v.kill_us for v in victims_s if v.kill_us), default=None)
        arrivals = [reader.arrived[k] for k in want if k in reader.arrived]
        kafka_lat = [(reader.arrived[k] / 1000 - (k[1] + offset)) / 1000 for k in want if k in reader.arrived]
        results["kill_storm"] = {
            "kills": len(want), "wall_s": round(storm_wall, 2),
            "kafka_delivered": len(arrivals), "kafka_messages": reader.messages, "kafka_errors": reader.errors[:5],
            "kafka_last_after_last_kill_ms": (None if not arrivals or last_kill_us is None else
                                              round((max(arrivals) / 1000 - (last_kill_us + offset)) / 1000, 1)),
            "kafka_latency_ms": percentiles(kafka_lat),
            "rss_sinks_idle": rss_sinks_idle, "rss_sinks_after": h.memory_kib(ds.pid),
        }
        log(f"  Kafka: {len(arrivals)}/{len(want)}, last {results['kill_storm']['kafka_last_after_last_kill_ms']} ms "
            "after the last kill line")
        ds.stop()

        # The baseline reads the kernel log every 10 s: give it one more read after the last kill.
        wait = 10.5 - (time.monotonic() - last_kill[0])
        if wait > 0:
            log(f"waiting {wait:.0f} s for the baseline's next read of the kernel log")
            time.sleep(wait)
        results["rss_baseline_end"] = h.memory_kib(baseline.pid)
        _stop_proc(baseline)
        base = h.read_baseline(base_out)
        results["baseline_lost_records"] = base["lost_records"]
        results["kmsg_overruns_seen_by_bench"] = kills.overruns

        rows_j = judge(victims_j, entries_j, base, offset)
        rows_k = judge(victims_k, entries_k, base, offset)
        rows_storm = judge(victims_storm, entries_j, base, offset)
        rows_storm50 = judge(victims_storm50, entries_j, base, offset)
        rows_s = judge(victims_s, entries_s, base, offset)
        rows_0 = judge(victims_0, entries_0, base, offset)
        results["startup_kills"].update({"ours": share(rows_0, "ours"), "base": share(rows_0, "base"),
                                         "age_ms": percentiles([r["age_ms"] for r in rows_0])})
        all_rows = rows_j + rows_k + rows_storm + rows_storm50 + rows_s + rows_0
        results["rows"] = all_rows
        results["latency"] = {
            src: {"ours": percentiles([r["ours_ms"] for r in rows if "ours_ms" in r]),
                  "base": percentiles([r["base_ms"] for r in rows if "base_ms" in r])}
            for src, rows in (("journal", rows_j), ("kmsg", rows_k))}
        results["completeness"] = {}
        for bucket, _age, _ in h.AGES:
            rows = [r for r in rows_j + rows_k if r["bucket"] == bucket]
            results["completeness"][bucket] = {
                "age_ms": percentiles([r["age_ms"] for r in rows]),
                "ours": share(rows, "ours"), "base": share(rows, "base"),
                "ours_by_source": {s: share([r for r in rows if r["phase"] == s], "ours") for s in ("journal", "kmsg")}}
        results["exec_storm_kills"] = {"ours": share(rows_storm, "ours"), "base": share(rows_storm, "base")}
        results["exec_storm_kills_50ms"] = {"ours": share(rows_storm50, "ours"), "base": share(rows_storm50, "base")}
        results["kill_storm"].update({"ours": share(rows_s, "ours"), "base": share(rows_s, "base"),
                                      "ours_latency_ms": percentiles([r["ours_ms"] for r in rows_s if "ours_ms" in r]),
                                      "base_latency_ms": percentiles([r["base_ms"] for r in rows_s if "base_ms" in r])})
        # 4. A first start on a long boot: a million kernel lines in a private journal (never this
        # machine's kernel log: every later first start in this boot would read them all).
        lines = 1_000_000 if not quick else 100_000
        log(f"phase 4: a first start on a generated boot of {lines:,} kernel lines (bench/long_boot_bench.py)")
        lb_dir = work / "long-boot"
        lb_dir.mkdir()
        results["long_boot"] = long_boot_bench.run(lines, 10, 5, lb_dir)
        results["duration_s"] = round(time.monotonic() - t_start)
    return results


def _stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(BENCH.parent), "status", "--porcelain", "--", "oom_journal"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="oom-journal's benchmark against the seeds' polling design")
    ap.add_argument("--procs", type=int, default=10000, help="extra idle processes for the largest cost point")
    ap.add_argument("--quick", action="store_true", help="fewer kills, shorter windows: a smoke run, not figures")
    ap.add_argument("--seed", type=int, default=1, help="order of the victims' ages")
    ap.add_argument("--out", default=str(BENCH), help="where results.json and results.md go")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (daemon logs, baseline output)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy on the daemon in the idle windows and the storms (OUT/profiles/); CPU figures of such a run "
                         "include the sampling")
    ap.add_argument("--update-readme", action="store_true", help="put the table into README.md's Performance section")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root: OOM kills in memory cgroups, /dev/kmsg, the process-event connector",
              file=sys.stderr)
        return 2
    ensure_journald()
    results = run(args)
    if not args.keep:
        shutil.rmtree(results.pop("work_dir"), ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = report.render(results)
    (out / "results.md").write_text(md)
    print(md)
    if args.update_readme:
        report.update_readme(BENCH.parent / "README.md", report.readme_section(results))
        log("README.md: Performance section updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
