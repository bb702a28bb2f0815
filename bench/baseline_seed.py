#!/usr/bin/env python3
"""The seeds' design, reproduced as the benchmark's baseline: poll /proc, poll the kernel log.

oom-journal's ancestors found an OOM victim's command line like this, and nothing more:

  - every 5 s, read /proc/PID/cmdline of EVERY process into one dict, pid -> cmdline. Entries
    are overwritten by later scans and never dropped, so a victim is known if at least one scan
    ran while it lived: the chance of that is about its age / 5 s;
  - every 10 s, read what /dev/kmsg holds since the last read, take each "Killed process PID
    (COMM)" line and look PID up in that dict.

No exec events, no check that the pid still belongs to the same process (a recycled pid gets the
command line of whoever had it before), no start time, no comm check: exactly the algorithm whose
figures oom-journal is compared with. /dev/kmsg is the kernel's ring buffer (128 KiB on the
project's VM, CONFIG_LOG_BUF_SHIFT=17): what the kernel writes faster than that between two reads
is overwritten, and a read then fails with EPIPE; the records lost are counted from the sequence
numbers, as the seeds could have.

Each kill it finds is written as one JSON line to --out, at the moment the seed would have
reported it:
    {"pid": 2045, "comm": "dd", "kernel_ts_us": 79928453, "seq": 881,
     "cmdline": ["dd", "if=/dev/zero", ...] or null, "reported_mono_ns": 80123456789}
and lost records as {"lost_records": N, "reported_mono_ns": ...}. reported_mono_ns is
CLOCK_MONOTONIC, the clock of journald's __MONOTONIC_TIMESTAMP, so the benchmark compares both
designs on one clock. SIGTERM or SIGINT ends it (no final read: the seed had none).

Usage: baseline_seed.py --out FILE [--scan-interval 5] [--log-interval 10] [--proc /proc] [--kmsg /dev/kmsg]
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
import time

KILL_RE = re.compile(rb"Killed process (\d+) \((.*)\)")


def scan(proc_root: str, cmdlines: dict) -> None:
    """Every process's command line into cmdlines (pid -> argv list); the seeds' full re-read."""
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc_root}/{name}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # gone since the listing
        if raw:
            cmdlines[int(name)] = raw.rstrip(b"\0").split(b"\0")


def read_kmsg(fd: int, state: dict, out, cmdlines: dict) -> None:
    """Everything /dev/kmsg has now; one JSON line per kill found."""
    while True:
        try:
            record = os.read(fd, 16384)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EPIPE:  # overrun: the next read gives the oldest record left
                continue
            raise
        if not record:
            return
        header, _, text = record.partition(b";")
        fields = header.split(b",")
        try:
            seq, ts = int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            continue
        now = time.monotonic_ns()
        expected = state.get("next_seq")
        if expected is not None and seq > expected:
            write(out, {"lost_records": seq - expected, "reported_mono_ns": now})
        state["next_seq"] = seq + 1
        m = KILL_RE.search(text.split(b"\n", 1)[0])
        if not m:
            continue
        pid = int(m.group(1))
        argv = cmdlines.get(pid)
        write(out, {"pid": pid, "comm": m.group(2).decode("utf-8", "backslashreplace"),
                    "kernel_ts_us": ts, "seq": seq,
                    "cmdline": None if argv is None else [a.decode("utf-8", "backslashreplace") for a in argv],
                    "reported_mono_ns": now})


def write(out, record: dict) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON lines, one per kill found")
    ap.add_argument("--scan-interval", type=float, default=5.0)
    ap.add_argument("--log-interval", type=float, default=10.0)
    ap.add_argument("--proc", default="/proc")
    ap.add_argument("--kmsg", default="/dev/kmsg")
    args = ap.parse_args(argv)

    def stop(signum, frame):
        raise SystemExit(0)  # at once, even in the middle of a sleep

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    fd = os.open(args.kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.lseek(fd, 0, os.SEEK_END)  # kills from now on
    cmdlines: dict = {}
    state: dict = {}
    with open(args.out, "a") as out:
        write(out, {"started_mono_ns": time.monotonic_ns(), "pid": os.getpid()})
        next_scan = next_log = time.monotonic()
        next_log += args.log_interval
        while True:
            now = time.monotonic()
            if now >= next_scan:
                scan(args.proc, cmdlines)
                next_scan += args.scan_interval
            if now >= next_log:
                read_kmsg(fd, state, out, cmdlines)
                next_log += args.log_interval
            time.sleep(max(0.0, min(next_scan, next_log) - time.monotonic()))


if __name__ == "__main__":
    sys.exit(main())
