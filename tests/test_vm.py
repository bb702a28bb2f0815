"""The .deb on a real Debian 12: Debian's kernel 6.1, the pure cgroup v2 hierarchy, systemd 252 as
PID 1, booted in qemu (tests/debian_vm.py; the image is built once and cached). The jobs
(tests/vm/job-*.sh) run in the guest as root, as a Debian 12 administrator would: `apt install
./oom-journal_*.deb`, real OOM kills, a reboot, an upgrade, `apt purge`. Each test asserts on the
guest's own journal (`journalctl -o json` in the guest, copied out through the 9p share), on what
`journalctl -u UNIT` showed there, and on what the Slack stand-in in the guest received.

Four boots: the package (install, security, a MemoryMax= kill, a group kill, kills whose kill line
was lost with journald stopped and the kernel's buffer overrun, a podman container's
memory.oom.group kill, purge), a 512 MiB
guest's whole-machine OOM, a reboot, an upgrade. OOM kills happen only in the guest's memory:
nothing here can kill on the host.

Deselect with `-m "not vm"`.
"""
from __future__ import annotations

import collections
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import debian_vm
from conftest import MESSAGE_ID, REPO, unavailable
from test_package_e2e import DEB_NAME, DEBIAN_PATH, MAX_EXPOSURE, VERSION

pytestmark = pytest.mark.vm

VM = REPO / "tests" / "vm"
# The previous version, for the upgrade: the same tree with a lower version (below any 0.x.y
# release but 0.0.0; dpkg --compare-versions checks it is lower).
PREVIOUS = "0.0.1"
OLD_DEB_NAME = f"oom-journal_{PREVIOUS}_all.deb"
VICTIM_SCRIPT = "import time; time.sleep(1.5); b = b'x' * (256 << 20)"  # lives 1.5 s: its argv is seen first
SLACK_PORT = 18765  # in the guest, on its loopback: nothing else there listens
# Boots under TCG: 15-35 s to the job, the jobs 30-90 s; far over that is a hang.
BOOT_TIMEOUT = 420
BUDGET_SECONDS = 600  # README: the VM tests add at most 10 minutes once the image is cached
TIMINGS: dict = {}


def _run(argv, timeout, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root", **kwargs.pop("env", {})}
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, **kwargs)


# ----------------------------------------------------------------------------------------------
# Fixtures: the tools, the image, the two .debs, the four boots
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(root):
    missing = debian_vm.missing_tools()
    if missing:
        unavailable(f"missing {', '.join(missing)}: apt-get install qemu-system-x86 debootstrap e2fsprogs")
    for tool in ("dpkg-buildpackage", "lintian"):
        if shutil.which(tool, path=DEBIAN_PATH) is None:
            unavailable(f"missing {tool}: scripts/install-deps --test")
    path, seconds = debian_vm.ensure_image()
    TIMINGS["image build"] = seconds
    return path


def _build_deb(tree: Path, *args, env=None) -> str:
    p = _run(["bash", str(tree / "packaging" / "build-deb"), *args], timeout=300, cwd=tree, env=env or {})
    output = p.stdout + p.stderr
    assert p.returncode == 0, f"packaging/build-deb failed ({p.returncode}):\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def debs(image, tmp_path_factory) -> dict:
    """{"current": the .deb as packaging/build-deb makes it (lintian clean, as the package test
    requires), "previous": the same tree at version PREVIOUS}."""
    started = time.monotonic()
    output = _build_deb(REPO)
    assert not re.search(r"^[EW]: ", output, re.M), f"lintian reports errors or warnings:\n{output}"
    current = REPO / "dist" / DEB_NAME
    assert current.is_file(), output
    assert _run(["dpkg", "--compare-versions", PREVIOUS, "lt", VERSION], timeout=10).returncode == 0
    # A scratch copy with the version lowered where build-deb reads it (oom_journal/__init__.py
    # and the changelog's top entry, which it requires to agree).
    tree = tmp_path_factory.mktemp("previous") / "tree"
    tree.mkdir()
    for name in ("oom_journal", "pyproject.toml", "README.md", "config", "systemd", "man", "tests", "packaging"):
        src = REPO / name
        (shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
         if src.is_dir() else shutil.copy2(src, tree / name))
    init = tree / "oom_journal" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{VERSION}"', f'__version__ = "{PREVIOUS}"'))
    changelog = tree / "packaging" / "debian" / "changelog"
    changelog.write_text(changelog.read_text().replace(f"oom-journal ({VERSION})", f"oom-journal ({PREVIOUS})", 1))
    # nocheck: its build-time tests are the current tree's, run above already.
    _build_deb(tree, "--no-lintian", env={"DEB_BUILD_OPTIONS": "nocheck", "DEB_BUILD_PROFILES": "nocheck"})
    previous = tree / "dist" / OLD_DEB_NAME
    assert previous.is_file()
    TIMINGS["two .debs"] = time.monotonic() - started
    return {"current": current, "previous": previous}


