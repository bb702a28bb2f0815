"""Real container runtimes for the tests, private to each run: podman (own --root, --runroot and
containers.conf), a containerd instance of its own (own root, state, socket) driven through its
CRI plugin as kubelet drives it, and the cached Debian 12 rootfs their images are made from.

Facts these rely on were checked on this machine (../shared/CONTAINERS.md): crun refuses hybrid
cgroups, runc works; without CAP_SYS_RESOURCE podman's default rlimits make runc fail; no registry
is reachable, so the base image is imported from a debootstrapped tree.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from test_package_e2e import CACHE, DEBIAN_PATH, debian_mirror, discard_tree

SUITE = "bookworm"
# The base image's tree: debootstrap --variant=minbase (what bookworm-slim is, less its
# docs-removal dpkg config): ~175 MB made in ~20-60 s, cached like the package test's tree.
ROOTFS = CACHE / f"rootfs-{SUITE}-minbase-v1"
ROOTFS_COMPLETE = ".oom-journal-rootfs-complete"  # written last: a half-made tree is never used
ROOTFS_MAX_AGE = 30 * 86400
BASE_IMAGE = "localhost/debian:bookworm-slim"
CONTAINERS_CONF = """\
[containers]
# No CAP_SYS_RESOURCE here: podman's default rlimits make runc fail ("error setting rlimit type 7").
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
# crun 1.8 refuses hybrid cgroups ("cgroups in hybrid mode not supported"); runc 1.1 works.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def run(argv, timeout=120, check=True, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root", **kwargs.pop("env", {})}
    p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, env=env,
                       stdin=kwargs.pop("stdin", subprocess.DEVNULL), **kwargs)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv[:6]))} ... failed ({p.returncode}):\n"
                             f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def cached_rootfs() -> Path:
    """The debootstrapped Debian 12 tree, made (or renewed when a month old) under a lock."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = ROOTFS / ROOTFS_COMPLETE
        if not (marker.exists() and time.time() - marker.stat().st_mtime < ROOTFS_MAX_AGE):
            partial = CACHE / f".{ROOTFS.name}.partial"
            old = CACHE / f".{ROOTFS.name}.old"
            try:
                discard_tree(partial)
                mirror = debian_mirror()
                run(["debootstrap", "--variant=minbase", SUITE, str(partial), mirror], timeout=540)
                run(["chroot", str(partial), "apt-get", "clean"])
                (partial / ROOTFS_COMPLETE).write_text(f"{SUITE} from {mirror}, made {time.ctime()}\n")
                if ROOTFS.exists():
                    discard_tree(old)
                    ROOTFS.rename(old)
                partial.rename(ROOTFS)
            finally:
                discard_tree(partial)
                discard_tree(old)
        return ROOTFS


def import_rootfs(tar_into_argv) -> None:
    """tar the cached tree (less the marker) into a command that imports it as an image."""
    tree = cached_rootfs()
    tar = subprocess.Popen(["tar", "-C", str(tree), "--exclude", f"./{ROOTFS_COMPLETE}", "-c", "."],
                           stdout=subprocess.PIPE)
    try:
        run(tar_into_argv, timeout=300, stdin=tar.stdout)
    finally:
        tar.stdout.close()
        tar.wait(60)


class Podman:
    """podman with a storage, run root and configuration of its own, removed by close()."""

    def __init__(self, base: Path):
        self.base = base
        base.mkdir(parents=True)
        self.conf = base / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)
        self.root, self.runroot = base / "root", base / "runroot"
        self.flags = ["--root", str(self.root), "--runroot", str(self.runroot)]
        self.env = {"CONTAINERS_CONF": str(self.conf), "TMPDIR": str(base)}
        # podman's cgroupfs manager puts containers under /libpod_parent in each v1 hierarchy.
        self.parents_before = {str(p) for p in Path("/sys/fs/cgroup").glob("*/libpod_parent")}

    def __call__(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        return run(["podman", *self.flags, *args], timeout=timeout, check=check, env=self.env)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        env = {"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "HOME": "/root", **self.env}
        return subprocess.Popen(["podman", *self.flags, *args], env=env, stdin=subprocess.DEVNULL, **kwargs)

    def import_base(self) -> None:
        import_rootfs(["podman", *self.flags, "import", "-", BASE_IMAGE])

    def build_pause(self, name: str) -> None:
        """The base with `sleep infinity` as its command: the sandbox ("pause") image containerd's
        CRI plugin starts for each pod (it refuses an image with no command)."""
        ctx = self.base / "pause"
        ctx.mkdir(exist_ok=True)
        (ctx / "Containerfile").write_text(f'FROM {BASE_IMAGE}\nCMD ["sleep", "infinity"]\n')
        self("build", "--pull=never", "-t", name, str(ctx))

    def close(self) -> None:
        try:
            self("rm", "-a", "-f", "-t", "0", timeout=120, check=False)
            self("system", "reset", "-f", timeout=120, check=False)
        finally:
            for top in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
                if str(top) not in self.parents_before:
                    _remove_cgroup_tree(top)
            discard_tree(self.base)


CONTAINERD_CONF = """\
version = 2
root = "{base}/root"
state = "{base}/state"
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[debug]
  address = "{base}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Never pulled: imported with `ctr images import` (no registry is reachable).
  sandbox_image = "{pause}"
  # No CAP_SYS_RESOURCE on this machine: an oom_score_adj below the daemon's own is refused.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    # Empty: host-network pods only, no bridge, no iptables chains.
    conf_dir = "{base}/cni"
    bin_dir = "/usr/lib/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "{base}/runc"
