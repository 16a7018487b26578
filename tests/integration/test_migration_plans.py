"""MigrationPlans: admission rules, and dry-run plans with estimates against a pool in the twin."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kopf.testing import KopfRunner
from test_pools import pool, settled, template
from twin_helpers import apply, get_json, wait_for

from virtfleet.localcluster import LocalCluster

pytestmark = pytest.mark.integration

FLEET: dict[str, Any] = {
    "timeScale": 0.02,
    "defaults": {"bootSeconds": 2},
    "nodes": [{"name": "gen", "count": 3, "cpu": 64, "memory": "256Gi", "labels": {"role": "general"}}],
}


@pytest.fixture(autouse=True)
def _stack(twin: None, operator: KopfRunner) -> None:
    """Every test here needs the twin and the operator running."""


def migration_plan(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "virtfleet.io/v1alpha1", "kind": "MigrationPlan",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip


def test_admission_rejects_inconsistent_plans(cluster: LocalCluster, namespace: str) -> None:
    cases = [
        ({"goal": "drain"}, "spec.nodes", "needs at least one node"),
        ({"goal": "move"}, "spec.targetSelector", "needs targetSelector"),
        ({"goal": "rebalance", "order": "waves"}, "spec.waves", "needs waves"),
        ({"goal": "rebalance", "order": "waves", "selection": {"vms": ["a"]}, "waves": [["b"]]},
         "spec.waves", "only name VMs listed in selection.vms"),
        ({"goal": "drain", "nodes": ["n"], "limits": {"maxParallel": 0}}, "spec.limits.maxParallel", "greater than or equal to 1"),
    ]  # fmt: skip
    for index, (spec, field, words) in enumerate(cases):
        result = cluster.kubectl("apply", "--server-side", "-f", "-", check=False,
                                 input=json.dumps(migration_plan(namespace, f"bad-{index}", **spec)))  # fmt: skip
        assert result.returncode != 0, spec
        assert field in result.stderr and words in result.stderr, result.stderr


def test_dry_run_drain_plans_and_estimates(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace))
    apply(cluster, pool(namespace, replicas=6, cpuRatio=4))
    wait_for(lambda: settled(cluster, namespace, 6), 60, "pool never ready")
    vmis = get_json(cluster, "-n", namespace, "vmi")["items"]
    busiest = max(
        {v["status"]["nodeName"] for v in vmis}, key=lambda n: sum(v["status"]["nodeName"] == n for v in vmis)
    )
    on_it = sorted(v["metadata"]["name"] for v in vmis if v["status"]["nodeName"] == busiest)
    apply(cluster, migration_plan(namespace, "drain", goal="drain", nodes=[busiest], dryRun=True,
                                  limits={"maxParallel": 5, "maxOutboundPerNode": 1}))  # fmt: skip

    def planned() -> dict[str, Any] | None:
        status: dict[str, Any] = get_json(cluster, "-n", namespace, "vfplan", "drain").get("status", {})
        return status if status.get("phase") == "Planned" else None

    status = wait_for(planned, 30, "the plan was never planned")
    assert sorted(v["name"] for v in status["vms"]) == on_it
    assert all(v["target"] != busiest and v["source"] == busiest for v in status["vms"])
    assert all(v["estimatedDurationSeconds"] > 0 for v in status["vms"])
    # One at a time off the node: the makespan is the sum of the estimates.
    total = sum(v["estimatedDurationSeconds"] for v in status["vms"])
    assert status["estimatedMakespanSeconds"] == pytest.approx(total, abs=0.1 * len(on_it))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Planned"
    # A dry run changes nothing: no migrations, every VM where it was.
    assert get_json(cluster, "-n", namespace, "vmim")["items"] == []
    assert sorted(v["metadata"]["name"] for v in get_json(cluster, "-n", namespace, "vmi")["items"]
                  if v["status"]["nodeName"] == busiest) == on_it  # fmt: skip


def test_a_plan_waiting_for_not_before_shows_its_plan_and_starts_nothing(
    cluster: LocalCluster, namespace: str
) -> None:
    apply(cluster, template(namespace))
    apply(cluster, pool(namespace, replicas=3, cpuRatio=4))
    wait_for(lambda: settled(cluster, namespace, 3), 60, "pool never ready")
    node = get_json(cluster, "-n", namespace, "vmi")["items"][0]["status"]["nodeName"]
    apply(
        cluster,
        migration_plan(namespace, "later", goal="drain", nodes=[node], notBefore="2999-01-01T00:00:00Z"),
    )
    status = wait_for(
        lambda: (
            (s := get_json(cluster, "-n", namespace, "vfplan", "later").get("status", {})).get("phase")
            == "Pending"
            and s
        ),
        30,
        "the plan never got a status",
    )
    reconciling = next(c for c in status["conditions"] if c["type"] == "Reconciling")
    assert reconciling["reason"] == "WaitingToStart" and "notBefore" in reconciling["message"]
    assert status["vms"] and not status.get("startedAt")
    assert get_json(cluster, "-n", namespace, "vmim")["items"] == []
    assert not get_json(cluster, "node", node)["spec"].get("unschedulable")  # not cordoned before it starts