def _params(directory: Path, token: str) -> dict:
    """params.sh and victim.argv for the job, and the victim's argv."""
    argv = ["/usr/bin/python3", "-c", VICTIM_SCRIPT, f"--token={token}", "an argument with spaces", "ünïcødé ✓ 日本"]
    (directory / "victim.argv").write_bytes(b"\0".join(a.encode() for a in argv))
    slack_path = f"/services/T0VMTEST/B0VMTEST/{token[:24]}"
    (directory / "params.sh").write_text(f"DEB={DEB_NAME}\nOLD_DEB={OLD_DEB_NAME}\nTOKEN={token}\n"
                                         f"SLACK_PORT={SLACK_PORT}\nSLACK_PATH={slack_path}\n")
    return {"argv": argv, "token": token, "slack_path": slack_path}


def _boot(name, job, debs, image, tmp_path_factory, **options):
    params_dir = tmp_path_factory.mktemp(f"{name}-params")
    params = _params(params_dir, secrets.token_hex(12))
    files = {"run.sh": VM / job, "lib.sh": VM / "lib.sh", "params.sh": params_dir / "params.sh",
             "victim.argv": params_dir / "victim.argv", DEB_NAME: debs["current"], OLD_DEB_NAME: debs["previous"],
             "slack_standin.py": REPO / "tests" / "slack_standin.py", "slack_guest.py": VM / "slack_guest.py"}
    result = debian_vm.boot(image, files, tmp_path_factory.mktemp(name), timeout=BOOT_TIMEOUT, **options)
    TIMINGS[f"boot: {name}"] = result.seconds
    assert (result.out / "done").exists() and result.journal, f"the {name} job did not finish:\n{result.describe()}"
    result.params = params
    return result


@pytest.fixture(scope="module")
def package_boot(image, debs, tmp_path_factory):
    return _boot("package", "job-package.sh", debs, image, tmp_path_factory)


@pytest.fixture(scope="module")
def global_boot(image, debs, tmp_path_factory):
    return _boot("global-oom", "job-global.sh", debs, image, tmp_path_factory, memory_mib=512)


@pytest.fixture(scope="module")
def reboot_boot(image, debs, tmp_path_factory):
    return _boot("reboot", "job-reboot.sh", debs, image, tmp_path_factory, allow_reboot=True)


@pytest.fixture(scope="module")
def upgrade_boot(image, debs, tmp_path_factory):
    return _boot("upgrade", "job-upgrade.sh", debs, image, tmp_path_factory)


# ----------------------------------------------------------------------------------------------
# Helpers on what a boot left
# ----------------------------------------------------------------------------------------------


def kills(boot, **matches) -> list:
    """oom-journal's entries in the guest's journal (its own writes: _SYSTEMD_UNIT=oom-journal.service)."""
    return boot.entries(MESSAGE_ID=MESSAGE_ID, _SYSTEMD_UNIT="oom-journal.service", **matches)


def unit_journal(boot, unit) -> list:
    """What `journalctl -u UNIT -o json` showed in the guest."""
    return [json.loads(line) for line in boot.text(f"{unit}.json").splitlines() if line]


def kernel_killed(boot) -> list:
    """Pids in the kernel's own `Killed process N (comm)` lines, in order."""
    return [int(m.group(1)) for e in boot.entries(_TRANSPORT="kernel") if isinstance(e.get("MESSAGE"), str)
            for m in [re.search(r"Killed process (\d+) \(", e["MESSAGE"])] if m]


