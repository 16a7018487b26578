"""Capacity on real KubeVirt: a pool fills the workers and reports the rest pending; the real scheduler
places every VM the operator counted, and has room for no more."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kind_helpers import apply, get, items, record, wait_for, worker_nodes
from kubevirt_helpers import fixed, running_vmis, vmis

from virtfleet.api.quantity import parse_bytes, parse_millicores
from virtfleet.kube.facts import pod_requests
from virtfleet.localcluster.testing import SessionCluster

REPLICAS = 8  # more than two 2-core workers hold at one whole core per vCPU


def _pool(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": "filler", "namespace": namespace},
        # cpuRatio 1: each vCPU requests a whole core, so CPU, not this machine's memory, fills the workers.
        "spec": {"replicas": REPLICAS, "templateRef": {"name": "elastic"}, "cpuRatio": 1},
    }


def _free(cluster: SessionCluster, node: dict[str, Any]) -> tuple[int, int]:
    """(millicores, bytes) the scheduler still has on a node: allocatable less every bound pod's requests."""
    name = node["metadata"]["name"]
    pods = json.loads(
        cluster.kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={name}", "-o", "json").stdout
    )["items"]
    live = [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
    used = [pod_requests(p["spec"]) for p in live]
    allocatable = node["status"]["allocatable"]
    return (
        parse_millicores(str(allocatable["cpu"])) - sum(cpu for cpu, _ in used),
        parse_bytes(str(allocatable["memory"])) - sum(memory for _, memory in used),
    )


def test_a_full_pool_reports_pending_and_every_counted_vm_is_scheduled(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str, results: Path
) -> None:
    template = fixed(namespace, guest_image)
    started = time.monotonic()
    apply(test_cluster, template, _pool(namespace))

    def settled() -> dict[str, Any] | None:
        status = get(test_cluster, "vfpool", "filler", namespace).get("status", {})
        made = items(test_cluster, "vm", namespace, "-l", "virtfleet.io/pool=filler")
        pending = status.get("pendingReplicas", 0)
        return status if pending and status.get("replicas") == len(made) == REPLICAS - pending else None

    status = wait_for(settled, 180, "the pool never reported pending replicas", 2)
    created = status["replicas"]
    assert 0 < created < REPLICAS, status

    # Every VM the operator made runs: none left Pending/Unschedulable by kube-scheduler.
    running_vmis(test_cluster, namespace, "filler", created)
    unschedulable = [
        v["metadata"]["name"]
        for v in vmis(test_cluster, namespace)
        if any(c.get("reason") == "Unschedulable" for c in v.get("status", {}).get("conditions", []))
    ]
    assert not unschedulable, unschedulable
    elapsed = time.monotonic() - started

    # And the workers are full: one more VM's launcher pod would not fit on any eligible worker.
    launcher = next(
        p for p in items(test_cluster, "pods", namespace, "-l", "kubevirt.io=virt-launcher")
        if p["status"].get("phase") == "Running"
    )  # fmt: skip
    per_vm = pod_requests(launcher["spec"])
    free = {n["metadata"]["name"]: _free(test_cluster, n) for n in worker_nodes(test_cluster)}
    for node, (cpu, memory) in free.items():
        assert cpu < per_vm[0] or memory < per_vm[1], f"{node} still has room for a VM: {free}, {per_vm}"

    # The pool says why, naming the shortage.
    exhausted = next(c for c in status.get("conditions", []) if c["type"] == "CapacityExhausted")
    assert exhausted["status"] == "True" and "do not fit" in exhausted["message"], exhausted
    record(
        results,
        capacity_vms_created=created,
        capacity_vms_pending=REPLICAS - created,
        capacity_all_running_s=round(elapsed, 1),
        capacity_launcher_pod_requests={"cpu_millis": per_vm[0], "memory_bytes": per_vm[1]},
        capacity_free_after={k: {"cpu_millis": v[0], "memory_bytes": v[1]} for k, v in free.items()},
    )
