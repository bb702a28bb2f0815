"""enrich.containers: names read from each runtime's state, in fixture trees laid out as the
runtimes lay them (containerd 1.6's bundle and podman 4.3's containers.json as seen on this
machine, ../shared/CONTAINERS.md; CRI-O's and Docker's from their documentation), hostile
contents, the bounds, and the process cache's hook that reads names while a container runs.
The real runtimes: test_containers_e2e.py."""
from __future__ import annotations

import json

from oom_journal.enrich.cgroup import describe_cgroup
from oom_journal.enrich.containers import (
    MAX_NAME_CHARS,
    ContainerDirectory,
    ContainerNameReader,
    ContainerNames,
)
from oom_journal.enrich.event import OomEvent
from oom_journal.text import json_line
from test_event import HOST, Lookup, kill
from test_proc_cache import fixture_cache, make_proc

CID = "229baedfdbb9049e8218dcf1ea5cdce1b90a0241e9d123a40e64bb8cd6e26503"
UID = "a5561467-866a-4876-83cd-0545bf9eb503"
CRI_ANNOTATIONS = {  # what containerd 1.6's CRI plugin wrote here (CONTAINERS.md)
    "io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.image-name": "localhost/oom-journal:try", "io.kubernetes.cri.sandbox-id": "4ca4" + "0" * 60,
    "io.kubernetes.cri.sandbox-name": "web-0", "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": UID}


def reader(tmp_path) -> ContainerNameReader:
    return ContainerNameReader(containerd_state=str(tmp_path / "containerd"),
                               containers_storage=str(tmp_path / "storage"),
                               containers_runroot=str(tmp_path / "runroot"), docker_root=str(tmp_path / "docker"))


