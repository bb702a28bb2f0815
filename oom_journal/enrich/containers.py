"""Who a container is: its name, and its pod's name and namespace, from the runtime's own state.

The kernel names a victim's container only by its cgroup (enrich.cgroup reads the id and the pod
UID from it); what operators ask is *which pod, in which namespace, which container*. Every
runtime keeps that on the node, in files, and nothing here asks a network API:

  containerd (CRI)  <state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json, the OCI
                    bundle: annotations io.kubernetes.cri.container-name, .sandbox-name (the pod),
                    .sandbox-namespace, .sandbox-uid (containerd 1.6, seen in ../shared/CONTAINERS.md)
  CRI-O             <runroot or root>/<driver>-containers/<id>/userdata/config.json: annotations
                    io.kubernetes.container.name, io.kubernetes.pod.name, .pod.namespace, .pod.uid
  podman            <root>/<driver>-containers/containers.json: [{"id", "names": [...]}]
  Docker            <root>/containers/<id>/config.v2.json: "Name" ("/web"), Config.Labels (the
                    io.kubernetes.* labels cri-dockerd sets)

containerd deletes the bundle about 70 ms after the container's last process exits (measured:
CONTAINERS.md), long before the kill line is read. So the names are read while the container runs:
the process cache calls observe() with each process's memory cgroup as it reads it (the exec event,
or the scan), and the first sighting of a container id reads its names. They are kept, bounded, for
the kills that come later. Everything in these files is hostile input (any user who may create a
container chooses it): names are capped in length, and reach the journal and JSON through the
encoders of oom_journal.text like every other text.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from oom_journal.records import dataclass
from typing import Callable, Optional

from oom_journal.enrich.cgroup import CgroupInfo, describe_cgroup

log = logging.getLogger(__name__)

DEFAULT_CONTAINERD_STATE = "/run/containerd"  # containerd's `state` (containerd-config.toml(5))
DEFAULT_CONTAINERS_STORAGE = "/var/lib/containers/storage"  # containers-storage.conf(5) graphroot
DEFAULT_CONTAINERS_RUNROOT = "/run/containers/storage"  # containers-storage.conf(5) runroot
DEFAULT_DOCKER_ROOT = "/var/lib/docker"  # dockerd --data-root

# Kubernetes names are at most 253 characters (DNS subdomain), container names 63; a runtime's
# own names are not limited, and a hostile one must not fill the journal entry.
MAX_NAME_CHARS = 256
# The largest state file read: a config.json is a few KiB; containers.json grows by ~1 KiB per
# container (podman's, measured at 0.9 KiB), so 16 MiB holds 16,000 containers.
MAX_FILE_BYTES = 16 << 20
# Containers whose names are kept. A node runs at most 110 pods by default (kubelet maxPods);
# this keeps the names of many generations of them.
MAX_CONTAINERS = 4096
# Cgroup paths remembered as already looked at, so that an exec in a known cgroup costs one dict
# look-up on the cache thread's hot path.
MAX_PATHS = 16384
# A container id whose state was not found is tried again no sooner than this (its runtime may
# write the state a moment after the first process runs; a process outside any runtime's state,
# such as a test's cgroup, must not cost a read per exec).
RETRY_AFTER = 1.0

_CRI = "io.kubernetes.cri."
_CRIO = "io.kubernetes."


@dataclass(frozen=True)
class ContainerNames:
    runtime: str  # where the names were read: containerd, cri-o, podman, docker
    container_name: Optional[str] = None
    pod_name: Optional[str] = None
    pod_namespace: Optional[str] = None
    pod_uid: Optional[str] = None


def _name(value) -> Optional[str]:
    """A name as the journal and JSON may carry it: a str, capped, with no lone surrogate (a JSON
    file may spell one as \\udXXX; it could not be encoded as UTF-8)."""
    if not isinstance(value, str) or not value:
        return None
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")[:MAX_NAME_CHARS]


def _read_json(path: str):
    """The file's JSON, or None when it is absent, unreadable, too large or not JSON."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE_BYTES:
        log.debug("%s: larger than %d bytes, not read", path, MAX_FILE_BYTES)
        return None
    try:
        return json.loads(data)
    except ValueError:  # also a file being rewritten, caught half-written
        return None


def _from_annotations(runtime: str, annotations) -> Optional[ContainerNames]:
    if not isinstance(annotations, dict):
        return None
    if runtime == "containerd":
        names = ContainerNames("containerd", _name(annotations.get(_CRI + "container-name")),
                               _name(annotations.get(_CRI + "sandbox-name")),
                               _name(annotations.get(_CRI + "sandbox-namespace")),
                               _name(annotations.get(_CRI + "sandbox-uid")))
    else:  # CRI-O's annotations, and the labels cri-dockerd puts on Docker containers
        names = ContainerNames(runtime, _name(annotations.get(_CRIO + "container.name")),
                               _name(annotations.get(_CRIO + "pod.name")),
                               _name(annotations.get(_CRIO + "pod.namespace")),
                               _name(annotations.get(_CRIO + "pod.uid")))
    if names.container_name is None and names.pod_name is None:
        return None
    return names


