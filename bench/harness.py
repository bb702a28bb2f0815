"""What the benchmark runs on: memory cgroups and OOM victims, idle processes and exec storms,
the daemon as a user runs it, the kernel's kill lines, and CPU / RSS read from /proc.

Safety, as the tests (tests/conftest.py): OOM kills happen only inside memory cgroups created
here (a small limit each, and a limit on their common parent), which are emptied and removed
at the end; every process started here is killed by its pid, never by name; idle processes and
exec storms are bounded in count and in time (they end by themselves).
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
MESSAGE_ID = "5ce425e9fe7448d7b3e56b5a76b5911a"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# A victim that lives `delay` seconds after its exec, then allocates `mib` MiB: its cgroup's
# limit (8 MiB) is reached a few ms later. The size comes from argv: perl folds a constant
# `'x' x (64 << 20)` at compile time, before the sleep (seen here: killed after 20 ms, not 300).
PERL_VICTIM = "select(undef, undef, undef, $ARGV[0]); my $x = 'x' x ($ARGV[1] << 20);"
# dd's 64 MiB buffer, filled from /dev/zero, crosses an 8 MiB limit within ~5 ms of its exec
# (measured here: median 4.8 ms; 12-17 ms with a 32 MiB limit). seek=N on /dev/null changes
# nothing but makes each victim's argv its own: a stale command line of an earlier dd that had
# the same pid is then told from the victim's.
DD_VICTIM = ["/usr/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]


# --- /proc -----------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (its threads included, dead ones too), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def main_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of the process's main thread alone (its task whose id is the pid)."""
    with open(f"/proc/{pid}/task/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def forks_since_boot() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    return 0


class CpuWindow:
    """CPU used by some processes between start() and stop(), as % of one core; and what else
    happened on the machine meanwhile (other work wakes both designs: forks, kernel messages)."""

    def __init__(self, pids: dict, kills: Optional["KillLines"] = None):
        self.pids = pids  # name -> pid
        self.kills = kills
        self.t0 = 0.0
        self.c0: dict = {}
        self.forks0 = self.records0 = 0

    def start(self) -> "CpuWindow":
        self.t0 = time.monotonic()
        self.c0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.m0 = {name: main_thread_cpu_seconds(pid) for name, pid in self.pids.items()}
        self.forks0 = forks_since_boot()
        self.records0 = self.kills.records if self.kills else 0
        return self

    def stop(self) -> dict:
        elapsed = time.monotonic() - self.t0
        used = {name: cpu_seconds(pid) - self.c0[name] for name, pid in self.pids.items()}
        main = {name: main_thread_cpu_seconds(pid) - self.m0[name] for name, pid in self.pids.items()}
        out = {name: {"cpu_s": round(s, 3), "seconds": round(elapsed, 2),
                      "percent": round(100.0 * s / elapsed, 3),
                      "main_thread_percent": round(100.0 * main[name] / elapsed, 3)} for name, s in used.items()}
        out["background"] = {"forks_per_s": round((forks_since_boot() - self.forks0) / elapsed, 1),
                             "kernel_records_per_s": (round((self.kills.records - self.records0) / elapsed, 1)
                                                      if self.kills else None)}
        return out


def kmsg_clock_offset_us(samples: int = 3) -> float:
    """CLOCK_MONOTONIC minus the kernel log's clock, in µs.

    /dev/kmsg stamps records with local_clock() (sched_clock), journald its entries with
    CLOCK_MONOTONIC; on this VM they differ by ~0.5 ms (measured), which matters against a 10 ms
    target. A record written here is stamped between two CLOCK_MONOTONIC reads: the sample with
    the narrowest pair wins. Few samples: /dev/kmsg writes are rate-limited (printk_devkmsg,
    10 per 5 s); they are kern.debug-level user records that oom-journal ignores.
    """
    fd = os.open("/dev/kmsg", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    best = None
    try:
        os.lseek(fd, 0, os.SEEK_END)
        for _ in range(samples):
            tag = f"oom-journal-bench: clock check {uuid.uuid4().hex[:8]}".encode()
            t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            os.write(fd, b"<15>" + tag + b"\n")  # the newline finalizes the record: readable at once
            t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    record = os.read(fd, 16384)
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                except OSError as e:
                    if e.errno == errno.EPIPE:
                        continue
                    raise
                if tag in record:
                    ts_us = int(record.split(b",")[2])
                    width = t1 - t0
                    offset = ((t0 + t1) / 2) / 1000 - ts_us
                    if best is None or width < best[0]:
                        best = (width, offset)
                    break
    finally:
        os.close(fd)
    return None if best is None else best[1]


def clock_offset_us() -> tuple:
    """(offset µs, how it was found): kmsg_clock_offset_us(), tried three times."""
    for attempt in range(3):
        offset = kmsg_clock_offset_us()
        if offset is not None:
            return offset, f"measured (attempt {attempt + 1})"
        time.sleep(1.0)
    return 0.0, "not measured: none of the records written to /dev/kmsg came back"


# --- the kernel's kill lines -----------------------------------------------------------------------
class KillLines(threading.Thread):
    """Reads /dev/kmsg from now on, in its own thread, and keeps each "Killed process PID (COMM)"
    line's kernel timestamp: the kill time the benchmark measures everything from."""

    KILL_RE = re.compile(rb"Killed process (\d+) \(")

    def __init__(self):
        super().__init__(daemon=True, name="kill-lines")
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.kills: dict = {}  # pid -> [kernel timestamp µs, ...]
        self.overruns = 0
        self.records = 0  # every record, kills or not
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                record = os.read(self.fd, 16384)
            except OSError as e:
                if e.errno == errno.EPIPE:
                    self.overruns += 1
                    continue
                return  # closed
            self.records += 1
            m = self.KILL_RE.search(record.split(b";", 1)[-1])
            if m:
                ts = int(record.split(b",")[2])
                with self.lock:
                    self.kills.setdefault(int(m.group(1)), []).append(ts)

    def kill_time(self, pid: int, not_before_us: float) -> Optional[int]:
        with self.lock:
            times = [t for t in self.kills.get(pid, ()) if t >= not_before_us]
        return min(times) if times else None


# --- memory cgroups and victims --------------------------------------------------------------------
class CgroupPool:
    """Memory cgroups of our own, /sys/fs/cgroup/memory/oomj-bench-<id>/v<N>, `limit_mib` each;
    one victim at a time in each. Their parent is limited to all of them together."""

    def __init__(self, size: int, limit_mib: int = 8):
        if not (MEMCG_ROOT / "memory.limit_in_bytes").exists():
            raise RuntimeError(f"no cgroup v1 memory controller at {MEMCG_ROOT}")
        self.parent = MEMCG_ROOT / f"oomj-bench-{uuid.uuid4().hex[:10]}"
        self.parent.mkdir()
        self.children: list = []
        try:
            (self.parent / "memory.limit_in_bytes").write_text(str((size * limit_mib + 16) << 20))
            for i in range(size):
                child = self.parent / f"v{i}"
                child.mkdir()
                (child / "memory.limit_in_bytes").write_text(str(limit_mib << 20))
                self.children.append(child)
        except BaseException:
            self.remove()
            raise
        self.free = list(self.children)

    def acquire(self) -> Optional[Path]:
        return self.free.pop() if self.free else None

    def release(self, cg: Path) -> None:
        self.free.append(cg)

    def remove(self) -> None:
        """Kills what is left in our cgroups (only our victims can be there) and removes them."""
        for cg in self.children + [self.parent]:
            for _ in range(100):
                try:
                    pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
                except FileNotFoundError:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


@dataclass
class Victim:
    bucket: str  # "5ms", "30ms", "300ms", "3s"
    phase: str
    argv: list
    cgroup: Path
    pid: int = 0
    exec_ns: int = 0  # CLOCK_MONOTONIC when Popen returned: it returns once the exec succeeded
    returncode: Optional[int] = None
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)
    kill_us: Optional[int] = None  # kernel timestamp of the kill line (kmsg clock)


_serial = iter(range(1, 1 << 62))


def victim_argv(bucket: str, delay: float, token: str) -> list:
    if bucket == "5ms":
        return DD_VICTIM + [f"seek={os.getpid()}{next(_serial):06d}"]
    return ["/usr/bin/perl", "-e", PERL_VICTIM, f"{delay:.3f}", "64", f"--bench-token={token}",
            f"--victim-age={bucket}", "--padding=" + "p" * 160]


def spawn_victim(v: Victim) -> None:
    procs = str(v.cgroup / "cgroup.procs")

    def enter():  # in the child, before exec: the victim lives its whole life in the cgroup
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    v.proc = subprocess.Popen(v.argv, preexec_fn=enter, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    v.exec_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    v.pid = v.proc.pid


# Victims per age: (bucket, target age in seconds, how many per phase). The perl victims sleep
# the target age less ~5 ms (perl's start and the allocation up to the limit, measured).
AGES = (("5ms", 0.005, 50), ("30ms", 0.030, 20), ("300ms", 0.300, 20), ("3s", 3.0, 10))
PERL_OVERHEAD = 0.005


def run_victims(pool: CgroupPool, plan: list, phase: str, slot: float, rng) -> list:
    """Runs victims so that their kills come `slot` seconds apart, in random order of ages.

    plan: [(bucket, target age s, count)]. Each victim is launched at its kill slot minus its
    target age, in a cgroup of its own; returns the victims once all are dead.
    """
    items = [(bucket, age) for bucket, age, n in plan for _ in range(n)]
    rng.shuffle(items)
    lead = max(age for _, age in items)
    t0 = time.monotonic() + 0.2
    schedule = sorted(((t0 + lead + i * slot - age, bucket, age) for i, (bucket, age) in enumerate(items)),
                      key=lambda x: x[0])
    victims, running = [], []
    token = uuid.uuid4().hex[:12]
    while schedule or running:
        for v in list(running):
            rc = v.proc.poll()
            if rc is not None:
                v.returncode = rc
                running.remove(v)
                pool.release(v.cgroup)
        now = time.monotonic()
        while schedule and schedule[0][0] <= now:
            cg = pool.acquire()
            if cg is None:
                break  # wait for a cgroup to be free
            _, bucket, age = schedule.pop(0)
            delay = max(0.0, age - PERL_OVERHEAD)
            v = Victim(bucket, phase, victim_argv(bucket, delay, f"{token}-{len(victims)}"), cg)
            spawn_victim(v)
            victims.append(v)
            running.append(v)
        for v in running:
            if time.monotonic() - v.exec_ns / 1e9 > 30:  # never: a victim not killed in 30 s
                v.proc.kill()
        time.sleep(0.002)
    return victims


# --- idle processes and exec storms ----------------------------------------------------------------
class Sleepers:
    """Idle processes (`sleep`), started here, killed here by their pids; each ends by itself
    after `lifetime` seconds anyway."""

    def __init__(self, lifetime: int = 900):
        self.lifetime = lifetime
        self.pids: list = []

    def add(self, count: int) -> float:
        t = time.monotonic()
        for _ in range(count):
            self.pids.append(os.posix_spawn("/bin/sleep", ["sleep", str(self.lifetime)], os.environ))
        return time.monotonic() - t

    def kill_all(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids = []


def resource_headroom(extra: int) -> Optional[str]:
    """None when `extra` more processes fit on this machine, else why not."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    tasks = sum(len(os.listdir(f"/proc/{p}/task")) for p in os.listdir("/proc") if p.isdigit()
                and os.path.isdir(f"/proc/{p}/task"))
    if tasks + extra + 5000 > pid_max:
        return f"pid_max {pid_max}, {tasks} tasks running"
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and os.geteuid() != 0 and soft < tasks + extra:
        return f"ulimit -u is {soft}"
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    need = extra * 512 + (2 << 20)  # KiB: ~0.5 MiB per sleep (measured ~0.2), and 2 GiB to spare
    if avail < need:
        return f"MemAvailable {avail // 1024} MiB, need {need // 1024} MiB"
    return None


STORM = r"""
import os, sys, time
rate, seconds, tag, life = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
t0 = time.monotonic()
n = 0
running = []
while True:
    now = time.monotonic()
    if now - t0 >= seconds:
        break
    due = int((now - t0) * rate)
    while n < due:
        # a unique argv; /bin/sleep LIFE lives ~LIFE s after its exec
        running.append(os.posix_spawn("/bin/sleep", [f"{tag}-{n}-" + "x" * 100, life], os.environ))
        n += 1
    still = []
    for pid in running:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            still.append(pid)
    running = still
    time.sleep(0.0005)
for pid in running:
    os.waitpid(pid, 0)
print(n, time.monotonic() - t0)
"""


def start_exec_storm(rate: float, seconds: float, life: float = 0.005) -> subprocess.Popen:
    """A child that execs `rate` processes a second for `seconds` (then ends), each living `life` s."""
    return subprocess.Popen([sys.executable, "-c", STORM, str(rate), str(seconds), f"bench-storm-{os.getpid()}", str(life)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


# --- the daemon, as a user runs it -----------------------------------------------------------------
class DaemonProc:
    """`.venv/bin/oom-journal run -c /dev/null --state-dir DIR ...` with a private NOTIFY_SOCKET."""

    EXE = REPO / ".venv" / "bin" / "oom-journal"

    def __init__(self, workdir: Path, name: str, args: list, state_dir: Path):
        self.workdir, self.name, self.args, self.state_dir = workdir, name, list(args), state_dir
        self.log = workdir / f"daemon-{name}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.sock: Optional[socket.socket] = None
        self.ready_s = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> "DaemonProc":
        path = str(self.workdir / f"notify-{self.name}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        env.pop("JOURNAL_STREAM", None)
        t = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(self.EXE), "run", "-c", "/dev/null", "--state-dir", str(self.state_dir)]
                                         + self.args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oom-journal exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                msg = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            if "READY=1" in msg.split("\n"):
                self.ready_s = time.monotonic() - t
                self.sock.setblocking(False)
                return self
        raise RuntimeError(f"oom-journal sent no READY=1 within {timeout} s:\n{self.log.read_text()}")

    def drain_notifications(self) -> None:
        try:
            while self.sock.recv(65536):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait_idle(self, quiet: float = 1.0, timeout: float = 120.0) -> float:
        """Waits until the daemon used no CPU for `quiet` seconds (its catch-up of this boot's
        kernel log is done); returns the seconds waited."""
        t = time.monotonic()
        last = cpu_seconds(self.pid)
        since = time.monotonic()
        while time.monotonic() - t < timeout:
            time.sleep(0.1)
            self.drain_notifications()
            now = cpu_seconds(self.pid)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return time.monotonic() - t

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> Optional[int]:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return None if self.proc is None else self.proc.returncode


def journal_entries(*matches: str) -> list:
    """journalctl -o json of this boot, binary fields (OOM_ARGV) as bytes."""
    out = subprocess.run(["journalctl", "--no-pager", "--all", "-b", "-o", "json", *matches],
                         capture_output=True, check=False).stdout
    entries = []
    for line in out.splitlines():
        entry = json.loads(line)
        for k, v in entry.items():
            if isinstance(v, list) and all(isinstance(x, int) for x in v):
                entry[k] = bytes(v)
        entries.append(entry)
    return entries


def daemon_entries(pid: int) -> dict:
    """The kill entries oom-journal process `pid` wrote: (OOM_PID, kernel µs) -> entry."""
    found = {}
    for e in journal_entries(f"MESSAGE_ID={MESSAGE_ID}", f"_PID={pid}"):
        try:
            found[(int(e["OOM_PID"]), int(e["OOM_KERNEL_TIMESTAMP_USEC"]))] = e
        except (KeyError, ValueError):
            continue
    return found


def entry_argv(entry: dict) -> Optional[list]:
    raw = entry.get("OOM_ARGV")
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    return [a.decode("utf-8", "backslashreplace") for a in raw.split(b"\0")]


def read_baseline(path: Path) -> dict:
    """The baseline's records: (pid, kernel µs) -> record, and its lost-record count."""
    kills, lost = {}, 0
    if not path.exists():
        return {"kills": kills, "lost_records": 0}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "lost_records" in r:
            lost += r["lost_records"]
        elif "kernel_ts_us" in r:
            kills[(r["pid"], r["kernel_ts_us"])] = r
    return {"kills": kills, "lost_records": lost}