def daemon_story(boot, unit="oom-journal.service") -> str:
    """For assertion messages: with the guest's monotonic seconds, what PID 1 said of the unit (a
    watchdog timeout, an exit status, a restart), what the daemon logged, and the kernel's OOM
    lines: why a daemon was restarted, or recorded a kill without its command line."""
    lines = []
    for e in boot.journal:
        m = e.get("MESSAGE")
        if not isinstance(m, str):
            continue
        ours = e.get("_SYSTEMD_UNIT") == unit
        pid1 = e.get("_PID") == "1" and (e.get("UNIT") == unit or unit in m)
        kernel = e.get("_TRANSPORT") == "kernel" and re.search(r"invoked oom-killer|Killed process|oom-kill:", m)
        if ours or pid1 or kernel:
            who = "daemon" if ours else "pid1" if pid1 else "kernel"
            lines.append(f"{int(e.get('__MONOTONIC_TIMESTAMP', 0)) / 1e6:9.3f} {who:6} {m[:300]}")
    return "\n".join(lines)


def assert_no_event_twice(boot):
    ids = collections.Counter(e.get("OOM_EVENT_ID") for e in kills(boot))
    twice = {i: n for i, n in ids.items() if n > 1}
    assert not twice and None not in ids, f"recorded more than once (or without an id): {ids}"


def assert_memmax_kill(boot, unit):
    """`journalctl -u UNIT` shows oom-journal's entry with the whole command line, and systemd's own
    `Failed with result 'oom-kill'`."""
    shown = unit_journal(boot, unit)
    ours = [e for e in shown if e.get("MESSAGE_ID") == MESSAGE_ID]
    assert len(ours) == 1, f"journalctl -u {unit}: {[e.get('MESSAGE') for e in shown]}\n{boot.describe()}"
    e = ours[0]
    argv = boot.params["argv"]
    assert e["OOM_CMDLINE"] == " ".join(argv), e.get("OOM_CMDLINE_NOTE")
    assert e["OOM_ARGV"] == list(b"\0".join(a.encode() for a in argv))  # journalctl -o json: bytes, as numbers
    assert e["OOM_UNIT"] == unit and e["OBJECT_SYSTEMD_UNIT"] == unit and e["_SYSTEMD_UNIT"] == "oom-journal.service"
    assert e["OOM_COMM"] == "python3" and e["OOM_CONSTRAINT"] == "CONSTRAINT_MEMCG"
    assert e["OOM_CGROUP"] == f"/system.slice/{unit}"  # cgroup v2: the unit's own path, no hierarchy prefix
    assert e["OOM_MEMCG_LIMIT_KB"] == str(40 << 10)
    assert int(e["OOM_PID"]) in kernel_killed(boot)
    systemd_says = [x for x in shown if x.get("_PID") == "1" and x.get("MESSAGE") == f"{unit}: Failed with result 'oom-kill'."]
    assert systemd_says, [x.get("MESSAGE") for x in shown]
    return e


# ----------------------------------------------------------------------------------------------
# Boot 1: the package
# ----------------------------------------------------------------------------------------------


def test_the_guest_is_debian_12_with_its_kernel_cgroup_v2_and_systemd(package_boot):
    facts = dict(line.split("=", 1) for line in package_boot.text("facts").splitlines())
    assert re.match(r"6\.1\.\d+-\d+-amd64$", facts["kernel"]), facts
    assert facts["debian"].startswith("12."), facts
    assert facts["pid1"] == "systemd" and facts["systemd"].startswith("systemd 252"), facts
    assert facts["cgroupfs"] == "cgroup2fs", facts


def test_apt_install_resolves_offline_and_starts_the_service(package_boot):
    install = package_boot.text("apt-install.txt")
    assert install.rstrip().endswith("rc=0"), install
    for dependency in ("python3-systemd", "python3-sdnotify", "python3-requests", "python3-configargparse"):
        assert re.search(rf"Setting up {dependency} ", install), install
    assert "Created symlink /etc/systemd/system/multi-user.target.wants/oom-journal.service" in install
    assert package_boot.text("is-active").strip() == "active"
    started = package_boot.messages(_PID="1", UNIT="oom-journal.service")
    assert any(m.startswith("Started oom-journal.service") for m in started), started


