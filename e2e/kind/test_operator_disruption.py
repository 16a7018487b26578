"""The operator pod goes away in the middle of work: the cluster converges to exactly what was asked.

Last in the session: these restart the operator (the alert test before them needs it steady).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kind_helpers import REPO, Operator, apply, get, items, observed, pool, record, template, wait_for

from virtfleet.localcluster.testing import SessionCluster


def vm_names(cluster: SessionCluster, namespace: str, name: str) -> dict[str, str]:
    """name -> uid of the pool's VMs that are not being deleted."""
    return {
        vm["metadata"]["name"]: vm["metadata"]["uid"]
        for vm in items(cluster, "vm", namespace, "-l", f"virtfleet.io/pool={name}")
        if not vm["metadata"].get("deletionTimestamp")
    }


def converged(cluster: SessionCluster, namespace: str, name: str, replicas: int) -> dict[str, str] | None:
    obj = get(cluster, "vfpool", name, namespace)
    vms = vm_names(cluster, namespace, name)
    done = observed(obj) and obj["status"].get("replicas") == replicas == len(vms)
    return vms if done else None


def test_deleting_the_operator_pod_mid_scale_out_makes_exactly_the_desired_vms(
    test_cluster: SessionCluster, operator: Operator, namespace: str, results: Path
) -> None:
    replicas = 60
    apply(test_cluster, template(namespace), pool(namespace, "scale", 0, cpuRatio=32, memoryRatio=4))
    wait_for(lambda: converged(test_cluster, namespace, "scale", 0), 120, "the empty pool never converged")
    (leader,) = operator.ready_pods()
    apply(test_cluster, pool(namespace, "scale", replicas, cpuRatio=32, memoryRatio=4))
    before = wait_for(
        lambda: ((vms := vm_names(test_cluster, namespace, "scale")) and len(vms) >= 5 and vms) or None,
        60,
        "the scale-out never started",
        interval=0.1,
    )
    killed_at = time.monotonic()
    test_cluster.kubectl(
        "-n", operator.namespace, "delete", "pod", leader["metadata"]["name"], "--wait=false"
    )
    assert len(before) < replicas, "the scale-out finished before the pod was deleted: nothing was tested"
    after = wait_for(lambda: converged(test_cluster, namespace, "scale", replicas), 300, "no convergence")
    record(
        results,
        pod_delete_mid_scale_out={
            "vms_before_delete": len(before),
            "replicas": replicas,
            "converged_after_delete_s": round(time.monotonic() - killed_at, 1),
        },
    )
    assert sorted(after) == sorted(f"scale-{i}" for i in range(replicas))  # none missing, no extra
    assert all(after[name] == uid for name, uid in before.items())  # nothing made before was replaced
    events = json.loads(test_cluster.kubectl("-n", namespace, "get", "events", "-o", "json").stdout)["items"]
    assert not [e for e in events if e.get("reason") == "FailedCreate"], "a create failed (a duplicate?)"
    # The Deployment replaced the pod (the old one may finish the scale-out during its grace period).
    wait_for(
        lambda: (
            [p for p in operator.ready_pods() if p["metadata"]["uid"] != leader["metadata"]["uid"]] or None
        ),
        120,
        "the deleted operator pod was never replaced by a Ready one",
    )


@pytest.fixture
def peering(test_cluster: SessionCluster, operator: Operator) -> Iterator[None]:
    """Two replicas with kopf peering for the test, then back to the standalone single replica."""
    crds, chart = str(REPO / "charts" / "virtfleet-crds"), str(REPO / "charts" / "virtfleet")
    operator.helm(
        "upgrade", "virtfleet-crds", crds, "--reuse-values", "--set", "kopfPeering.enabled=true", "--wait"
    )
    operator.helm(
        "upgrade", operator.release, chart, "-n", operator.namespace, "--reuse-values",
        "--set", "operator.standalone=false", "--set", "replicaCount=2", "--wait", "--timeout", "5m",
    )  # fmt: skip
    try:
        yield
    finally:
        operator.helm(
            "upgrade", operator.release, chart, "-n", operator.namespace, "--reuse-values",
            "--set", "operator.standalone=true", "--set", "replicaCount=1", "--wait", "--timeout", "5m",
        )  # fmt: skip
        wait_for(
            lambda: len(operator.pods()) == 1 or None, 120, "the standalone operator did not come back alone"
        )


def peers(cluster: SessionCluster) -> dict[str, dict[str, Any]]:
    obj = get(cluster, "clusterkopfpeering", "virtfleet")
    found: dict[str, dict[str, Any]] = obj.get("status") or {}
    return found


def test_with_two_replicas_deleting_the_leader_hands_over(
    test_cluster: SessionCluster, operator: Operator, namespace: str, peering: None, results: Path
) -> None:
    pods = wait_for(
        lambda: (len(operator.ready_pods()) == 2 and operator.ready_pods()) or None, 180, "no 2 Ready pods"
    )
    names = {p["metadata"]["name"] for p in pods}
    alive = wait_for(
        lambda: (names <= set(peers(test_cluster)) and peers(test_cluster)) or None, 60, "peers unseen"
    )
    leader = max(names, key=lambda n: int(alive[n]["priority"]))
    standby = (names - {leader}).pop()
    # Only the leader works: a new pool is reconciled once, by it.
    apply(test_cluster, template(namespace), pool(namespace, "ha", 2, cpuRatio=32, memoryRatio=4))
    wait_for(lambda: converged(test_cluster, namespace, "ha", 2), 120, "the leader did not reconcile")
    deleted_at = time.monotonic()
    test_cluster.kubectl("-n", operator.namespace, "delete", "pod", leader, "--wait=false")
    apply(test_cluster, pool(namespace, "ha", 3, cpuRatio=32, memoryRatio=4))
    wait_for(lambda: converged(test_cluster, namespace, "ha", 3), 180, "the standby never took over")
    handover = round(time.monotonic() - deleted_at, 1)
    record(results, peering_handover_s=handover)
    logs = test_cluster.kubectl("-n", operator.namespace, "logs", standby).stdout
    assert "Traceback" not in logs, logs[-3000:]
    assert sorted(vm_names(test_cluster, namespace, "ha")) == ["ha-0", "ha-1", "ha-2"]
