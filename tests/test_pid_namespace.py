"""oom-journal in a pid namespace of its own (a container): victims matched by name and cgroup.

The kernel's kill line names the victim by its pid in the initial pid namespace, which a
container's /proc does not show, and the process-event connector serves no listener outside it.
So there the daemon matches the victim by comm and memory cgroup among the processes its /proc
scan saw. The end-to-end test runs the real daemon under unshare(1) in new pid, mount and cgroup
namespaces and has the kernel OOM-kill a real process in them; the others use fixture /proc
trees (as test_proc_cache does) for the cases a real kill cannot be steered into.
The package's container test (test_package_e2e) does the same in a booted systemd-nspawn.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import types
import uuid

import pytest

from conftest import MEMCG_ROOT, MESSAGE_ID, remove_cgroup, unavailable, wait_for_entries
from oom_journal.procs.cache import NOT_FOUND, SOURCE_SCAN
from oom_journal.procs.pidns import cgroup_ends, lookup_by_cgroup
from test_proc_cache import fixture_cache, make_proc


# ---------------------------------------------------------------- matching a path

@pytest.mark.parametrize("kernel, ns, matches", [
    ("/machine.slice/machine-c.scope/payload/system.slice/app.service", "/system.slice/app.service", True),
    ("/system.slice/app.service", "/system.slice/app.service", True),  # no cgroup namespace
    ("/system.slice/myapp.service", "/app.service", False),  # a component boundary, not a substring
    ("/system.slice/app.service/sub", "/system.slice/app.service", False),  # an ancestor is not the cgroup
    ("/machine.slice/machine-c.scope", "/", False),  # the namespace's root would match everything
    ("/a/b", "/../../b", False),  # outside this cgroup namespace: /proc shows it relative with ..
    ("/a/b", "b", False),
])
def test_cgroup_ends(kernel, ns, matches):
    assert cgroup_ends(kernel, ns) is matches


# ---------------------------------------------------------------- fixture /proc trees

KERNEL_CG = "/machine.slice/machine-ct.scope/payload/system.slice/app.service"


def proc_in(root, pid, cmdline: bytes, cgroup: bytes = b"/system.slice/app.service", comm=b"python3",
            state=b"", start=1000):
    d = make_proc(root, pid, comm, cmdline, start=start, state=state)
    (d / "cgroup").write_bytes(b"0::" + cgroup + b"\n")
    return d


def gone(d):
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def now_us() -> int:
    return time.monotonic_ns() // 1000


@pytest.fixture
def tree(tmp_path):
    caches = []

    def start():
        cache = fixture_cache(tmp_path)
        cache.start()
        caches.append(cache)
        return cache

    yield tmp_path, start
    for c in caches:
        c.stop()


def test_the_dead_one_of_two_same_named_processes_is_the_victim(tree):
    root, start = tree
    victim = proc_in(root, 40, b"python3\0victim.py\0--big\0")
    proc_in(root, 41, b"python3\0sibling.py\0")
    proc_in(root, 42, b"python3\0elsewhere.py\0", cgroup=b"/system.slice/other.service")
    cache = start()
    killed = now_us()
    gone(victim)
    r = lookup_by_cgroup(cache, "python3", KERNEL_CG, killed)
    assert r.argv == [b"python3", b"victim.py", b"--big"] and r.source == SOURCE_SCAN
    assert "matched by name and cgroup" in r.note and "here it was 40" in r.note


def test_a_zombie_or_an_emptied_cmdline_counts_as_dead(tree):
    root, start = tree
    proc_in(root, 40, b"python3\0zombie.py\0")
    proc_in(root, 41, b"python3\0alive.py\0")
    cache = start()
    (root / "40" / "stat").write_bytes((root / "40" / "stat").read_bytes().replace(b") S ", b") Z ").replace(
        b") R ", b") Z "))
    r = lookup_by_cgroup(cache, "python3", KERNEL_CG, now_us())
    assert r.argv == [b"python3", b"zombie.py"], r.note
    (root / "41" / "cmdline").write_bytes(b"")  # exit_mm() done: exiting
    r = lookup_by_cgroup(cache, "python3", KERNEL_CG, now_us())
    assert r.source == NOT_FOUND and "2 processes" in r.note and "which one was the victim is unknown" in r.note


def test_two_dead_candidates_give_no_command_line(tree):
    root, start = tree
    a = proc_in(root, 40, b"python3\0a.py\0")
    b = proc_in(root, 41, b"python3\0b.py\0")
    cache = start()
    killed = now_us()
    gone(a)
    gone(b)
    r = lookup_by_cgroup(cache, "python3", KERNEL_CG, killed)
    assert r.argv is None and r.source == NOT_FOUND and "2 processes" in r.note


def test_a_process_gone_before_the_kill_is_not_its_victim(tree):
    root, start = tree
    earlier = proc_in(root, 40, b"python3\0exited-before.py\0")
    cache = start()
    gone(earlier)
    assert cache.rescan()  # its exit is noticed...
    r = lookup_by_cgroup(cache, "python3", KERNEL_CG, now_us())  # ...before this kill
    assert r.argv is None and "no process 'python3' in a cgroup ending" in r.note


def test_a_process_started_after_the_kill_is_not_its_victim(tree):
    root, start = tree
    later = proc_in(root, 40, b"python3\0started-later.py\0", start=10**9)  # ticks since boot: years
    cache = start()
    gone(later)
    r = lookup_by_cgroup(cache, "python3", KERNEL_CG, now_us())
    assert r.argv is None


def test_still_running_candidates_are_not_the_victim(tree):
    root, start = tree
    proc_in(root, 40, b"python3\0alive.py\0")
    cache = start()
    began = time.monotonic()
    r = lookup_by_cgroup(cache, "python3", KERNEL_CG, now_us(), wait=0.2)
    assert r.argv is None and "still ran 0.2 s after the kill" in r.note
    assert 0.2 <= time.monotonic() - began < 2


@pytest.mark.parametrize("kernel_cgroup, comm, ns_cgroup, note", [
    (None, "python3", b"/system.slice/app.service", "did not name the victim's cgroup"),
    (KERNEL_CG, "python3", b"/", "no process"),  # the namespace's root: not matched
    (KERNEL_CG, "python3", b"/system.slice/other.service", "no process"),
    (KERNEL_CG, "java", b"/system.slice/app.service", "no process 'java'"),
])
def test_no_match(tree, kernel_cgroup, comm, ns_cgroup, note):
    root, start = tree
    d = proc_in(root, 40, b"python3\0x.py\0", cgroup=ns_cgroup)
    cache = start()
    killed = now_us()
    gone(d)
    r = lookup_by_cgroup(cache, comm, kernel_cgroup, killed)
    assert r.argv is None and r.source == NOT_FOUND and note in r.note, r.note


def test_auto_scan_period(tmp_path):
    make_proc(tmp_path, 40, b"sleep", b"sleep\x0060\x00")
    cache = fixture_cache(tmp_path, scan_interval="auto")
    cache.start()
    try:
        # No exec events: as often as 1 % of a CPU allows, at most 10 times a second.
        assert 0.1 <= cache.scan_period() <= 10.0
        scans = cache.stats()["scans"]
        deadline = time.monotonic() + 5
        while cache.stats()["scans"] < scans + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.stats()["scans"] >= scans + 3  # a tiny tree: about every 0.1 s
    finally:
        cache.stop()
    assert fixture_cache(tmp_path, scan_interval=7.0).scan_period() == 7.0


# ---------------------------------------------------------------- the real daemon, real kills

class NamespacedCgroup:
    """A memory cgroup P (no limit) with a child, the unit, limited: the daemon's cgroup
    namespace is rooted at P, so inside it the victim's cgroup reads /<unit> while the
    kernel prints /<P>/<unit>."""

    def __init__(self, limit_mib=32):
        self.parent = MEMCG_ROOT / f"oomj-ns-{uuid.uuid4().hex[:12]}"
        self.unit = f"oomj-ns-app-{uuid.uuid4().hex[:8]}.service"
        self.path = self.parent / self.unit
        self.path.mkdir(parents=True)
        (self.path / "memory.limit_in_bytes").write_text(str(limit_mib << 20))
        self.kernel_path = f"/{self.parent.name}/{self.unit}"

    def enter(self, cg):
        procs = str(cg / "cgroup.procs")

        def preexec():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        return preexec

    def remove(self):
        remove_cgroup(self.path)
        remove_cgroup(self.parent)


@pytest.fixture
def nscg(root):
    if not (MEMCG_ROOT / "memory.limit_in_bytes").exists():
        unavailable("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} (util-linux) is not installed")
    cg = NamespacedCgroup()
    yield cg
    cg.remove()


def child_of(pid: int, timeout=10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"unshare (pid {pid}) started no child")


def test_in_its_own_pid_and_cgroup_namespaces_the_victim_is_matched_by_name_and_cgroup(nscg, daemon_factory):
    # unshare --fork: the daemon is pid 1 of a new pid namespace, with /proc remounted for it, in a
    # cgroup namespace rooted at nscg.parent; --kill-child: it dies with unshare, whatever happens.
    prefix = ["sh", "-c", f'echo $$ > {nscg.parent}/cgroup.procs && exec "$@"', "sh",
              "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--cgroup"]
    d = daemon_factory(prefix=prefix).start()
    daemon_pid = child_of(d.pid)
    assert "pid namespace of its own" in d.log.read_text()
    assert open(f"/proc/{daemon_pid}/cgroup").read().find(f"memory:/{nscg.parent.name}\n") >= 0
    in_ns = ["nsenter", "-t", str(daemon_pid), "-p", "--"]  # forks: the child is in the daemon's namespace
    token = uuid.uuid4().hex
    # The same name, the same cgroup: only the process that dies is the victim.
    sibling = subprocess.Popen(in_ns + ["/usr/bin/python3", "-c", "import time; time.sleep(60)", f"sibling-{token}"],
                               preexec_fn=nscg.enter(nscg.path), stdin=subprocess.DEVNULL)
    # The victim lives 1 s before it allocates: a scan (about every 0.1 s here) sees it.
    argv = ["/usr/bin/python3", "-c", "import time; time.sleep(1); b = b'x' * (256 << 20)", f"victim-{token}",
            "an argument with spaces", "ünïcødé ✓"]
    try:
        victim = subprocess.Popen(in_ns + argv, preexec_fn=nscg.enter(nscg.path), stdin=subprocess.DEVNULL)
        assert victim.wait(timeout=30) == -signal.SIGKILL  # nsenter dies as its child did
        writer = types.SimpleNamespace(pid=daemon_pid, started_us=d.started_us)
        entries = wait_for_entries(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_UNIT={nscg.unit}", writers=[writer])
        assert len(entries) == 1, entries
        e = entries[0]
        assert e["OOM_CGROUP"] == nscg.kernel_path  # the kernel's path, from the hierarchy's root
        assert e["OOM_CMDLINE"] == " ".join(argv), e.get("OOM_CMDLINE_NOTE")
        assert e["OOM_ARGV"] == b"\0".join(a.encode() for a in argv)
        assert e["OOM_CMDLINE_SOURCE"] == "scan"
        assert "matched by name and cgroup" in e["OOM_CMDLINE_NOTE"]
        assert int(e["OOM_PID"]) != int(e["OOM_CMDLINE_NOTE"].rsplit("here it was ", 1)[1].rstrip(")"))
        assert sibling.poll() is None  # it was not the victim
    finally:
        sibling.kill()
        sibling.wait()
        os.kill(daemon_pid, signal.SIGTERM)
        assert d.proc.wait(timeout=15) == 0
        d.close()
