"""MigrationPlans on real KubeVirt when things do not go to plan: a migration KubeVirt really aborts, a
plan cancelled mid-way, the operator pod killed mid-plan, and a cold move."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from kind_helpers import Operator, apply, get, items, record, wait_for, worker_nodes
from kubevirt_helpers import (
    BOOT_TIMEOUT,
    MIGRATIONS,
    guest_now,
    launcher_pod,
    plan_finished,
    small_fleet,
    vmis,
)

from virtfleet.localcluster.testing import SessionCluster


def _plan(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"uncordonWhenDone": True, **spec},
    }


def _busiest(running: list[dict[str, Any]]) -> str:
    return Counter(v["status"]["nodeName"] for v in running).most_common(1)[0][0]


def _one_launcher_each(cluster: SessionCluster, namespace: str) -> dict[str, str]:
    """VMI -> node, once no VMI has a second virt-launcher pod alive (a migration left half-done)."""

    def probe() -> dict[str, str] | None:
        pods = items(cluster, "pods", namespace, "-l", "kubevirt.io=virt-launcher")
        alive = Counter(
            p["metadata"]["labels"].get("vm.kubevirt.io/name")
            for p in pods
            if p["status"].get("phase") in ("Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")
        )
        if any(count != 1 for count in alive.values()):
            return None
        found = vmis(cluster, namespace)
        if len(found) != len(alive) or any(v.get("status", {}).get("phase") != "Running" for v in found):
            return None
        return {v["metadata"]["name"]: v["status"]["nodeName"] for v in found}

    return wait_for(probe, 300, "a VMI was left with two launcher pods, or not Running", 2)


def _uptimes(cluster: SessionCluster, namespace: str, names: list[str]) -> dict[str, float]:
    return {n: guest_now(cluster, namespace, n).uptime_s for n in names}


def test_a_migration_kubevirt_aborts_is_retried_then_counted_against_the_budget(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str, results: Path
) -> None:
    (vmi,) = small_fleet(test_cluster, namespace, guest_image, 1)
    name, source = vmi["metadata"]["name"], vmi["status"]["nodeName"]
    before = guest_now(test_cluster, namespace, name).uptime_s
    # 1 MiB/s for 256 MiB of guest against a completion timeout of 1 s per GiB: KubeVirt gives up.
    apply(test_cluster, _plan(
        namespace, "doomed", goal="drain", nodes=[source], method="live",
        migration={"bandwidthPerMigration": "1Mi", "completionTimeoutPerGiB": 1},
        failurePolicy={"retries": 1, "backoffSeconds": 5, "maxFailures": 0, "onFailure": "abort"},
    ))  # fmt: skip
    status = plan_finished(test_cluster, namespace, "doomed")

    assert status["phase"] == "Failed", status
    (line,) = status["vms"]
    assert line["phase"] == "Failed" and line["attempts"] == 2, line
    migrations = items(test_cluster, MIGRATIONS, namespace)
    assert len(migrations) == 2 and all(m["status"]["phase"] == "Failed" for m in migrations), [
        m.get("status") for m in migrations
    ]
    reason = migrations[-1]["status"].get("migrationState", {}).get("failureReason", "")
    assert reason and line["lastError"] == reason, (line, reason)  # KubeVirt's own words reach the user
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True", status["conditions"]
    # The guest never noticed: still on its node, same boot.
    assert _one_launcher_each(test_cluster, namespace) == {name: source}
    assert guest_now(test_cluster, namespace, name).uptime_s > before
    assert not get(test_cluster, "node", source)["spec"].get("unschedulable"), "the node was left cordoned"
    record(results, failing_migration={"attempts": line["attempts"], "kubevirt_reason": reason})


def test_cancel_mid_plan_leaves_every_vm_running_once(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str, results: Path
) -> None:
    running = small_fleet(test_cluster, namespace, guest_image, 4)
    names = sorted(v["metadata"]["name"] for v in running)
    source = _busiest(running)
    uptime = _uptimes(test_cluster, namespace, names)
    apply(test_cluster, _plan(
        namespace, "halfway", goal="drain", nodes=[source], method="live",
        limits={"maxParallel": 1}, migration={"bandwidthPerMigration": "32Mi"},
    ))  # fmt: skip

    def migrating() -> dict[str, Any] | None:
        active = [
            m for m in items(test_cluster, MIGRATIONS, namespace)
            if m.get("status", {}).get("phase") not in ("Succeeded", "Failed", None)
        ]  # fmt: skip
        return active[0] if active else None

    in_flight = wait_for(migrating, BOOT_TIMEOUT, "the plan never started a migration", 1)
    apply(test_cluster, _plan(
        namespace, "halfway", goal="drain", nodes=[source], method="live",
        limits={"maxParallel": 1}, migration={"bandwidthPerMigration": "32Mi"}, cancel=True,
    ))  # fmt: skip
    status = plan_finished(test_cluster, namespace, "halfway")

    assert status["phase"] == "Cancelled", status
    phases = Counter(vm["phase"] for vm in status["vms"])
    assert phases["Cancelled"] >= 1, phases  # at least the one in flight, and those not started
    assert not migrating(), "a migration is still in flight after the plan was cancelled"
    where = _one_launcher_each(test_cluster, namespace)
    assert sorted(where) == names  # no VM lost
    for name in names:
        assert guest_now(test_cluster, namespace, name).uptime_s > uptime[name], f"{name} restarted"
    assert not get(test_cluster, "node", source)["spec"].get("unschedulable"), "the node was left cordoned"
    record(
        results,
        cancel_mid_plan={"cancelled_migration": in_flight["metadata"]["name"], "phases": dict(phases)},
    )


def test_the_operator_killed_mid_plan_finishes_it_once(
    test_cluster: SessionCluster, operator: Operator, namespace: str, guest_image: str, results: Path
) -> None:
    running = small_fleet(test_cluster, namespace, guest_image, 3)
    names = sorted(v["metadata"]["name"] for v in running)
    source = _busiest(running)
    moving = sorted(v["metadata"]["name"] for v in running if v["status"]["nodeName"] == source)
    uptime = _uptimes(test_cluster, namespace, names)
    (leader,) = operator.ready_pods()
    apply(test_cluster, _plan(
        namespace, "resilient", goal="drain", nodes=[source], method="live", limits={"maxParallel": 1},
    ))  # fmt: skip
    wait_for(
        lambda: items(test_cluster, MIGRATIONS, namespace) or None, BOOT_TIMEOUT, "no migration started", 1
    )
    killed_at = time.monotonic()
    test_cluster.kubectl(
        "-n", operator.namespace, "delete", "pod", leader["metadata"]["name"], "--wait=false"
    )
    status = plan_finished(test_cluster, namespace, "resilient")

    assert status["phase"] == "Succeeded", status
    migrations = items(test_cluster, MIGRATIONS, namespace)
    per_vm = Counter(m["spec"]["vmiName"] for m in migrations)
    assert sorted(per_vm) == moving and set(per_vm.values()) == {1}, per_vm  # each moved once, no duplicate
    assert all(m["status"]["phase"] == "Succeeded" for m in migrations)
    where = _one_launcher_each(test_cluster, namespace)
    assert sorted(where) == names and source not in where.values(), where
    for name in names:
        assert guest_now(test_cluster, namespace, name).uptime_s > uptime[name], f"{name} restarted"
    record(results, operator_killed_mid_plan={
        "moved": len(moving), "finished_after_kill_s": round(time.monotonic() - killed_at, 1),
    })  # fmt: skip


def test_a_cold_move_reboots_the_guest_on_the_target(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str, results: Path
) -> None:
    (vmi,) = small_fleet(test_cluster, namespace, guest_image, 1)
    name, source = vmi["metadata"]["name"], vmi["status"]["nodeName"]
    target = next(
        n["metadata"]["name"] for n in worker_nodes(test_cluster) if n["metadata"]["name"] != source
    )
    applied = time.monotonic()
    apply(test_cluster, _plan(
        namespace, "cold", goal="move", method="cold", selection={"vms": [name]},
        targetSelector={"kubernetes.io/hostname": target},
    ))  # fmt: skip
    status = plan_finished(test_cluster, namespace, "cold")

    assert status["phase"] == "Succeeded", status
    (line,) = status["vms"]
    assert line["method"] == "cold" and line["target"] == target and line["actualDowntimeSeconds"] > 0, line
    assert _one_launcher_each(test_cluster, namespace) == {name: target}
    vm = get(test_cluster, "vm", name, namespace)
    assert vm["spec"]["runStrategy"] == "Always", vm["spec"]
    assert "kubernetes.io/hostname" not in (vm["spec"]["template"]["spec"].get("nodeSelector") or {}), (
        "the VM is still pinned to the target"
    )
    assert not [c for c in vm["status"].get("conditions", []) if c["type"] == "RestartRequired"], vm["status"]
    booted = guest_now(test_cluster, namespace, name)
    assert launcher_pod(test_cluster, get(test_cluster, "vmi", name, namespace))["spec"]["nodeName"] == target
    assert booted.uptime_s < time.monotonic() - applied, booted  # booted again since the plan began
    assert not items(test_cluster, MIGRATIONS, namespace), "a cold move made a live migration"
    record(results, cold_move={
        "estimated_downtime_s": line["estimatedDowntimeSeconds"], "actual_downtime_s": line["actualDowntimeSeconds"],
    })  # fmt: skip
