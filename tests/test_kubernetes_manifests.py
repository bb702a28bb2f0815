"""packaging/kubernetes/ against the Kubernetes API's schemas, offline (PyPI's kubernetes-validate,
which ships them; installed by scripts/install-deps --test into .deps/k8s-validate and run in a
process of its own: it needs a newer jsonschema than Debian's), and the DaemonSet's pod spec
against the podman flags test_containers_e2e.py runs the image with (DAEMON_FLAGS there)."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import REPO, unavailable

MANIFESTS = REPO / "packaging" / "kubernetes"
VALIDATE = REPO / ".deps" / "k8s-validate"


def validate(*paths, version="1.28.0") -> subprocess.CompletedProcess:
    if not (VALIDATE / "kubernetes_validate").is_dir():
        unavailable("kubernetes-validate is not installed: scripts/install-deps --test")
    return subprocess.run(["/usr/bin/python3", "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, paths)],
                          capture_output=True, text=True, env={"PYTHONPATH": str(VALIDATE)}, timeout=120)


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_manifests_pass_the_api_schema(version):
    p = validate(*sorted(MANIFESTS.glob("*.yaml")), version=version)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(" passed for resource ") == 4, p.stdout


def test_the_validator_rejects_a_broken_daemonset(tmp_path):
    """The check can fail: the DaemonSet with hostPID as a string, and with an unknown field."""
    for change in (lambda s: s["spec"]["template"]["spec"].update(hostPID="true"),
                   lambda s: s["spec"]["template"]["spec"].update(hostPid=True)):
        ds = load("daemonset.yaml")
        change(ds)
        path = tmp_path / "ds.yaml"
        path.write_text(yaml.safe_dump(ds))
        p = validate(path)
        assert p.returncode != 0 and "did not validate" in p.stdout + p.stderr, p.stdout


def test_daemonset_pod_spec_is_what_the_podman_test_ran():
    """The mapping to test_containers_e2e.DAEMON_FLAGS (--privileged --pid=host --network=host
    --device /dev/kmsg, the state directory, the runtime's state read-only)."""
    spec = load("daemonset.yaml")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert spec["hostPID"] is True and spec["hostNetwork"] is True  # --pid=host --network=host
    assert c["securityContext"]["privileged"] is True  # --privileged
    kmsg = volumes[mounts["/dev/kmsg"]["name"]]["hostPath"]  # --device /dev/kmsg
    assert kmsg == {"path": "/dev/kmsg", "type": "CharDevice"}
    state = volumes[mounts["/var/lib/oom-journal"]["name"]]["hostPath"]  # -v /var/lib/oom-journal:...
    assert state["path"] == "/var/lib/oom-journal" and not mounts["/var/lib/oom-journal"].get("readOnly")
    for path in ("/run/containerd/io.containerd.runtime.v2.task", "/var/lib/containers/storage",
                 "/run/containers/storage"):  # -v <runtime state>:<same path>:ro
        assert mounts[path]["readOnly"] is True and volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert c["args"] == ["run", "--output", "stdout"]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["automountServiceAccountToken"] is False
    # Above README "Performance"'s start peak (VmHWM 200.6 MiB with all sinks): no OOM kill of its own.
    assert c["resources"]["limits"]["memory"] == "256Mi"
    secret = volumes[mounts["/etc/oom-journal/conf.d"]["name"]]["secret"]
    assert secret["defaultMode"] == 0o600


def test_configmap_and_secret_are_valid_configuration(tmp_path):
    """The ConfigMap's file and the Secret's, as the pod reads them, pass check-config."""
    conf = tmp_path / "oom-journal.conf"
    conf.write_text(load("configmap.yaml")["data"]["oom-journal.conf"])
    (tmp_path / "conf.d").mkdir()
    secret = tmp_path / "conf.d" / "secrets.conf"
    secret.write_text(load("secret.yaml")["stringData"]["secrets.conf"])
    secret.chmod(0o600)
    exe = REPO / ".venv" / "bin" / "oom-journal"
    outputs = []
    for path in (conf, secret):
        p = subprocess.run([str(exe), "check-config", "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        outputs.append(p.stdout)
    assert "output = stdout" in outputs[0].splitlines()
