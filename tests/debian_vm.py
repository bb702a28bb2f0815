"""Debian 12 in qemu for tests/test_vm.py: Debian's kernel 6.1, the pure cgroup v2 hierarchy,
systemd 252 as PID 1 (what ../shared/VM-E2E.md verified on this machine; this is the project's
own copy of that recipe).

- The image (tests/vm/build-image.sh: debootstrap, a small initrd, `mkfs.ext4 -d`) is built once
  and cached in /var/cache/oom-journal/vm-bookworm-<hash>/, the hash being that of the files it is
  made from (a changed recipe makes a new image, and the old ones are removed). It is built in a
  partial directory and renamed when complete, under a lock, and renewed when a month old (the
  package lists in it must not lag far behind the mirror).
- A boot: qemu (TCG: /dev/kvm here is nested "PVM", on which Debian's kernel hangs after
  "Probing EDD") with the cached root disk under snapshot=on (every boot starts from the image;
  a guest reboot within one qemu run keeps its writes), a job directory shared over 9p as
  /mnt/job, and a serial console. The guest's vmjob runs /mnt/job/run.sh, copies its journal
  (`journalctl -o json`, every boot) to /mnt/job/out/ and powers off.
- Whatever happens, qemu is stopped (it runs under `timeout`, and is stopped by its pid when the
  test is interrupted, a SIGTERM too), and the share is removed; a share left by a run killed
  outright is swept up by the next one.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from test_package_e2e import CACHE, DEBIAN_PATH, SUITE, debian_mirror, discard_tree

HERE = Path(__file__).resolve().parent
RECIPE = (HERE / "vm" / "build-image.sh", HERE / "vm" / "vmjob")
IMAGE_PREFIX = f"vm-{SUITE}-"
COMPLETE = ".complete"  # written last: a half-built image is never booted
MAX_AGE = 30 * 86400
BUILD_TIMEOUT = 900
SHARE_PARENT = Path("/var/tmp")
SHARE_PREFIX = "oom-journal-vm-"
MARKERS = ("VMJOB-BOOTED", "VMJOB-START", "VMJOB-REBOOT", "VMJOB-DONE")


def image_dir() -> Path:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in RECIPE)).hexdigest()[:12]
    return CACHE / f"{IMAGE_PREFIX}{digest}"


def missing_tools() -> list:
    return [t for t in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "timeout", "chroot")
            if shutil.which(t, path=DEBIAN_PATH) is None]


def ensure_image() -> tuple:
    """The cached image's directory, building (or renewing) it first if needed; and the seconds
    that took (0.0 when the cache was used)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    image = image_dir()
    with open(CACHE / "vm-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time may build or replace it
        marker = image / COMPLETE
        if marker.exists() and time.time() - marker.stat().st_mtime < MAX_AGE:
            return image, 0.0
        started = time.monotonic()
        partial = CACHE / f".{image.name}.partial"
        try:
            discard_tree(partial)  # a run killed while building it
            mirror = debian_mirror()
            p = subprocess.run(["bash", str(HERE / "vm" / "build-image.sh"), str(partial), mirror],
                               capture_output=True, text=True, errors="replace", timeout=BUILD_TIMEOUT,
                               stdin=subprocess.DEVNULL,
                               env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"})
            if p.returncode != 0:
                raise AssertionError(f"tests/vm/build-image.sh ({SUITE} from {mirror}) failed ({p.returncode}):\n"
                                     f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            (partial / COMPLETE).write_text(f"{SUITE} from {mirror}, built {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
                                            + p.stdout.strip().splitlines()[-1] + "\n")
            # Older images (another recipe, or this one when a month old) go: each is ~1 GB.
            for old in CACHE.glob(f"{IMAGE_PREFIX}*"):
                discard_tree(old)
            partial.rename(image)
        finally:
            discard_tree(partial)
        return image, time.monotonic() - started


@dataclass
class Boot:
    """What one qemu run left: the job's files (out/...), the console, timings, the journal."""

    out: Path
    console: str
    markers: dict = field(default_factory=dict)  # marker -> [host seconds after qemu started, ...]
    seconds: float = 0.0  # qemu start to exit
    qemu_rc: int = 0
    journal: list = field(default_factory=list)  # the guest's `journalctl -o json`, every boot

    def text(self, name: str) -> str:
        path = self.out / name
        return path.read_text(errors="replace") if path.exists() else ""

    def json(self, name: str):
        return json.loads(self.text(name))

    def entries(self, **matches) -> list:
        """Journal entries whose fields equal all of matches (values as strings)."""
        return [e for e in self.journal if all(e.get(k) == v for k, v in matches.items())]

    def messages(self, **matches) -> list:
        return [e["MESSAGE"] for e in self.entries(**matches) if isinstance(e.get("MESSAGE"), str)]

    def describe(self) -> str:
        """For assertion messages: where it stopped, and the job's own words."""
        parts = [f"qemu rc {self.qemu_rc} after {self.seconds:.0f} s; markers {self.markers}"]
        for boot in sorted(self.out.glob("boot-*")):
            for name in ("rc", "stderr", "stdout"):
                text = (boot / name).read_text(errors="replace") if (boot / name).exists() else "(none)"
                parts.append(f"--- {boot.name}/{name}:\n{text[-3000:]}")
        parts.append("--- console (end):\n" + self.console[-3000:])
        return "\n".join(parts)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def sweep_stale_shares() -> None:
    """Shares of runs that were killed outright (their qemu died with its `timeout`)."""
    for share in SHARE_PARENT.glob(SHARE_PREFIX + "*"):
        try:
            pid, start = (int(x) for x in (share / ".owner").read_text().split())
        except (OSError, ValueError):
            pid = start = None
        if pid is not None and _start_time(pid) == start:
            continue  # its pytest lives: a run going on now
        if pid is None and time.time() - share.stat().st_mtime < 60:
            continue  # just made
        shutil.rmtree(share, ignore_errors=True)


def _start_time(pid: int):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def boot(image: Path, files: dict, dest: Path, *, memory_mib=1024, smp=2, timeout=600.0,
         allow_reboot=False) -> Boot:
    """Boots the image once with `files` ({name in the share: source path}; "run.sh" is the job)
    in /mnt/job, waits until the guest powers off (at most `timeout` s), and returns what it left,
    copied to dest. allow_reboot: a reboot inside the guest reboots it (else qemu exits on one)."""
    sweep_stale_shares()
    share = Path(tempfile.mkdtemp(prefix=SHARE_PREFIX, dir=SHARE_PARENT))
    (share / ".owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    for name, src in files.items():
        shutil.copy2(src, share / name)
    dest.mkdir(parents=True, exist_ok=True)
    console_path = dest / "console.log"
    argv = ["qemu-system-x86_64",
            # TCG: see the module's docstring. -cpu qemu64: `max` boots ~20 % slower and fills
            # memory 4-5 times slower under TCG (../shared/VM-E2E.md).
            "-accel", "tcg,thread=multi", "-cpu", "qemu64", "-smp", str(smp), "-m", str(memory_mib),
            "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio",
            *([] if allow_reboot else ["-no-reboot"]),
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            # panic=1 with -no-reboot: a guest panic ends the run at once. psi=1: systemd-oomd
            # needs PSI (on in Debian's 6.1 already; harmless).
            "-append", "console=ttyS0 root=/dev/vda rw panic=1 psi=1",
            "-drive", f"file={image / 'rootfs.img'},format=raw,if=virtio,snapshot=on,cache=unsafe",
            "-fsdev", f"local,id=jobfs,path={share},security_model=none",
            "-device", "virtio-9p-pci,fsdev=jobfs,mount_tag=job",
            "-device", "virtio-rng-pci"]
    # `timeout` stops qemu even if this process is killed outright (SIGKILL, a lost session).
    argv = ["timeout", "-k", "10", str(int(timeout)), *argv]
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a CI timeout's SIGTERM: still clean up
    markers: dict = {}
    started = time.monotonic()
    proc = None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8"})

        def read_console():
            with open(console_path, "w", errors="replace") as log:
                for raw in proc.stdout:
                    now = time.monotonic() - started
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    log.write(f"[{now:8.3f}] {line}\n")
                    for m in MARKERS:  # the console line is "[ kernel time] vmjob[pid]: VMJOB-..."
                        if f": {m} " in line:
                            markers.setdefault(m, []).append(round(now, 1))

        reader = threading.Thread(target=read_console, daemon=True)
        reader.start()
        try:
            qemu_rc = proc.wait(timeout=timeout + 20)
        except subprocess.TimeoutExpired:
            qemu_rc = None
        reader.join(timeout=10)
        seconds = time.monotonic() - started
        if (share / "out").exists():
            shutil.copytree(share / "out", dest, dirs_exist_ok=True)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: timeout and qemu, by their pid
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(share, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    result = Boot(out=dest, console=console_path.read_text(errors="replace"), markers=markers,
                  seconds=seconds, qemu_rc=qemu_rc if qemu_rc is not None else -1)
    journal = dest / "journal.json"
    if journal.exists():
        result.journal = [json.loads(line) for line in journal.read_text(errors="replace").splitlines() if line]
    (dest / "timing.json").write_text(json.dumps({"seconds": round(seconds, 1), "markers": markers,
                                                  "memory_mib": memory_mib}) + "\n")
    return result