def test_systemd_analyze_security_rates_the_unit_as_documented(package_boot):
    out = package_boot.text("security.txt")
    m = re.search(r"Overall exposure level for oom-journal\.service: (\d+\.\d+)", out)
    assert m, out
    documented = re.search(r"`systemd-analyze security oom-journal` rates the unit \*\*(\d+\.\d+)\*\*",
                           (REPO / "README.md").read_text())
    assert documented and float(m.group(1)) == float(documented.group(1)), (m.group(1), out)
    assert float(m.group(1)) <= MAX_EXPOSURE


def test_memorymax_kill_is_in_the_units_journal_with_the_whole_command_line(package_boot):
    e = assert_memmax_kill(package_boot, "oomj-memmax.service")
    assert package_boot.text("memmax-result").strip() == "Result=oom-kill"
    assert e["OOM_GLOBAL"] == "0"


def test_group_kill_one_entry_per_kernel_killed_member(package_boot):
    """OOMPolicy=kill: systemd 252 sets memory.oom.group=1 (the cgroup's file reads 1 before the
    kill), so the kernel, after killing its victim, goes through the unit's cgroup killing the
    other members too (mm/oom_kill.c: oom_kill_process() -> mem_cgroup_scan_tasks(
    oom_kill_memcg_member); "Tasks in ... are going to be killed due to memory.oom.group set"),
    printing `Killed process N` for each it kills. PID 1, told of the kill through memory.events,
    then stops the unit and SIGKILLs every process still there (`Killing process N ... with signal
    SIGKILL`). Measured in this guest: one run the kernel killed all 4 members (sh and the three
    python3) and systemd's SIGKILL reached sh, already dying; another run the kernel killed 3
    (its victim, sh and one python3; "OOM victim N is already exiting. Skip killing the task" for
    the victim on the group pass) and the last python3 died of systemd's SIGKILL alone. A SIGKILL
    from systemd is no OOM kill: what is recorded is exactly the kernel's kills, each once, each
    with its own command line, and every member died of one or the other."""
    b = package_boot
    assert b.text("group-oom-group").strip() == "1"
    members = {int(pid): " ".join(argv) for pid, argv in b.json("group-members.json").items()}  # before the kill
    pythons = {pid for pid, cmdline in members.items() if cmdline.startswith("python3 -c ")}
    assert len(pythons) == 3 and len(members) == 4, members  # sh and its three python3
    kernel_lines = b.messages(_TRANSPORT="kernel")
    assert any("oomj-group.service are going to be killed due to memory.oom.group set" in m for m in kernel_lines)
    victim = int(next(m for m in (re.search(r"task_memcg=/system\.slice/oomj-group\.service,task=\S+?,pid=(\d+),", x)
                                  for x in kernel_lines) if m).group(1))
    # The victim's kill line may come twice (killed, then reached again by the group's scan:
    # "Killed process" for the same pid; seen in this guest): one kill.
    by_kernel = list(dict.fromkeys(pid for pid in kernel_killed(b) if pid in members))
    shown = unit_journal(b, "oomj-group.service")
    by_systemd = {int(m.group(1)) for x in shown if x.get("_PID") == "1"
                  for m in [re.search(r"Killing process (\d+) \(.*\) with signal SIGKILL", x.get("MESSAGE", ""))] if m}
    assert victim in by_kernel and len(by_kernel) >= 2, (victim, by_kernel)  # the victim, then the group
    assert len(by_kernel) == len(set(by_kernel))
    assert set(by_kernel) | by_systemd == set(members), (by_kernel, by_systemd, members)
    ours = [e for e in shown if e.get("MESSAGE_ID") == MESSAGE_ID]
    pids = [int(e["OOM_PID"]) for e in ours]
    # Every kernel kill, once; none of systemd's own.
    assert sorted(pids) == sorted(by_kernel), (pids, by_kernel, by_systemd)
    for e in ours:
        pid = int(e["OOM_PID"])
        assert e["OOM_CMDLINE"] == members[pid], (pid, e.get("OOM_CMDLINE"), e.get("OOM_CMDLINE_NOTE"))
        assert e["OOM_UNIT"] == "oomj-group.service"
    # The python3 members' distinct argv (--member=N) each went to its own entry.
    recorded = [re.search(r"--member=(\d) --token=(\w+)$", e["OOM_CMDLINE"]).groups()
                for e in ours if int(e["OOM_PID"]) in pythons]
    assert recorded and len(set(recorded)) == len(recorded) and {t for _, t in recorded} == {b.params["token"]}
    assert b.text("group-result").strip() == "Result=oom-kill"
    assert_no_event_twice(b)
    sys.stderr.write(f"group kill: kernel killed {sorted(by_kernel)}, systemd SIGKILLed {sorted(by_systemd)}\n")