class ContainerNameReader:
    """Reads a container's names from the runtimes' state directories (the real ones by default;
    tests point them at private instances). Each read_* returns None when that runtime does not
    know the id."""

    def __init__(self, containerd_state: str = DEFAULT_CONTAINERD_STATE,
                 containers_storage: str = DEFAULT_CONTAINERS_STORAGE,
                 containers_runroot: str = DEFAULT_CONTAINERS_RUNROOT,
                 docker_root: str = DEFAULT_DOCKER_ROOT):
        self.containerd_state = containerd_state
        self.containers_storage = containers_storage
        self.containers_runroot = containers_runroot
        self.docker_root = docker_root

    def read(self, container_id: str) -> Optional[ContainerNames]:
        # Any runtime may own an id: the cgroupfs driver's /kubepods/.../pod<uid>/<id> does not
        # say which (enrich.cgroup calls it "kubernetes"), and ids are 64 random hex digits, so
        # the first runtime that knows it is the one.
        for read in (self.read_containerd, self.read_containers_storage, self.read_docker):
            try:
                names = read(container_id)
            except (OSError, ValueError, TypeError, AttributeError) as e:  # hostile or odd state
                log.debug("names of container %s: %s", container_id[:12], e)
                names = None
            if names is not None:
                return names
        return None

    def read_containerd(self, container_id: str) -> Optional[ContainerNames]:
        tasks = os.path.join(self.containerd_state, "io.containerd.runtime.v2.task")
        try:
            namespaces = os.listdir(tasks)  # k8s.io for the CRI plugin; moby, default, ...
        except OSError:
            return None
        for namespace in namespaces:
            config = _read_json(os.path.join(tasks, namespace, container_id, "config.json"))
            if isinstance(config, dict):
                return (_from_annotations("containerd", config.get("annotations"))
                        or ContainerNames("containerd"))
        return None

    def read_containers_storage(self, container_id: str) -> Optional[ContainerNames]:
        """CRI-O and podman share containers/storage: <driver>-containers/ under the root (podman's
        config.json, and containers.json with the names) and the runroot (CRI-O's config.json)."""
        for root in (self.containers_runroot, self.containers_storage):
            for drivers in _driver_dirs(root):
                config = _read_json(os.path.join(drivers, container_id, "userdata", "config.json"))
                if isinstance(config, dict):
                    names = _from_annotations("cri-o", config.get("annotations"))
                    if names is not None:
                        return names
        for drivers in _driver_dirs(self.containers_storage):
            listing = _read_json(os.path.join(drivers, "containers.json"))
            for c in listing if isinstance(listing, list) else ():
                if isinstance(c, dict) and c.get("id") == container_id:
                    names = c.get("names")
                    return ContainerNames("podman", _name(names[0]) if isinstance(names, list) and names else None)
        return None

    def read_docker(self, container_id: str) -> Optional[ContainerNames]:
        config = _read_json(os.path.join(self.docker_root, "containers", container_id, "config.v2.json"))
        if not isinstance(config, dict):
            return None
        labels = (config.get("Config") or {}).get("Labels")
        names = _from_annotations("docker", labels)
        if names is not None:
            return names
        name = config.get("Name")
        return ContainerNames("docker", _name(name.lstrip("/")) if isinstance(name, str) else None)


def _driver_dirs(root: str) -> list:
    """overlay-containers, vfs-containers, ...: one per storage driver used under this root."""
    try:
        return [os.path.join(root, d) for d in sorted(os.listdir(root)) if d.endswith("-containers")]
    except OSError:
        return []


class ContainerDirectory:
    """The names of the containers seen on this node, by container id, bounded (LRU).

    observe() runs on the process cache's thread, for every process it reads; names_for() on the
    daemon's, for a kill. Both under one lock: a read of a config.json takes ~50 µs and happens
    once per container.
    """

    def __init__(self, reader: Optional[ContainerNameReader] = None, *, max_containers: int = MAX_CONTAINERS,
                 max_paths: int = MAX_PATHS, clock: Callable[[], float] = time.monotonic):
        self.reader = reader or ContainerNameReader()
        self._max_containers = max_containers
        self._max_paths = max_paths
        self._clock = clock
        self._lock = threading.Lock()
        self._names: "collections.OrderedDict[str, ContainerNames]" = collections.OrderedDict()
        self._misses: "collections.OrderedDict[str, float]" = collections.OrderedDict()  # id -> next try
        self._paths: "collections.OrderedDict[str, Optional[str]]" = collections.OrderedDict()  # cgroup -> id
        self.reads = 0

    def observe(self, cgroup: Optional[str]) -> None:
        """A process in this memory cgroup runs now: read its container's names if not known."""
        if not cgroup:
            return
        container_id = self._paths.get(cgroup, "")  # a dict read: the GIL makes it safe without the lock
        if container_id is None or (container_id and container_id in self._names):
            return
        if not container_id:
            container_id = describe_cgroup(cgroup).container_id
            with self._lock:
                self._paths[cgroup] = container_id
                while len(self._paths) > self._max_paths:
                    self._paths.popitem(last=False)
            if container_id is None:
                return
        self._lookup(container_id)

    def names_for(self, cgroup: CgroupInfo) -> Optional[ContainerNames]:
        """The names of the kill's container: kept from when it ran, else read now (a container
        whose other processes still run, or a runtime that keeps its state after the exit)."""
        if not cgroup.container_id:
            return None
        return self._lookup(cgroup.container_id, force=True)

    def _lookup(self, container_id: str, force: bool = False) -> Optional[ContainerNames]:
        with self._lock:
            names = self._names.get(container_id)
            if names is not None:
                self._names.move_to_end(container_id)
                return names
            retry = self._misses.get(container_id)
            if retry is not None and self._clock() < retry and not force:
                return None
            self.reads += 1
            names = self.reader.read(container_id)
            if names is None:
                self._misses[container_id] = self._clock() + RETRY_AFTER
                self._misses.move_to_end(container_id)
                while len(self._misses) > self._max_containers:
                    self._misses.popitem(last=False)
                return None
            self._misses.pop(container_id, None)
            self._names[container_id] = names
            while len(self._names) > self._max_containers:
                self._names.popitem(last=False)
            return names

    def __len__(self) -> int:
        return len(self._names)
