"""Drives containerd's CRI plugin over gRPC as kubelet does (RunPodSandbox, CreateContainer,
StartContainer; then StopPodSandbox/RemovePodSandbox), with the CRI v1 stubs of PyPI's
container-runtime-interface-api. Run as a separate process with PYTHONPATH=.deps/cri (its grpcio
and protobuf are the test's, not the daemon's):

    python3 cri_driver.py SOCKET run '{"pod": ..., "namespace": ..., "uid": ..., "container": ...,
                                        "image": ..., "command": [...], "memory": BYTES,
                                        "mounts": [[host, container, readonly], ...], "privileged": bool}'
    python3 cri_driver.py SOCKET status CONTAINER_ID
    python3 cri_driver.py SOCKET remove SANDBOX_ID

Prints one JSON object. Pods use the host's network namespace (no CNI here) and, like kubelet's
cgroupfs driver, the cgroup parent /kubepods/burstable/pod<uid>. No hostname is set: runc fails
to set one in the host's UTS namespace, and kubelet leaves it unset for host-network pods too.
"""
import json
import sys

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1.api_pb2_grpc import RuntimeServiceStub

TIMEOUT = 60


def main(socket, command, arg):
    stub = RuntimeServiceStub(grpc.insecure_channel(f"unix://{socket}"))
    if command == "run":
        spec = json.loads(arg)
        host_pid = spec.get("host_pid", False)
        ns = cri.NamespaceOption(network=cri.NODE, pid=cri.NODE if host_pid else cri.POD, ipc=cri.POD)
        sandbox = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=spec["pod"], uid=spec["uid"], namespace=spec["namespace"], attempt=0),
            log_directory=spec["log_dir"],
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=f"/kubepods/burstable/pod{spec['uid']}",
                security_context=cri.LinuxSandboxSecurityContext(namespace_options=ns,
                                                                 privileged=spec.get("privileged", False))))
        sid = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=sandbox), timeout=TIMEOUT).pod_sandbox_id
        resources = cri.LinuxContainerResources(memory_limit_in_bytes=spec["memory"]) if spec.get("memory") else None
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=spec["container"], attempt=0),
            image=cri.ImageSpec(image=spec["image"]),
            command=spec["command"][:1], args=spec["command"][1:],
            log_path=f"{spec['container']}.log",
            mounts=[cri.Mount(host_path=h, container_path=c, readonly=ro) for h, c, ro in spec.get("mounts", [])],
            linux=cri.LinuxContainerConfig(
                resources=resources,
                security_context=cri.LinuxContainerSecurityContext(namespace_options=ns,
                                                                   privileged=spec.get("privileged", False))))
        cid = stub.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=sid, config=config,
                                                              sandbox_config=sandbox), timeout=TIMEOUT).container_id
        stub.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        print(json.dumps({"sandbox_id": sid, "container_id": cid}))
    elif command == "status":
        s = stub.ContainerStatus(cri.ContainerStatusRequest(container_id=arg), timeout=TIMEOUT).status
        print(json.dumps({"state": cri.ContainerState.Name(s.state), "reason": s.reason, "exit_code": s.exit_code}))
    elif command == "remove":
        stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=arg), timeout=TIMEOUT)
        stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=arg), timeout=TIMEOUT)
        print(json.dumps({"removed": arg}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