JOURNALD_MISSED = "e9bf28e6e834481bb6f48f548ad13606"  # journald's "Missed N kernel messages"


def _line_not_in_guest_journal(boot, pid):
    """journald never stored the kernel's `Killed process PID` line (overwritten before it read)."""
    return not [m for m in boot.messages(_TRANSPORT="kernel") if f"Killed process {pid} (" in m]


def test_lost_kill_journald_stopped_buffer_overrun_is_one_entry_with_the_command_line(package_boot):
    """Issue 16 on cgroup v2 (tests/vm/job-package.sh, "lost: journald stopped"): journald
    SIGSTOPped, a young victim killed in the job's own cgroup /oomj-lost (memory.max 48 MiB),
    1 MiB written into /dev/kmsg (printk_devkmsg=on, restored), journald continued: journald
    missed the kill line, and the daemon's entry is there once, with the whole command line."""
    b = package_boot
    assert b.text("devkmsg-after") == b.text("devkmsg-before") != "", (b.text("devkmsg-before"), b.text("devkmsg-after"))
    assert b.text("lost-memory-events").strip() == "oom_kill 1"  # the kernel killed once in that cgroup
    ours = kills(b, OOM_CGROUP="/oomj-lost")
    assert len(ours) == 1, f"{[(e.get('OOM_PID'), e.get('MESSAGE')) for e in ours]}\n{b.describe()}"
    e = ours[0]
    argv = ["/usr/bin/python3", "-S", "-c", "b = b'x' * (256 << 20)", f"young-{b.params['token']}", "y" * 300]
    assert e["OOM_CMDLINE"] == " ".join(argv), (e.get("OOM_CMDLINE"), e.get("OOM_CMDLINE_NOTE"))
    assert e["OOM_KERNEL_REPORT"] == "lost" and e["OOM_WITNESS"] in ("kmsg", "exit"), e
    sys.stderr.write(f"lost kill (journald stopped): recorded by the {e['OOM_WITNESS']} witness\n")
    assert _line_not_in_guest_journal(b, e["OOM_PID"]), "journald has the kill line: nothing was lost"
    assert b.entries(MESSAGE_ID=JOURNALD_MISSED), "journald did not miss kernel messages: no overrun"