"""


class Containerd:
    """A containerd of its own (root, state, sockets in base), stopped by its pid by close(),
    with everything it made removed: its pods, the shims' sockets in /run/containerd/s/, its
    cgroups under /kubepods, its mounts."""

    def __init__(self, base: Path, pause_image: str):
        self.base = base
        base.mkdir(parents=True)
        (base / "cni").mkdir()
        self.socket = base / "containerd.sock"
        self.state = base / "state"
        self.conf = base / "config.toml"
        self.conf.write_text(CONTAINERD_CONF.format(base=base, pause=pause_image))
        self.proc = None
        self.sandboxes: list = []
        self.shim_sockets_before = set(_listdir(Path("/run/containerd/s")))
        self.kubepods_before = {str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")}
        self.pod_uids: set = set()

    def start(self, timeout=30.0) -> None:
        self.log = open(self.base / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.conf)], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, env={"PATH": DEBIAN_PATH}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited: {(self.base / 'containerd.log').read_text()[-3000:]}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("containerd did not come up")

    def ctr(self, *args, timeout=300, check=True, stdin=subprocess.DEVNULL):
        return run(["ctr", "-a", str(self.socket), "-n", "k8s.io", *args], timeout=timeout, check=check, stdin=stdin)

    def cri(self, command: str, arg: str) -> dict:
        from conftest import REPO
        p = run([os.environ.get("OOMJ_CRI_PYTHON", "/usr/bin/python3"), str(Path(__file__).with_name("cri_driver.py")),
                 str(self.socket), command, arg], timeout=120, env={"PYTHONPATH": str(REPO / ".deps" / "cri")})
        return json.loads(p.stdout)

    def run_pod(self, **spec) -> dict:
        self.pod_uids.add(spec["uid"])
        spec.setdefault("log_dir", str(self.base / "pods" / spec["uid"]))
        Path(spec["log_dir"]).mkdir(parents=True, exist_ok=True)
        ids = self.cri("run", json.dumps(spec))
        self.sandboxes.append(ids["sandbox_id"])
        return ids

    def close(self) -> None:
        try:
            for sid in reversed(self.sandboxes):
                try:
                    self.cri("remove", sid)
                except AssertionError:
                    pass
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(30)
            if self.proc is not None:
                self.log.close()
            # The shims outlive containerd: stop ours (their sockets appeared during this run).
            for name in set(_listdir(Path("/run/containerd/s"))) - self.shim_sockets_before:
                Path("/run/containerd/s", name).unlink(missing_ok=True)
            # runc (cgroupfs driver) made /kubepods/burstable/pod<uid> in every v1 hierarchy.
            for uid in self.pod_uids:
                for d in Path("/sys/fs/cgroup").glob(f"*/kubepods/burstable/pod{uid}"):
                    _remove_cgroup_tree(d)
            for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
                if str(top) not in self.kubepods_before:
                    _remove_cgroup_tree(top)
            discard_tree(self.base)


def _listdir(path: Path) -> list:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove_cgroup_tree(top: Path) -> None:
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        top.rmdir()
    except OSError:
        pass


def new_uid() -> str:
    return str(uuid.uuid4())
