"""Unit, slice, container and pod from the cgroup paths the kernel prints."""
import pytest

from oom_journal.enrich.cgroup import describe_cgroup

CID = "4f1a0c5e7b2d" + "0123456789abcdef" * 3 + "abcd"  # 64 hex digits
assert len(CID) == 64
POD = "0f5f1c3e-8a4b-4c2d-9e6f-1a2b3c4d5e6f"

CASES = [
    # path, unit, slice, container id, runtime, pod uid
    ("/system.slice/nginx.service", "nginx.service", "system.slice", None, None, None),
    ("/system.slice/demo.service/worker", "demo.service", "system.slice", None, None, None),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-1234.scope",
     "app-firefox-1234.scope", "app.slice", None, None, None),
    ("/machine.slice/machine-ct.scope/system.slice/run-r8a7b.service", "run-r8a7b.service", "system.slice", None, None, None),
    ("/process_api/3b9c/oom-ct/system.slice/run-u12.service", "run-u12.service", "system.slice", None, None, None),
    (f"/system.slice/docker-{CID}.scope", f"docker-{CID}.scope", "system.slice", CID, "docker", None),
    (f"/docker/{CID}", None, None, CID, "docker", None),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
     f"cri-containerd-{CID}.scope", f"kubepods-burstable-pod{POD.replace('-', '_')}.slice", CID, "containerd", POD),
    (f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{CID}.scope",
     f"crio-{CID}.scope", f"kubepods-pod{POD.replace('-', '_')}.slice", CID, "cri-o", POD),
    (f"/kubepods/burstable/pod{POD}/{CID}", None, None, CID, "kubernetes", POD),
    (f"/kubepods/pod{POD}/{CID}", None, None, CID, "kubernetes", POD),
    (f"/machine.slice/libpod-{CID}.scope/container", f"libpod-{CID}.scope", "machine.slice", CID, "podman", None),
    ("/", None, None, None, None, None),
    ("/oomtest", None, None, None, None, None),
    ("", None, None, None, None, None),
    (None, None, None, None, None, None),
]


@pytest.mark.parametrize("path,unit,slice_,cid,runtime,pod", CASES)
def test_describe_cgroup(path, unit, slice_, cid, runtime, pod):
    info = describe_cgroup(path)
    assert (info.unit, info.slice, info.container_id, info.container_runtime, info.pod_uid) == (unit, slice_, cid, runtime, pod)
