"""The Debian package end to end, as an administrator meets it.

packaging/build-deb builds dist/oom-journal_<version>_all.deb (lintian must pass), then a Debian 12
with systemd as PID 1 boots in systemd-nspawn, in a memory cgroup of its own whose hierarchy the
container may write (so `MemoryMax=` really limits its units: real kernel OOM kills), with
/dev/kmsg and CAP_SYSLOG. Inside it: `apt-get install ./oom-journal_*.deb` (its dependencies from
Debian's packages), `systemctl`, an upgrade, `systemctl reload`, a unit OOM-killed under
`MemoryMax=`, `journalctl -u`, `journalctl -x`, `apt-get purge`.

The debootstrapped tree is cached in /var/cache/oom-journal/ (made in 45-90 s, renewed when a
month old) and copied for each run (about 1 s): the whole file takes about 25 s with the cache,
about a minute without. The container, its copy, its cgroups and what nspawn leaves in /run are
removed whatever happens (a SIGTERM too), and what a run killed outright left is swept up by the
next one. Nothing is written to the host's /etc and no host service is touched.

Deselect with `-m "not package"`.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import MESSAGE_ID, REPO, unavailable

pytestmark = pytest.mark.package

SUITE = "bookworm"
CACHE = Path("/var/cache/oom-journal")
# A new name makes a new tree: bump the number when what the tree must hold changes.
TREE = CACHE / f"nspawn-{SUITE}-v1"
TREE_COMPLETE = ".oom-journal-tree-complete"  # written last: a half-made tree is never used
TREE_MAX_AGE = 30 * 86400  # the mirror moves on; the tree's package lists must not lag far behind
INCLUDE = "systemd,systemd-sysv,dbus,python3,procps,ca-certificates"
# The package's dependencies, downloaded (not installed) into the tree's apt cache when it is made:
# each run's `apt-get install ./oom-journal.deb` then installs them from Debian's .debs offline.
DEPENDENCIES = ("python3-systemd", "python3-sdnotify", "python3-requests", "python3-configargparse")
RUN_PARENT = Path("/var/tmp")
RUN_PREFIX = "oom-journal-e2e-"
CGROUPS = Path("/sys/fs/cgroup")
# (line of /proc/self/cgroup, directory under /sys/fs/cgroup): the container's memory hierarchy,
# and the two that nspawn itself writes (its payload/ and supervisor/ cgroups).
HIERARCHIES = (("memory", "memory"), ("name=systemd", "systemd"), ("", "unified"))
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "oom_journal" / "__init__.py").read_text()).group(1)
DEB_NAME = f"oom-journal_{VERSION}_all.deb"
MAX_EXPOSURE = 2.5
# Paths whose contents change by themselves (logs, caches, apt's and dpkg's own records, kernel
# file systems): left out when checking that a purge leaves the tree as it was.
VOLATILE = ("proc", "sys", "dev", "run", "tmp", "var/tmp", "var/log", "var/cache", "var/lib/apt", "var/lib/dpkg")
VICTIM_SCRIPT = "import time; time.sleep(2); b = b'x' * (256 << 20)"
VICTIM_ATTEMPTS = 4

# ----------------------------------------------------------------------------------------------
# The host side: tools, mounts, cgroups, the cached tree
# ----------------------------------------------------------------------------------------------


def _run(argv, timeout, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL, **kwargs)


def _unescape_mountinfo(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mounts_under(path: Path) -> list:
    """Mount points at or below path, deepest first."""
    top = str(path).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape_mountinfo(line.split()[4])
        if point == top or point.startswith(top + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def discard_tree(path: Path) -> None:
    """Removes a directory tree that debootstrap or nspawn used, unmounting what is left under it
    first (debootstrap mounts proc and sys in its target while it runs). Refuses to delete across
    a mount that will not go."""
    for point in mounts_under(path):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)
    left = mounts_under(path)
    if left:
        raise AssertionError(f"cannot unmount {left}; not removing {path}")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses for SUITE, else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if ("deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no" and fields.get("uris")):
                return fields["uris"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == SUITE:
                    return m.group(1)
    return "http://deb.debian.org/debian"


def make_tree(target: Path) -> None:
    """debootstrap a minimal Debian with systemd, and put the package's dependencies in its apt cache."""
    mirror = debian_mirror()
    p = _run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(target), mirror], timeout=540)
    if p.returncode != 0:
        raise AssertionError(f"debootstrap {SUITE} from {mirror} failed ({p.returncode}):\n"
                             f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    chroot = ["chroot", str(target), "env", "DEBIAN_FRONTEND=noninteractive"]
    for argv in (["apt-get", "clean"],  # the base system's .debs: not needed again, 60 MB per copy
                 ["apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends", *DEPENDENCIES]):
        p = _run(chroot + argv, timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in the new tree failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    (target / TREE_COMPLETE).write_text(f"{SUITE} from {mirror}, made {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")


def copy_cached_tree(dest: Path) -> None:
    """Copies the cached tree to dest, making (or renewing) it first if needed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    # One run at a time may make, replace or copy the tree.
    with open(CACHE / "nspawn-tree.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = TREE / TREE_COMPLETE
        if not (marker.exists() and time.time() - marker.stat().st_mtime < TREE_MAX_AGE):
            partial = CACHE / f".{TREE.name}.partial"
            old = CACHE / f".{TREE.name}.old"
            try:
                discard_tree(partial)  # a run killed while making it
                make_tree(partial)
                if TREE.exists():
                    discard_tree(old)
                    TREE.rename(old)
                partial.rename(TREE)
            finally:
                discard_tree(partial)
                discard_tree(old)
        p = _run(["cp", "-a", "--reflink=auto", str(TREE), str(dest)], timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"copying {TREE} failed: {p.stderr}")


def own_cgroup(line_controllers: str, mount: str):
    """This process's cgroup directory in one hierarchy, or None if that hierarchy is not mounted."""
    if not (CGROUPS / mount / "cgroup.procs").exists():
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controllers == line_controllers if line_controllers == "" else line_controllers in controllers.split(",")):
            return CGROUPS / mount / path.lstrip("/")
    return None


def cgroup_pids(directory: Path) -> list:
    pids = []
    for procs in directory.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:  # removed meanwhile
            pass
    return pids


def remove_cgroup_tree(directory: Path, timeout=10.0) -> None:
    """SIGKILLs what is left in a cgroup tree this test made (only its own processes can be
    there), then removes its directories, deepest first."""
    if not directory.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        for pid in cgroup_pids(directory):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for sub in sorted((d for d in directory.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"cannot remove cgroup {directory}: {e}; processes: {cgroup_pids(directory)}") from None
            time.sleep(0.1)


def host_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


# ----------------------------------------------------------------------------------------------
# The container
# ----------------------------------------------------------------------------------------------


class Container:
    """Debian 12 booted with systemd as PID 1 by systemd-nspawn, from a copy of the cached tree."""

    def __init__(self, rundir: Path):
        self.rundir = rundir
        self.name = "oomj-" + rundir.name[len(RUN_PREFIX):]  # a machine name: also the hostname
        self.root = rundir / "root"
        self.log = rundir / "nspawn.log"
        self.pidfile = rundir / "nspawn.pid"
        recorded = rundir / "cgroups"  # as boot() made them: a later run sweeping this one uses these
        if recorded.exists():
            self.cgroups = [Path(line) for line in recorded.read_text().splitlines() if line]
        else:
            self.cgroups = [parent / f"{self.name}-ct" for parent in
                            (own_cgroup(c, m) for c, m in HIERARCHIES) if parent is not None]
        self.nspawn = None
        self.leader = None
        self.files_before = set()  # the tree before the package was installed
        self.apt_install = ""  # what apt-get install printed

    def boot(self, timeout=90.0) -> None:
        (self.rundir / "cgroups").write_text("".join(f"{cg}\n" for cg in self.cgroups))
        for cg in self.cgroups:
            cg.mkdir()
        # The shell moves itself into the new cgroups, then becomes nspawn: the container's memory
        # cgroup is ours, and nspawn's payload/ and supervisor/ cgroups land inside ours.
        enter = "; ".join(f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))}" for cg in self.cgroups)
        # In the container, systemd is started only after its view of the memory hierarchy is made
        # writable (nspawn mounts it read-only): MemoryMax= of the container's units then works.
        init = "mount -o remount,bind,rw /sys/fs/cgroup/memory && exec /lib/systemd/systemd"
        argv = ["sh", "-c", f'{enter}; exec "$@"', "sh",
                "systemd-nspawn", "-D", str(self.root), "-M", self.name,
                # No machined and no host bus here: the container is no machine.slice unit.
                "--register=no", "--keep-unit", "--console=pipe",
                # SIGTERM to nspawn then halts the container cleanly (systemd's SIGRTMIN+3).
                "--kill-signal=SIGRTMIN+3",
                # The kernel's log: what oom-journal reads in a container (dmesg_restrict=1 here).
                "--bind-ro=/dev/kmsg", "--capability=CAP_SYSLOG",
                "/bin/sh", "-c", init]
        with open(self.log, "wb") as log:
            self.nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8"})
        self.pidfile.write_text(str(self.nspawn.pid))
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self._check_alive(deadline)
            self.leader = self._find_leader()
            time.sleep(0.05)
        # systemd's socket appears a moment after it starts: until then systemctl fails at once.
        while True:
            self._check_alive(deadline)
            try:
                state = self.run("systemctl", "is-system-running", "--wait", check=False,
                                 timeout=max(1.0, deadline - time.monotonic())).stdout.strip()
            except subprocess.TimeoutExpired:
                continue  # _check_alive() says it
            if state == "running":
                return
            if state == "degraded":
                raise AssertionError("the container booted with failed units:\n"
                                     + self.run("systemctl", "--failed", "--no-legend", check=False).stdout)
            time.sleep(0.1)

    def _check_alive(self, deadline) -> None:
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the container did not boot in time:\n{self.log_tail()}")

    def _find_leader(self):
        """The container's PID 1: nspawn's child whose pid in its own namespace is 1."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
            nspid = re.search(r"^NSpid:\s+([\d\t ]+)$", status, re.M)
            if ppid and int(ppid.group(1)) == self.nspawn.pid and nspid and nspid.group(1).split()[-1] == "1" \
                    and len(nspid.group(1).split()) > 1:
                return int(entry.name)
        return None

    def log_tail(self, lines=40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def run(self, *argv, check=True, timeout=120.0) -> subprocess.CompletedProcess:
        """A command in all of the container's namespaces, as root (the host's capabilities)."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={DEBIAN_PATH}", "LANG=C.UTF-8",
               "HOME=/root", "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, errors="surrogateescape", timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"in the container, {shlex.join(argv)} exited with {p.returncode}:\n"
                                 f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
        return p

    def journal(self, *args) -> list:
        """journalctl -o json entries (binary fields as bytes), as in conftest.journal_entries."""
        out = self.run("journalctl", "--no-pager", "--all", "-o", "json", *args, check=False).stdout
        entries = []
        for line in out.splitlines():
            entry = json.loads(line)
            for k, v in entry.items():
                if isinstance(v, list) and all(isinstance(x, int) for x in v):
                    entry[k] = bytes(v)
            entries.append(entry)
        return entries

    def cursor(self) -> str:
        """The journal's current end: what is logged from here on comes --after-cursor it."""
        out = self.run("journalctl", "-n", "0", "--show-cursor", "-q", "--no-pager").stdout
        return out.strip().rsplit("-- cursor: ", 1)[-1]

    def wait_for(self, what: str, check, timeout=15.0) -> str:
        """Polls check() (which returns text, or None) until it gives text."""
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"in {timeout:.0f} s, no {what}")
            time.sleep(0.1)

    def files(self) -> set:
        """Every path of the tree but the volatile ones, with its kind (d, l or f)."""
        found = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if rel + d not in VOLATILE]
            for d in dirnames:
                found.add(("l" if os.path.islink(os.path.join(dirpath, d)) else "d", rel + d))
            for f in filenames:
                found.add(("l" if os.path.islink(os.path.join(dirpath, f)) else "f", rel + f))
        return found

    def stop(self) -> None:
        """Halts the container and removes its cgroups and nspawn's leftovers in /run."""
        pid = self.nspawn.pid if self.nspawn else _read_pid(self.pidfile)
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.nspawn.send_signal(signal.SIGTERM)  # a clean halt: systemd stops the units
                try:
                    self.nspawn.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait(timeout=10)
            elif self.nspawn is None and pid is not None and _is_our_nspawn(pid, self.root):
                os.kill(pid, signal.SIGKILL)  # a stale run's nspawn, by its pid
        finally:
            # Whatever survived (the container's init outlives a SIGKILLed nspawn) is in our cgroups.
            errors = []
            for cg in self.cgroups:
                try:
                    remove_cgroup_tree(cg)
                except AssertionError as e:
                    errors.append(str(e))
            nspawn_run = Path("/run/systemd/nspawn")
            for sub in ("propagate", "unix-export", "incoming"):
                leftover = nspawn_run / sub / self.name
                if leftover.exists() and not mounts_under(leftover):
                    shutil.rmtree(leftover, ignore_errors=True)
            try:  # nspawn's lock on the tree, left by one that was killed
                st = self.root.stat()
                (nspawn_run / "locks" / f"inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            for d in (nspawn_run / s for s in ("propagate", "unix-export", "incoming", "locks", "")):
                try:
                    d.rmdir()  # only if empty: another container may be running
                except OSError:
                    pass
            if errors:
                raise AssertionError("; ".join(errors))


def _read_pid(path: Path):
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _is_our_nspawn(pid: int, root: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"systemd-nspawn") and str(root).encode() in argv


def sweep_stale_runs() -> None:
    """Removes what runs that were killed outright (SIGKILL, a lost session) left: their nspawn,
    cgroups and copy. A run whose pytest still lives is going on now, and is left alone."""
    for rundir in RUN_PARENT.glob(RUN_PREFIX + "*"):
        try:
            owner_pid, owner_start = (int(x) for x in (rundir / "owner").read_text().split())
        except (OSError, ValueError):
            owner_pid = owner_start = None
        if owner_pid is not None and _start_time(owner_pid) == owner_start:
            continue
        if owner_pid is None and time.time() - rundir.stat().st_mtime < 60:
            continue  # just made: its owner file comes next
        Container(rundir).stop()
        discard_tree(rundir)


def _start_time(pid: int):
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, names one process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools(root):
    if not (CGROUPS / "memory" / "memory.limit_in_bytes").exists():
        unavailable("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    if not Path("/dev/kmsg").exists():
        unavailable("no /dev/kmsg")
    missing = [t for t in ("dpkg-buildpackage", "lintian", "debootstrap", "systemd-nspawn", "nsenter", "chroot",
                           "systemd-analyze")
               if shutil.which(t, path=DEBIAN_PATH) is None]
    if missing:
        unavailable(f"missing {', '.join(missing)}: apt-get install debhelper dh-python pybuild-plugin-pyproject "
                    "python3-all python3-setuptools python3-pytest lintian debootstrap systemd-container")


@pytest.fixture(scope="module")
def deb(tools) -> Path:
    """packaging/build-deb, as a developer runs it: the .deb, lintian clean."""
    p = _run(["bash", str(REPO / "packaging" / "build-deb")], timeout=300, cwd=REPO)
    output = p.stdout + p.stderr
    assert p.returncode == 0, f"packaging/build-deb failed ({p.returncode}):\n{output[-6000:]}"
    assert not re.search(r"^[EW]: ", output, re.M), f"lintian reports errors or warnings:\n{output}"
    path = REPO / "dist" / DEB_NAME
    assert p.stdout.strip().splitlines()[-1] == f"dist/{DEB_NAME}" and path.is_file(), output
    return path


@pytest.fixture(scope="module")
def container(deb):
    """A booted container with the package installed by apt, removed afterwards whatever happens."""
    sweep_stale_runs()
    rundir = RUN_PARENT / f"{RUN_PREFIX}{uuid.uuid4().hex[:12]}"
    rundir.mkdir(mode=0o700)
    (rundir / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    # A SIGTERM to pytest (a CI timeout) must still tear the container down.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    ct = Container(rundir)
    try:
        copy_cached_tree(ct.root)
        shutil.copy2(deb, ct.root / "root" / DEB_NAME)
        # A container whose journald does not read the kernel's log (so this boot's journal has no
        # kernel messages, as in most containers): `--source auto` must then choose /dev/kmsg.
        dropin = ct.root / "etc/systemd/journald.conf.d/50-oomj-e2e.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text("[Journal]\nReadKMsg=no\n")
        ct.boot()
        ct.files_before = ct.files()
        p = ct.run("apt-get", "install", "-y", f"/root/{DEB_NAME}", check=False, timeout=300)
        assert p.returncode == 0, (f"apt-get install failed ({p.returncode}); if a dependency cannot be "
                                   f"fetched, remove {TREE} to renew the cached tree:\n{p.stdout[-5000:]}\n{p.stderr[-3000:]}")
        ct.apt_install = p.stdout
        yield ct
    finally:
        try:
            ct.stop()
        finally:
            discard_tree(rundir)
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class HostKernelLog:
    """The host's /dev/kmsg from now on: what the kernel printed about a kill, to tell a kill
    oom-journal missed from one whose report the kernel left out."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.messages = []

    def read(self) -> list:
        while True:
            try:
                record = os.read(self.fd, 16384)
            except BlockingIOError:
                return self.messages
            except BrokenPipeError:  # overrun: records were overwritten; go on from the oldest left
                continue
            self.messages.append(record.partition(b";")[2].split(b"\n", 1)[0].decode("utf-8", "replace"))

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture(scope="module")
def victim(container):
    """A unit in the container whose process the kernel OOM-kills under MemoryMax=: its name,
    argv, host pid and the journal's entries of the kill (as `journalctl -u UNIT` shows them).

    The kernel prints the part of its report that names the cgroup (`oom-kill:...task_memcg=`)
    at most 10 times in 5 s (mm/oom_kill.c: dump_header() under the oom_rs ratelimit), the kill
    line always. When other OOM kills on this machine used that budget, nothing names the
    victim's unit: that kill is tried again, with a new unit, after the 5 s window.
    """
    argv = ["/usr/bin/python3", "-c", VICTIM_SCRIPT, f"--token={uuid.uuid4().hex}", "an argument with spaces",
            "ünïcødé ✓ 日本", "--padding=" + "p" * 2100]
    kernel = HostKernelLog()
    try:
        for _attempt in range(VICTIM_ATTEMPTS):
            unit = f"oomj-victim-{uuid.uuid4().hex[:12]}.service"
            p = container.run("systemd-run", f"--unit={unit}", "--wait", "--collect", "-p", "MemoryMax=64M", *argv,
                              check=False, timeout=60)
            assert "code=killed/status=KILL" in p.stderr, f"expected an OOM kill (SIGKILL):\n{p.stdout}\n{p.stderr}"
            # The kill is over when systemd-run returns: the kernel has printed all it will.
            summary = [m for m in kernel.read() if "task_memcg=" in m and f"/{unit}," in m]
            if summary:
                break
            time.sleep(5.5)
        else:
            unavailable(f"the kernel named the cgroup of none of {VICTIM_ATTEMPTS} OOM kills in "
                        f"{VICTIM_ATTEMPTS * 6} s: other OOM kills on this machine used up its report budget all along")
    finally:
        kernel.close()
    host_pid = int(re.search(r",pid=(\d+),", summary[0]).group(1))
    deadline = time.monotonic() + 20
    while True:
        entries = [e for e in container.journal("-u", unit) if e.get("MESSAGE_ID") == MESSAGE_ID]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # a duplicate would arrive right behind the first
    entries = [e for e in container.journal("-u", unit) if e.get("MESSAGE_ID") == MESSAGE_ID]
    return unit, argv, host_pid, entries


# ----------------------------------------------------------------------------------------------
# The package, without a container
# ----------------------------------------------------------------------------------------------


def test_package_holds_the_daemon_unit_catalog_config_and_man_pages(deb):
    fields = _run(["dpkg-deb", "-f", str(deb), "Depends", "Suggests", "Architecture"], timeout=30).stdout
    for dependency in DEPENDENCIES:
        assert re.search(rf"^Depends:.*\b{dependency}\b", fields, re.M), fields
    assert re.search(r"^Suggests:.*python3-confluent-kafka.*", fields, re.M), fields
    assert re.search(r"^Suggests:.*python3-elasticsearch", fields, re.M), fields
    assert "Architecture: all" in fields
    listing = _run(["dpkg-deb", "-c", str(deb)], timeout=30).stdout
    for path in ("./usr/bin/oom-journal", "./lib/systemd/system/oom-journal.service",
                 "./usr/lib/systemd/catalog/oom-journal.catalog", "./etc/oom-journal/oom-journal.conf",
                 "./usr/share/man/man8/oom-journal.8.gz", "./usr/share/man/man5/oom-journal.conf.5.gz",
                 "./usr/lib/python3/dist-packages/oom_journal/app/daemon.py"):
        assert re.search(rf" {re.escape(path)}$", listing, re.M), f"{path} is not in the package:\n{listing}"
    with tempfile.TemporaryDirectory() as control:
        _run(["dpkg-deb", "-e", str(deb), control], timeout=30).check_returncode()
        assert Path(control, "conffiles").read_text().split() == ["/etc/oom-journal/oom-journal.conf"]
        postrm = Path(control, "postrm").read_text()
        assert "rm -rf /var/lib/oom-journal" in postrm and "deb-systemd-helper purge" in postrm


def test_unit_exposure_is_at_most_2_5():
    p = _run(["systemd-analyze", "security", "--offline=true", "--no-pager",
              str(REPO / "systemd" / "oom-journal.service")], timeout=60)
    m = re.search(r"Overall exposure level for oom-journal\.service: (\d+\.\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, p.stdout


def _documented_options() -> list:
    sys.path.insert(0, str(REPO))
    from oom_journal.app import config

    return [opt for action in config.build_parser()._actions if action.help != argparse.SUPPRESS
            for opt in action.option_strings if opt.startswith("--") and opt not in ("--help", "--config")]


def test_man_page_documents_every_option():
    page = (REPO / "man" / "oom-journal.conf.5").read_text()
    missing = [o for o in _documented_options() if o[2:].replace("-", "\\-") not in page]
    assert not missing, f"man/oom-journal.conf.5 does not document {missing}"


def test_man_page_documents_every_journal_field():
    fields = set(re.findall(r'"(OOM_[A-Z_]+)"', (REPO / "oom_journal" / "enrich" / "event.py").read_text()))
    page = (REPO / "man" / "oom-journal.8").read_text()
    missing = sorted(f for f in fields if not re.search(rf"\b{f}\b", page))
    assert fields and not missing, f"man/oom-journal.8 does not describe {missing}"


def test_conffile_shows_every_option_commented():
    text = (REPO / "config" / "oom-journal.conf").read_text()
    missing = [o for o in _documented_options() if not re.search(rf"^#{re.escape(o[2:])} =", text, re.M)]
    assert not missing, f"config/oom-journal.conf does not show {missing}"


# ----------------------------------------------------------------------------------------------
# In the container: in the order an administrator goes
# ----------------------------------------------------------------------------------------------


def test_apt_install_enables_and_starts_the_service(container):
    assert "Created symlink /etc/systemd/system/multi-user.target.wants/oom-journal.service" in container.apt_install
    # apt waited for READY=1 (Type=notify): it is active, not activating.
    assert container.run("systemctl", "is-active", "oom-journal", check=False).stdout.strip() == "active"
    assert container.run("systemctl", "is-enabled", "oom-journal", check=False).stdout.strip() == "enabled"
    show = container.run("systemctl", "show", "oom-journal", "-p", "StatusText", "-p", "NRestarts").stdout
    assert "NRestarts=0" in show
    # This boot's journal has no kernel messages (journald: ReadKMsg=no), so auto chose /dev/kmsg,
    # which the hardened unit can read: nspawn's --bind-ro=/dev/kmsg and --capability=CAP_SYSLOG
    # were enough.
    assert "StatusText=Watching the kernel log from /dev/kmsg, writing to the journal" in show, show
    log = container.run("journalctl", "-u", "oom-journal", "-o", "cat", "--no-pager").stdout
    assert "reading the kernel log from /dev/kmsg: this boot's journal has no kernel messages" in log, log
    # The catalog is installed, and the journal's catalog database knows it.
    catalog = container.run("journalctl", "--list-catalog", MESSAGE_ID, check=False).stdout
    assert "oom-journal" in catalog, catalog
    # The installed, loaded unit's hardening, measured where it runs.
    p = container.run("systemd-analyze", "security", "--no-pager", "oom-journal.service")
    m = re.search(r"Overall exposure level for oom-journal\.service: (\d+\.\d+)", p.stdout)
    assert m and float(m.group(1)) <= MAX_EXPOSURE, p.stdout


def test_upgrade_restarts_the_service(container):
    def invocation():
        return container.run("systemctl", "show", "oom-journal", "-p", "InvocationID", "--value").stdout.strip()

    before = invocation()
    # Over the installed version: the maintainer scripts run as for an upgrade (postinst
    # configure OLD-VERSION), and dh_installsystemd's snippet restarts the service.
    container.run("apt-get", "install", "-y", "--reinstall", f"/root/{DEB_NAME}", timeout=300)
    assert container.run("systemctl", "is-active", "oom-journal", check=False).stdout.strip() == "active"
    assert invocation() not in ("", before), "the service was not restarted"


def test_reload_applies_a_drop_in_and_keeps_the_old_config_when_invalid(container):
    conf_d = "/etc/oom-journal/conf.d"
    container.run("mkdir", "-p", conf_d)
    # A faster /proc scan: the daemon sees the victim below while it lives (see the victim's test).
    container.run("sh", "-c", f"printf 'process-refresh = 1\\n' > {conf_d}/50-e2e.conf")
    check = container.run("oom-journal", "check-config").stdout
    assert "process-refresh = 1.0" in check and f"{conf_d}/50-e2e.conf" in check, check

    def status():
        return container.run("systemctl", "show", "oom-journal", "-p", "StatusText", "--value").stdout.strip()

    def logged_since(cursor, text):
        log = container.run("journalctl", "-u", "oom-journal", "-o", "cat", "--no-pager",
                            f"--after-cursor={cursor}").stdout
        return log if text in log else None

    # systemd 252 does not wait for the daemon's RELOADING=1 ... READY=1 (Type=notify-reload is
    # 253's): `systemctl reload` returns once SIGHUP is sent, so what follows is waited for.
    cursor = container.cursor()
    container.run("systemctl", "reload", "oom-journal")
    container.wait_for("'configuration reloaded'", lambda: logged_since(cursor, "configuration reloaded"))

    container.run("sh", "-c", f"printf 'syslog-proto = bogus\\n' > {conf_d}/60-e2e-bad.conf")
    cursor = container.cursor()
    container.run("systemctl", "reload", "oom-journal")
    container.wait_for("'reload failed' in the status", lambda: status() if "reload failed" in status() else None)
    assert "--syslog-proto" in status(), status()
    container.wait_for("'keeping the old one' logged", lambda: logged_since(cursor, "keeping the old one"))
    assert container.run("systemctl", "is-active", "oom-journal", check=False).stdout.strip() == "active"

    container.run("rm", f"{conf_d}/60-e2e-bad.conf")
    container.run("systemctl", "reload", "oom-journal")
    container.wait_for("a status without 'reload failed'", lambda: None if "reload failed" in status() else status())


def test_oom_kill_of_a_unit_is_in_its_journal(container, victim):
    unit, argv, host_pid, entries = victim
    assert len(entries) == 1, (f"journalctl -u {unit}: {entries}; the daemon's entries for pid {host_pid}: "
                               f"{container.journal(f'OOM_PID={host_pid}')}\n"
                               + container.run("journalctl", "-u", "oom-journal", "--no-pager", "-n", "30").stdout)
    e = entries[0]
    assert e["OOM_PID"] == str(host_pid)  # the kernel's number for it: the host's
    assert e["OOM_UNIT"] == unit and e["OBJECT_SYSTEMD_UNIT"] == unit
    assert e["OOM_SLICE"] == "system.slice"
    # The kernel names the cgroup from the host's root: the host's prefix, then the container's own
    # path. The deepest unit is the container's.
    assert e["OOM_CGROUP"].endswith(f"/{container.name}-ct/system.slice/{unit}"), e["OOM_CGROUP"]
    assert e["OOM_COMM"] == "python3"
    assert e["OOM_REASON"] == "Memory cgroup out of memory" and e["OOM_CONSTRAINT"] == "CONSTRAINT_MEMCG"
    assert e["OOM_MEMCG_LIMIT_KB"] == str(64 << 10)
    assert e["PRIORITY"] == "3" and e["SYSLOG_IDENTIFIER"] == "oom-journal"
    assert e["_SYSTEMD_UNIT"] == "oom-journal.service" and e["_UID"] == "0"
    assert e["OOM_KERNEL_SEQNUM"]  # read from /dev/kmsg
    # The service sees the kernel's boot id, not the one nspawn shows the container's processes
    # (under the unit's ProtectKernelTunables= or ProtectControlGroups=, nspawn's
    # /proc/sys/kernel/random/boot_id is not in its view): the kill's id is the one oom-journal on
    # the host gives the same kill.
    assert e["OOM_EVENT_ID"] == f"{host_boot_id()}-{e['OOM_KERNEL_TIMESTAMP_USEC']}-{host_pid}"
    # Never another process's command line (see the next test for why there is none).
    assert e.get("OOM_CMDLINE") in (None, " ".join(argv)), e.get("OOM_CMDLINE")

    # The same entry among all kills, and with the catalog's explanation.
    by_id = container.journal(f"MESSAGE_ID={MESSAGE_ID}", f"OOM_UNIT={unit}")
    assert [x["__CURSOR"] for x in by_id] == [e["__CURSOR"]]
    explained = container.run("journalctl", "-x", "-u", unit, "--no-pager").stdout
    assert f"Process {e['OOM_PID']} (python3) was killed by an OOM killer: kernel" in explained, explained
    assert "Defined-By: oom-journal" in explained and "journalctl -u UNIT" in explained


def test_oom_kill_in_a_container_has_the_full_command_line(victim):
    """The kernel names the victim by its host pid, which the container's /proc does not show:
    the daemon matches it by name and cgroup among the processes its /proc scan saw (the victim
    lives 2 s before it allocates, well over a scan)."""
    unit, argv, host_pid, entries = victim
    assert len(entries) == 1
    e = entries[0]
    assert e.get("OOM_CMDLINE") == " ".join(argv), e.get("OOM_CMDLINE_NOTE")
    assert e["OOM_ARGV"] == b"\0".join(a.encode() for a in argv)
    assert e["OOM_CMDLINE_SOURCE"] == "scan"
    assert "matched by name and cgroup" in e["OOM_CMDLINE_NOTE"]


def test_purge_stops_it_and_leaves_nothing_behind(container):
    # The administrator's own drop-ins go first: dpkg never removes files it did not install.
    container.run("rm", "-rf", "/etc/oom-journal/conf.d")
    assert container.run("test", "-d", "/var/lib/oom-journal", check=False).returncode == 0
    p = container.run("apt-get", "purge", "-y", "oom-journal", timeout=300)
    assert "Purging configuration files for oom-journal" in p.stdout, p.stdout
    assert container.run("systemctl", "is-active", "oom-journal", check=False).stdout.strip() != "active"
    assert container.run("pgrep", "-x", "oom-journal", check=False).returncode == 1, "oom-journal still runs"
    assert container.run("dpkg-query", "-W", "oom-journal", check=False).returncode != 0  # no "rc" left
    catalog = container.run("journalctl", "--list-catalog", MESSAGE_ID, check=False).stdout
    assert "oom-journal" not in catalog, catalog
    # Its dependencies, installed for it, go too; then the tree is as it was before the install.
    container.run("apt-get", "autoremove", "--purge", "-y", timeout=300)
    after = container.files()
    added = sorted(p for _, p in after - container.files_before)
    removed = sorted(p for _, p in container.files_before - after)
    assert not added and not removed, f"left behind: {added[:50]}; gone: {removed[:50]}"