def write_json(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def containerd_bundle(tmp_path, cid=CID, annotations=CRI_ANNOTATIONS):
    path = tmp_path / "containerd" / "io.containerd.runtime.v2.task" / "k8s.io" / cid / "config.json"
    write_json(path, {"ociVersion": "1.0.2-dev", "annotations": annotations})
    return path


def test_containerd_cri_bundle(tmp_path):
    containerd_bundle(tmp_path)
    assert reader(tmp_path).read(CID) == ContainerNames("containerd", "app", "web-0", "shop", UID)


def test_crio_config_in_the_runroot(tmp_path):
    write_json(tmp_path / "runroot" / "overlay-containers" / CID / "userdata" / "config.json",
               {"annotations": {"io.kubernetes.container.name": "db", "io.kubernetes.pod.name": "pg-1",
                                "io.kubernetes.pod.namespace": "data", "io.kubernetes.pod.uid": UID}})
    assert reader(tmp_path).read(CID) == ContainerNames("cri-o", "db", "pg-1", "data", UID)


def test_podman_containers_json(tmp_path):
    write_json(tmp_path / "storage" / "overlay-containers" / "containers.json",
               [{"id": "f" * 64, "names": ["other"]}, {"id": CID, "names": ["web-victim"], "image": "x"}])
    write_json(tmp_path / "storage" / "overlay-containers" / CID / "userdata" / "config.json",
               {"annotations": {"io.container.manager": "libpod"}})  # podman's: no pod names in it
    assert reader(tmp_path).read(CID) == ContainerNames("podman", "web-victim")


def test_docker_config_v2(tmp_path):
    write_json(tmp_path / "docker" / "containers" / CID / "config.v2.json", {"Name": "/web", "Config": {"Labels": {}}})
    assert reader(tmp_path).read(CID) == ContainerNames("docker", "web")
    write_json(tmp_path / "docker" / "containers" / CID / "config.v2.json",  # cri-dockerd's labels
               {"Name": "/k8s_app_web-0", "Config": {"Labels": {"io.kubernetes.container.name": "app",
                                                                "io.kubernetes.pod.name": "web-0",
                                                                "io.kubernetes.pod.namespace": "shop"}}})
    assert reader(tmp_path).read(CID) == ContainerNames("docker", "app", "web-0", "shop")


def test_hostile_and_broken_state(tmp_path):
    """Whoever may create a container chooses these strings: they reach the journal exact (it
    keeps bytes) and JSON as one line, capped; broken files are no names, never an exception."""
    nasty = "app\nOOM_POD_NAME=forged\x1b[2J\u2028" + "\ud800" + "x" * 1000
    containerd_bundle(tmp_path, annotations={**CRI_ANNOTATIONS, "io.kubernetes.cri.container-name": nasty})
    names = reader(tmp_path).read(CID)
    assert len(names.container_name) == MAX_NAME_CHARS and "\ud800" not in names.container_name
    e = OomEvent.build(kill(task_memcg=f"/kubepods/burstable/pod{UID}/{CID}"), HOST, Lookup([b"x"]),
                       event_time=0, containers=ContainerDirectory(reader(tmp_path)))
    fields = e.journal_fields()
    assert fields["OOM_CONTAINER_NAME"].startswith("app\nOOM_POD_NAME=forged")  # one field, newline and all
    assert fields["OOM_POD_NAME"] == "web-0"
    line = json_line(e.document())
    assert "\n" not in line and "\u2028" not in line and json.loads(line)["pod_name"] == "web-0"
    assert "\n" not in e.message() and "\x1b" not in e.message()
    # Not JSON (also a file caught half-written), or not an object: not read (tried again later).
    for broken in ("{not json", json.dumps([1, 2]), "\xff\xfe"):
        write_json(containerd_bundle(tmp_path), broken)
        assert reader(tmp_path).read(CID) is None
    write_json(containerd_bundle(tmp_path), json.dumps({"annotations": "str"}))
    assert reader(tmp_path).read(CID) == ContainerNames("containerd")  # known, nameless
    assert reader(tmp_path).read("e" * 64) is None


def test_names_are_read_while_it_runs_and_kept_after_the_bundle_is_gone(tmp_path):
    """The process cache tells the directory each new process's cgroup (here: a scan of a fixture
    /proc); the names are read then. containerd deletes the bundle ~70 ms after the container's
    last process exits: the kill, read later, still gets them."""
    bundle = containerd_bundle(tmp_path)
    proc = tmp_path / "proc"
    proc.mkdir()
    d = make_proc(proc, 200, b"python3", b"python3\x00-c\x00x\x00")
    cgroup = f"/kubepods/burstable/pod{UID}/{CID}"
    (d / "cgroup").write_text(f"12:memory:{cgroup}\n0::/\n")
    directory = ContainerDirectory(reader(tmp_path))
    cache = fixture_cache(proc, on_cgroup=directory.observe)
    cache.start()
    try:
        assert len(directory) == 1
    finally:
        cache.stop()
    bundle.unlink()
    e = OomEvent.build(kill(task_memcg=cgroup), HOST, Lookup([b"x"]), event_time=0, containers=directory)
    f = e.journal_fields()
    assert (f["OOM_POD_NAME"], f["OOM_POD_NAMESPACE"], f["OOM_CONTAINER_NAME"]) == ("web-0", "shop", "app")
    assert f["OOM_CONTAINER_RUNTIME"] == "containerd"  # the cgroupfs path alone says "kubernetes"
    assert f["OOM_POD_UID"] == UID
    assert "of pod shop/web-0 container app:" in f["MESSAGE"]


def test_group_kill_every_member_carries_the_same_names(tmp_path):
    """memory.oom.group (Kubernetes 1.28+ on cgroup v2): the kernel kills every process of the
    container, one kill line each; each is its own event with the same names. (This machine's
    memory controller is v1, which has no oom.group: the kernel side is not run here.)"""
    containerd_bundle(tmp_path)
    directory = ContainerDirectory(reader(tmp_path))
    cgroup = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope"
    events = [OomEvent.build(kill(pid=pid, timestamp_us=79928453 + i, task_memcg=cgroup), HOST, Lookup([b"w"]),
                             event_time=0, containers=directory) for i, pid in enumerate((301, 302, 303))]
    assert len({e.event_id for e in events}) == 3
    assert {(e.document()["pod_name"], e.document()["pod_namespace"], e.document()["container_name"])
            for e in events} == {("web-0", "shop", "app")}
    assert directory.reads == 1


def test_bounds_and_retry(tmp_path):
    t = [0.0]
    directory = ContainerDirectory(reader(tmp_path), max_containers=3, max_paths=5, clock=lambda: t[0])
    ids = [f"{i:064x}" for i in range(6)]
    for cid in ids:
        containerd_bundle(tmp_path, cid)
        directory.observe(f"/kubepods/burstable/pod{UID}/{cid}")
    assert len(directory) == 3 and len(directory._paths) == 5
    # An id no runtime knows is read again only after RETRY_AFTER, however many execs it has.
    unknown = "/kubepods/burstable/pod%s/%s" % (UID, "d" * 64)
    before = directory.reads
    for _ in range(100):
        directory.observe(unknown)
    assert directory.reads == before + 1
    directory._paths.clear()
    t[0] += 2.0
    directory.observe(unknown)
    assert directory.reads == before + 2
    # Not a container: one describe_cgroup per path, no read at all.
    directory.observe("/system.slice/app.service")
    assert directory.reads == before + 2 and describe_cgroup("/system.slice/app.service").container_id is None
