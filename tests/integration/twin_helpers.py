"""Helpers for tests that run the simulated KubeVirt twin as its own process."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import twin_process
from virtfleet.twin.fleet import FLEET_LABEL

T = TypeVar("T")


@contextmanager
def running_twin(
    cluster: LocalCluster, fleet: dict[str, Any], directory: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`virtfleet twin run` with this fleet; its nodes are removed afterwards."""
    fleet_file = directory / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    with twin_process(cluster.kubeconfig, fleet_file, directory / "twin.log") as process:
        expected = sum(g.get("count", 1) for g in fleet["nodes"])

        def nodes_ready() -> bool:
            assert process.poll() is None, f"the twin exited:\n{(directory / 'twin.log').read_text()}"
            return len(ready_nodes(cluster)) >= expected

        try:
            wait_for(nodes_ready, 60, "the twin's nodes never became Ready")
            yield process
        finally:
            cluster.kubectl("delete", "nodes", "-l", FLEET_LABEL, "--wait=false")


def ready_nodes(cluster: LocalCluster) -> list[str]:
    nodes = get_json(cluster, "nodes")["items"]
    return [
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        and not any(t["key"] == "node.kubernetes.io/not-ready" for t in n["spec"].get("taints") or [])
    ]


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster: LocalCluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))


def wait_for(check: Callable[[], T | None], timeout: float, message: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)


def vm(
    name: str,
    namespace: str,
    *,
    cores: int = 1,
    memory: str = "1Gi",
    run_strategy: str = "Always",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    cpu: dict[str, Any] | None = None,
    domain: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A kubevirt.io/v1 VirtualMachine as users write them."""
    body_domain: dict[str, Any] = {
        "cpu": {"cores": cores, **(cpu or {})},
        "memory": {"guest": memory},
        "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
    }
    body_domain.update(domain or {})
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runStrategy": run_strategy,
            "template": {
                "metadata": {"labels": {"app": name, **(labels or {})}, "annotations": annotations or {}},
                "spec": {
                    "domain": body_domain,
                    "volumes": [
                        {"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:40"}}
                    ],
                    **(spec or {}),
                },
            },
        },
    }


def migration(name: str, namespace: str, vmi: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vmiName": vmi, **spec},
    }


def printable(cluster: LocalCluster, namespace: str, name: str) -> str:
    obj = get_json(cluster, "-n", namespace, "vm", name)
    return str(obj.get("status", {}).get("printableStatus", ""))