def test_lost_kill_in_a_unit_systemd_removed_is_identified_through_v2_memory_events(package_boot):
    """The daemon stopped too: when it runs again the kill line is gone and systemd has removed
    the unit's cgroup (/system.slice/oomj-lost2.service, out/lost2-cgroup). The kill is named by
    the connector's SIGKILL exit and confirmed by cgroup v2's memory.events oom_kill of the
    cgroup's nearest ancestor (/system.slice), which counts its children's kills: one entry, the
    victim's command line, its unit. (Before: `OOM_WITNESS=counter`, an unnamed kill.)"""
    b = package_boot
    assert b.text("lost2-cgroup").strip() == "gone", "the unit's cgroup was still there: not the case tested"
    assert b.text("lost2-result").strip() == "Result=oom-kill"
    shown = unit_journal(b, "oomj-lost2.service")
    ours = [e for e in shown if e.get("MESSAGE_ID") == MESSAGE_ID]
    assert len(ours) == 1, (f"{[x.get('MESSAGE') for x in shown]}\n{[x.get('MESSAGE') for x in kills(b)]}\n"
                            + "".join(b.text(f) for f in ("lost2-vmstat-before", "lost2-vmstat-after",
                                                          "lost2-status-before", "lost2-status-after")))
    e = ours[0]
    argv = ["/usr/bin/python3", "-S", "-c", "import os, time; [time.sleep(0.05) for _ in iter(lambda: "
            "os.path.exists('/run/oomj-lost2-go'), True)]; b = b'x' * (256 << 20)",
            f"lost2-{b.params['token']}", "an argument with spaces"]
    assert e["OOM_CMDLINE"] == " ".join(argv), (e.get("OOM_CMDLINE"), e.get("OOM_CMDLINE_NOTE"))
    assert e["OOM_KERNEL_REPORT"] == "lost" and e["OOM_WITNESS"] == "exit", e
    assert e["OOM_CGROUP"] == "/system.slice/oomj-lost2.service" and e["OOM_UNIT"] == "oomj-lost2.service"
    assert "ancestor /system.slice's oom_kill counter rose" in e["OOM_WITNESS_NOTE"], e["OOM_WITNESS_NOTE"]
    assert _line_not_in_guest_journal(b, e["OOM_PID"])
    assert not kills(b, OOM_WITNESS="counter"), [x.get("OOM_WITNESS_NOTE") for x in kills(b, OOM_WITNESS="counter")]
    assert_no_event_twice(b)


def test_podman_container_memory_oom_group_kill_every_member_one_event_with_the_containers_names(package_boot):
    """Issue 13 on cgroup v2 with a real runtime: podman 4.3 in the guest (crun, systemd cgroup
    manager), a container with --memory 48m and --cgroup-conf memory.oom.group=1 (what kubelet
    1.28+ sets on each container's cgroup), from an image imported in the guest (no registry):
    sh and three python3 that allocate 20 MiB each. The kernel kills the group (mm/oom_kill.c:
    "Tasks in <cg> are going to be killed due to memory.oom.group set", a `Killed process` line
    per member it reaches). Members it did not reach died of SIGKILL when sh, the container's PID 1
    and the oldest task (killed first), ended its pid namespace: no OOM kills, not recorded
    (measured in this guest: 3 of the 4 killed by the kernel). The daemon, with its default options, reads
    the container's name from podman's containers.json while it runs: every member the kernel
    killed is one entry, each with its own command line, all with the container's id and name, the
    group's cgroup, and one incident."""
    b = package_boot
    name = f"oomj-web-{b.params['token'][:8]}"
    assert b.text("podman-run.txt").rstrip().endswith("rc=0"), b.text("podman-run.txt")
    (inspect,) = b.json("podman-inspect.json")
    container_id = inspect["Id"]
    assert inspect["Name"] == name and re.fullmatch(r"[0-9a-f]{64}", container_id)
    assert b.text("podman-oom-group").strip() == "1" and b.text("podman-memory-max").strip() == str(48 << 20)
    group = b.text("podman-group-cgroup").strip().removeprefix("/sys/fs/cgroup")
    assert container_id in group, group
    assert b.text("podman-wait").strip() == "137", b.text("podman-wait")  # its sh: SIGKILL
    members = {int(pid): " ".join(argv) for pid, argv in b.json("podman-members.json").items()}
    assert len(members) == 4 and sum(c.startswith("python3 -S -c ") for c in members.values()) == 3, members
    kernel_lines = b.messages(_TRANSPORT="kernel")
    assert f"Tasks in {group} are going to be killed due to memory.oom.group set" in kernel_lines, \
        [m for m in kernel_lines if "oom.group" in m]
    # The victim's kill line may come twice (killed, then reached again by the group's scan): one kill.
    by_kernel = list(dict.fromkeys(pid for pid in kernel_killed(b) if pid in members))
    assert len(by_kernel) >= 2, (by_kernel, members)  # the victim, then the group
    ours = kills(b, OOM_CONTAINER_ID=container_id)
    assert sorted(int(e["OOM_PID"]) for e in ours) == sorted(by_kernel), \
        ([(e["OOM_PID"], e.get("OOM_CMDLINE")) for e in ours], by_kernel, members)
    for e in ours:
        assert e["OOM_CMDLINE"] == members[int(e["OOM_PID"])], (e.get("OOM_CMDLINE"), e.get("OOM_CMDLINE_NOTE"))
        assert (e["OOM_CONTAINER_NAME"], e["OOM_CONTAINER_RUNTIME"]) == (name, "podman"), e
        assert e["OOM_CGROUP"].startswith(group) and e["OOM_MEMCG"] == group, e
    assert len({e["OOM_EVENT_ID"] for e in ours}) == len(ours)
    assert len({e["OOM_INCIDENT_ID"] for e in ours}) == 1, [e["OOM_INCIDENT_ID"] for e in ours]
    # Every member the kernel killed after the "Tasks in" line carries the group (the first victim,
    # killed before it, may not: enrich/incident.py joins it by its cgroup).
    assert sum(e.get("OOM_GROUP") == group for e in ours) >= len(ours) - 1, [e.get("OOM_GROUP") for e in ours]
    # The python3 members' distinct argv (--member=N) each went to its own entry.
    recorded = [re.search(r" --member=(\d) --token=(\w+)$", e["OOM_CMDLINE"]).groups()
                for e in ours if e["OOM_CMDLINE"].startswith("python3 ")]
    assert recorded and len(set(recorded)) == len(recorded) and {t for _, t in recorded} == {b.params["token"]}
    assert_no_event_twice(b)
    sys.stderr.write(f"podman group kill: kernel killed {sorted(by_kernel)} of {sorted(members)}\n")


def test_apt_purge_leaves_nothing_behind(package_boot):
    b = package_boot
    assert b.text("is-active-before-purge").strip() == "active"
    purge = b.text("apt-purge.txt")
    assert purge.rstrip().endswith("rc=0") and "Purging configuration files for oom-journal" in purge, purge
    assert b.text("purge-left").strip() == "", b.text("purge-left")
    assert "not-installed" in b.text("purge-dpkg") or "no packages found" in b.text("purge-dpkg"), b.text("purge-dpkg")
    assert b.text("is-active-after-purge").strip() in ("inactive", "unknown")


# ----------------------------------------------------------------------------------------------
# Boot 2: a whole-machine OOM in a 512 MiB guest
# ----------------------------------------------------------------------------------------------


def test_whole_machine_oom_is_recorded_as_global(global_boot):
    b = global_boot
    ours = kills(b, OOM_UNIT="oomj-global.service")
    assert len(ours) == 1, f"{[e.get('MESSAGE') for e in kills(b)]}\n{b.describe()}"
    e = ours[0]
    assert e["OOM_GLOBAL"] == "1" and e["OOM_CONSTRAINT"] == "CONSTRAINT_NONE", e
    assert e.get("OOM_CMDLINE", "").endswith(f"--token={b.params['token']}") and e["OOM_COMM"] == "python3", \
        f"{e.get('OOM_CMDLINE_NOTE')}\n{daemon_story(b)}"
    assert "OOM_MEMCG_LIMIT_KB" not in e
    kernel = [m for m in b.messages(_TRANSPORT="kernel") if "global_oom" in m and "oomj-global.service" in m]
    assert kernel, "no kernel report of a global OOM"


def test_daemon_survives_the_whole_machine_oom_and_records_the_next_kill(global_boot):
    b = global_boot
    assert b.text("is-active-after-global").strip() == "active"
    before = dict(line.split("=", 1) for line in b.text("daemon-before").split())
    after = dict(line.split("=", 1) for line in b.text("daemon-after").split())
    stalled = dict(line.split("=", 1) for line in b.text("daemon-after-stall").split())
    # the same process, never restarted: through the thrash, and through 45 s without running
    # (WatchdogSec=3min; with 30 it was restarted)
    assert before == after == stalled and after["NRestarts"] == "0", \
        f"{before} {after} after the stop: {stalled}\n{b.text('global.run')}\n{daemon_story(b)}"
    assert_memmax_kill(b, "oomj-later.service")
    assert_no_event_twice(b)


# ----------------------------------------------------------------------------------------------
# Boot 3: a reboot with a Slack delivery pending
# ----------------------------------------------------------------------------------------------


def _posts_by_event(received, event_ids) -> dict:
    return {i: sum(1 for r in received if r["status"] == 200 and i in r["body"]) for i in event_ids}


def test_reboot_delivers_the_pending_kill_once_and_records_nothing_again(reboot_boot):
    b = reboot_boot
    assert b.text("boots").strip() == "2" and b.markers.get("VMJOB-REBOOT"), b.describe()
    first = kills(b, OOM_UNIT="oomj-boot1.service")
    second = kills(b, OOM_UNIT="oomj-boot2.service")
    assert len(first) == 1 and len(second) == 1, [(e["_BOOT_ID"], e.get("MESSAGE")) for e in kills(b)]
    assert first[0]["_BOOT_ID"] != second[0]["_BOOT_ID"]
    assert len(kills(b)) == 2  # nothing of boot 1 recorded again in boot 2
    assert_no_event_twice(b)
    one, two = first[0]["OOM_EVENT_ID"], second[0]["OOM_EVENT_ID"]
    assert first[0]["OOM_CMDLINE"] == " ".join(b.params["argv"])
    # Before the reboot its delivery was pending: in the outbox, for the Slack sink, attempted.
    pending = [r for r in b.json("state-boot1.json")["outbox"] if r["event_id"] == one]
    assert [r["sink"] for r in pending] == ["slack"] and pending[0]["attempts"] >= 1, pending
    received = b.json("slack-received.json")
    assert all(r["path"] == b.params["slack_path"] for r in received)
    assert _posts_by_event(received, (one, two)) == {one: 1, two: 1}, [r["body"][:300] for r in received]
    assert b.json("state-boot2.json")["outbox"] == []


# ----------------------------------------------------------------------------------------------
# Boot 4: the upgrade from the previous version
# ----------------------------------------------------------------------------------------------


def test_upgrade_keeps_state_outbox_and_configuration(upgrade_boot):
    b = upgrade_boot
    assert b.text("apt-install-old.txt").rstrip().endswith("rc=0"), b.text("apt-install-old.txt")
    new = b.text("apt-install-new.txt")
    assert new.rstrip().endswith("rc=0") and f"Unpacking oom-journal ({VERSION}) over ({PREVIOUS})" in new, new
    assert b.text("version-old").strip() == PREVIOUS and b.text("version-new").strip() == VERSION
    # The administrator's conffile: kept as changed, without a prompt (the package's own is unchanged).
    assert b.text("conffile-before") == b.text("conffile-after")
    assert "# changed by the administrator (vm upgrade test)" in b.text("conffile")
    assert b.text("conffile-mode").strip() == "600"
    assert not [m for m in b.messages(SYSLOG_IDENTIFIER="oom-journal") if "readable by users other than root" in m]
    assert b.text("invocation-before") != b.text("invocation-after")  # restarted: the new code runs
    before, after = b.json("state-before.json"), b.json("state-after.json")
    (old,) = kills(b, OOM_UNIT="oomj-old.service")
    event = old["OOM_EVENT_ID"]
    assert event in {r["event_id"] for r in before["recorded"]}
    assert {r["event_id"] for r in before["recorded"]} <= {r["event_id"] for r in after["recorded"]}
    assert [(r["id"], r["sink"], r["event_id"]) for r in before["outbox"]] == [(r["id"], r["sink"], event) for r in after["outbox"]] \
        and [r["sink"] for r in before["outbox"]] == ["slack"], (before["outbox"], after["outbox"])
    received = b.json("slack-received.json")
    assert _posts_by_event(received, (event,)) == {event: 1}, [r["body"][:300] for r in received]
    assert b.json("state-end.json")["outbox"] == []
    assert len(kills(b)) == 1
    assert_no_event_twice(b)


# ----------------------------------------------------------------------------------------------
# The budget
# ----------------------------------------------------------------------------------------------


def test_vm_boots_stay_within_the_ci_budget(package_boot, global_boot, reboot_boot, upgrade_boot, capsys):
    boots = {k: v for k, v in TIMINGS.items() if k.startswith("boot:")}
    with capsys.disabled():
        sys.stderr.write("\nVM timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items()) + "\n")
    assert len(boots) == 4 and sum(boots.values()) + TIMINGS.get("two .debs", 0) <= BUDGET_SECONDS, TIMINGS
