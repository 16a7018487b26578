"""MigrationPlans executed against the twin: limits observed from the migrations' own timestamps,
estimates vs actual durations, cordon, MigrationPolicy, rebalance, cold moves, retries and the failure
budget, cancel."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from kopf.testing import KopfRunner
from test_pools import pool, template
from twin_helpers import apply, get_json, wait_for

from virtfleet.localcluster import LocalCluster

pytestmark = pytest.mark.integration

# 5x faster than real time: slow enough that the operator's reaction time (tens of milliseconds) is
# small next to a migration (~5 simulated seconds), so concurrency measurements mean something.
FLEET: dict[str, Any] = {
    "timeScale": 0.2,
    "defaults": {"bootSeconds": 1},
    "nodes": [{"name": "exe", "count": 4, "cpu": 64, "memory": "512Gi", "labels": {"role": "general"}}],
}
NODES = [f"exe-{i}" for i in range(4)]


@pytest.fixture(autouse=True)
def _stack(twin: None, operator: KopfRunner, cluster: LocalCluster, namespace: str) -> Any:
    """The twin and the operator run; after each test its VMs are gone (they would weigh on the next
    test's capacity and ratios) and every node is schedulable again."""
    yield
    cluster.kubectl("-n", namespace, "delete", "vfpool", "--all", "--wait=true", "--timeout=60s", check=False)
    wait_for(lambda: not vmis(cluster, namespace), 60, "the test's VMs were never deleted")
    for node in NODES:
        cluster.kubectl("uncordon", node, check=False)


def migration_plan(namespace: str, name: str = "plan", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "virtfleet.io/v1alpha1", "kind": "MigrationPlan",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip


def plan_status(cluster: LocalCluster, namespace: str, name: str = "plan") -> dict[str, Any]:
    status: dict[str, Any] = get_json(cluster, "-n", namespace, "vfplan", name).get("status", {})
    return status


def wait_phase(
    cluster: LocalCluster, namespace: str, phases: set[str], timeout: float, name: str = "plan"
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = plan_status(cluster, namespace, name)
        return status if status.get("phase") in phases else None

    try:
        return wait_for(reached, timeout, f"plan {name} never reached {phases}")
    except AssertionError as error:
        # What the plan waits on: each VM's runStrategy and cold-move record, each VMI's node and phase.
        vms = get_json(cluster, "-n", namespace, "vm")["items"]
        seen = {
            vm["metadata"]["name"]: {
                "runStrategy": vm["spec"].get("runStrategy"),
                "annotations": {
                    k: v for k, v in vm["metadata"].get("annotations", {}).items() if "cold" in k
                },
                "nodeSelector": vm["spec"]["template"]["spec"].get("nodeSelector"),
            }
            for vm in vms
        }
        placed = {n: (v["status"].get("nodeName"), v["status"].get("phase"), v["status"].get("conditions"))
                  for n, v in vmis(cluster, namespace).items()}  # fmt: skip
        status = json.dumps(plan_status(cluster, namespace, name))[:4000]
        raise AssertionError(f"{error}: {status}\nVMs: {seen}\nVMIs: {placed}") from None


def vmis(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    return {v["metadata"]["name"]: v for v in get_json(cluster, "-n", namespace, "vmi")["items"]}


def migrations(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "-n", namespace, "vmim")["items"]
    return items


def stamp(vmim: dict[str, Any], phase: str) -> datetime | None:
    for t in vmim.get("status", {}).get("phaseTransitionTimestamps", []):
        if t["phase"] == phase:
            return datetime.fromisoformat(t["phaseTransitionTimestamp"].replace("Z", "+00:00"))
    return None


def intervals(
    items: list[dict[str, Any]], key: Any = lambda v: "all"
) -> list[tuple[datetime, datetime, str]]:
    """(start, end, key) per finished migration, in the twin's (simulated) time: Pending to the end."""
    out = []
    for v in items:
        start = stamp(v, "Pending")
        end = stamp(v, "Succeeded") or stamp(v, "Failed")
        if start and end:
            out.append((start, end, key(v)))
    return out


def concurrency(spans: list[tuple[datetime, datetime, str]]) -> tuple[dict[str, int], float, float]:
    """Peak concurrency per key, and the time-weighted mean concurrency (overall) over the time from
    the first start to the last start, i.e. while work remained to be started; and that window's length."""
    events = sorted([(s, 1, k) for s, _, k in spans] + [(e, -1, k) for _, e, k in spans],
                    key=lambda x: (x[0], x[1]))  # ends before starts at the same instant  # fmt: skip
    peak: Counter[str] = Counter()
    now: Counter[str] = Counter()
    last_start = max(s for s, _, _ in spans)
    first = min(s for s, _, _ in spans)
    area = 0.0
    previous = first
    total = 0
    for at, delta, key in events:
        if previous < at <= last_start:
            area += total * (at - previous).total_seconds()
        elif previous < last_start < at:
            area += total * (last_start - previous).total_seconds()
        previous = at
        now[key] += delta
        total += delta
        peak[key] = max(peak[key], now[key])
    window = (last_start - first).total_seconds()
    return dict(peak), (area / window if window else float(total)), window


def skewed_pool(cluster: LocalCluster, namespace: str, replicas: int, on: str, **spec: Any) -> None:
    """A pool whose VMs all start on one node: the others are cordoned while it scales out."""
    for node in NODES:
        if node != on:
            cluster.kubectl("cordon", node)
    apply(cluster, template(namespace, memory={"guest": "2Gi"}))
    apply(cluster, pool(namespace, replicas=replicas, cpuRatio=4, **spec))

    def all_on_node() -> bool:
        running = [
            v for v in vmis(cluster, namespace).values() if v.get("status", {}).get("phase") == "Running"
        ]
        return len(running) == replicas and all(v["status"]["nodeName"] == on for v in running)

    wait_for(all_on_node, 120, f"the pool never ran {replicas} VMs on {on}")
    for node in NODES:
        cluster.kubectl("uncordon", node)


def test_drain_50_vms_under_limits_with_estimates(cluster: LocalCluster, namespace: str) -> None:
    skewed_pool(cluster, namespace, 50, on="exe-0")
    apply(cluster, migration_plan(
        namespace, goal="drain", nodes=["exe-0"], uncordonWhenDone=True,
        limits={"maxParallel": 5, "maxOutboundPerNode": 2, "maxInboundPerNode": 2},
        migration={"allowAutoConverge": True, "maxDowntimeMs": 500},
    ))  # fmt: skip

    def cordoned() -> bool:
        node = get_json(cluster, "node", "exe-0")
        return bool(node["spec"].get("unschedulable"))

    wait_for(cordoned, 30, "the drained node was never cordoned")
    running = wait_phase(cluster, namespace, {"Running"}, 30)
    policy_name = running["migrationPolicy"]
    policy = get_json(cluster, "migrationpolicy", policy_name)
    assert policy["spec"]["allowAutoConverge"] is True and policy["spec"]["maxDowntimeMs"] == 500
    assert policy["spec"]["selectors"]["namespaceSelector"] == {"kubernetes.io/metadata.name": namespace}

    status = wait_phase(cluster, namespace, {"Succeeded", "Failed"}, 240)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert (status["done"], status["total"], status["failed"], status["progress"]) == (50, 50, 0, "50/50")
    assert {c["type"]: c["status"] for c in status["conditions"]}.items() >= {
        "Ready": "True", "Succeeded": "True", "Reconciling": "False", "Stalled": "False",
    }.items()  # fmt: skip

    # Every VM moved exactly once, off the node, to its planned target, under the plan's policy.
    items = migrations(cluster, namespace)
    assert len(items) == 50 and Counter(v["spec"]["vmiName"] for v in items).most_common(1)[0][1] == 1
    assert all(v["status"]["phase"] == "Succeeded" for v in items)
    planned = {v["name"]: v for v in status["vms"]}
    now = vmis(cluster, namespace)
    assert all(now[name]["status"]["nodeName"] == vm["target"] != "exe-0" for name, vm in planned.items())
    assert all(v["status"]["migrationState"].get("migrationPolicyName") == policy_name for v in items)

    # Limits, from the migrations' own timestamps: KubeVirt moves 2 at a time off one node, so 2 is the
    # binding limit. It is never exceeded, and it is held while work remains: each finished migration's
    # slot is refilled promptly (the operator's reaction time is all that separates them).
    spans = intervals(items)
    by_target = concurrency(intervals(items, lambda v: planned[v["spec"]["vmiName"]]["target"]))
    peak, mean, window = concurrency(spans)
    last_start = max(s for s, _, _ in spans)
    starts = sorted(s for s, _, _ in spans)
    gaps = sorted(
        (min(s for s in starts if s >= end) - end).total_seconds() for _, end, _ in spans if end < last_start
    )
    p90 = gaps[int(0.9 * (len(gaps) - 1))]
    print(f"\ndrain of 50 VMs: peak {peak['all']}, mean concurrency {mean:.2f} over {window:.0f} simulated s, "
          f"slot refilled after {gaps[len(gaps) // 2]:.2f} s median, {p90:.2f} s p90 (simulated)")  # fmt: skip
    assert peak["all"] == 2
    assert max(by_target[0].values()) <= 2
    assert p90 <= 2.0  # simulated seconds; a migration takes about 4
    assert mean >= 0.75 * 2

    # Every estimate within 20 % of the duration the twin took. The twin stamps each phase when its model
    # says it happened, so a busy machine (its clock runs 5x real time: a 100 ms stall of its event loop
    # would be half a simulated second) does not stretch what the operator reads.
    errors = sorted(abs(v["actualDurationSeconds"] - v["estimatedDurationSeconds"]) / v["estimatedDurationSeconds"]
                    for v in status["vms"])  # fmt: skip
    print(f"estimate error: median {errors[len(errors) // 2]:.1%}, max {errors[-1]:.1%}")
    assert errors[-1] <= 0.2

    # uncordonWhenDone: the node is schedulable again; deleting the plan removes its policy.
    wait_for(lambda: not cordoned(), 30, "the node was never uncordoned")
    table = cluster.kubectl("-n", namespace, "get", "vfplan", "plan").stdout
    assert "Succeeded" in table and "50/50" in table, table
    cluster.kubectl("-n", namespace, "delete", "vfplan", "plan", "--wait=true", "--timeout=60s")
    assert cluster.kubectl("get", "migrationpolicy", policy_name, check=False).returncode != 0
    assert not any(
        "virtfleet.io/migration-plan" in (v["metadata"].get("labels") or {})
        for v in vmis(cluster, namespace).values()
    )


def effective_cpu_ratios(cluster: LocalCluster, namespace: str) -> dict[str, float]:
    vcpus: Counter[str] = Counter()
    for v in vmis(cluster, namespace).values():
        vcpus[v["status"]["nodeName"]] += v["spec"]["domain"]["cpu"]["cores"]
    return {node: vcpus[node] / 64 for node in NODES}


def test_rebalance_of_a_skewed_fleet_ends_under_the_threshold(cluster: LocalCluster, namespace: str) -> None:
    skewed_pool(cluster, namespace, 40, on="exe-1")  # 80 vCPUs on 64 cores: 1.25
    assert effective_cpu_ratios(cluster, namespace)["exe-1"] == 1.25
    apply(cluster, migration_plan(namespace, goal="rebalance", thresholds={"cpuRatio": 0.5, "memoryRatio": 1.0},
                                  limits={"maxParallel": 5}))  # fmt: skip
    status = wait_phase(cluster, namespace, {"Succeeded", "Failed"}, 180)
    assert status["phase"] == "Succeeded", status
    ratios = effective_cpu_ratios(cluster, namespace)
    assert max(ratios.values()) <= 0.5, ratios
    # The fewest moves: exactly the vCPUs above the threshold (80 - 32 = 48 vCPUs, 24 VMs of 2).
    assert status["done"] == 24


def test_cold_moves_stop_re_place_and_start(cluster: LocalCluster, namespace: str) -> None:
    skewed_pool(cluster, namespace, 4, on="exe-2")
    before = {n: v["metadata"]["uid"] for n, v in vmis(cluster, namespace).items()}
    apply(cluster, migration_plan(namespace, goal="drain", nodes=["exe-2"], method="cold",
                                  limits={"maxParallel": 2}))  # fmt: skip
    status = wait_phase(cluster, namespace, {"Succeeded", "Failed"}, 120)
    assert status["phase"] == "Succeeded", status
    assert migrations(cluster, namespace) == []  # no live migration
    after = vmis(cluster, namespace)
    where = {n: (v["status"].get("nodeName"), v["status"].get("phase")) for n, v in after.items()}
    assert all(node != "exe-2" and phase == "Running" for node, phase in where.values()), where
    assert all(after[n]["metadata"]["uid"] != uid for n, uid in before.items())  # new instances: restarted
    assert all(v["actualDowntimeSeconds"] > 0 and v["method"] == "cold" for v in status["vms"])
    # Each VM has its runStrategy back and no pin to the target left behind.
    for vm in get_json(cluster, "-n", namespace, "vm")["items"]:
        assert vm["spec"]["runStrategy"] == "Always"
        assert "kubernetes.io/hostname" not in (vm["spec"]["template"]["spec"].get("nodeSelector") or {})


def test_failures_are_retried_and_the_budget_aborts(cluster: LocalCluster, namespace: str) -> None:
    skewed_pool(cluster, namespace, 10, on="exe-3")
    names = sorted(vmis(cluster, namespace))
    # 20 % of the VMs always fail; one more fails once and succeeds on its retry.
    for name in names[:2]:
        cluster.kubectl(
            "-n", namespace, "annotate", "vmi", name, "twin.virtfleet.io/fail-migration-at=Running"
        )
    cluster.kubectl("-n", namespace, "annotate", "vmi", names[2], "twin.virtfleet.io/fail-migration-at=Running",
                    "twin.virtfleet.io/fail-migrations=1")  # fmt: skip
    apply(cluster, migration_plan(
        namespace, goal="drain", nodes=["exe-3"], order="waves", selection={"vms": names},
        # The VM that recovers goes first, so its retry runs before the budget runs out.
        waves=[[names[2], names[0], names[1]], names[3:]],
        limits={"maxParallel": 3, "maxOutboundPerNode": 2},
        failurePolicy={"retries": 1, "backoffSeconds": 1, "maxFailures": 1, "onFailure": "abort"},
    ))  # fmt: skip
    status = wait_phase(cluster, namespace, {"Succeeded", "Failed", "Cancelled"}, 180)
    assert status["phase"] == "Failed", status
    by_name = {v["name"]: v for v in status["vms"]}
    assert [by_name[n]["phase"] for n in names[:3]] == ["Failed", "Failed", "Succeeded"]
    assert [by_name[n]["attempts"] for n in names[:3]] == [2, 2, 2]  # one retry each
    assert "injected failure" in by_name[names[0]]["lastError"]
    # The budget (1) was exceeded after wave 1: wave 2 never started.
    assert all(by_name[n]["phase"] == "Cancelled" for n in names[3:])
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "FailureBudgetExceeded")
    events = get_json(
        cluster, "-n", namespace, "events", "--field-selector", "involvedObject.kind=MigrationPlan"
    )
    assert {"MigrationRetry", "MigrationFailed", "PlanFailed"} <= {e["reason"] for e in events["items"]}
    # Every VM runs, on exactly one node.
    assert all(
        v["status"]["phase"] == "Running" and v["status"]["nodeName"]
        for v in vmis(cluster, namespace).values()
    )


def test_cancel_mid_plan_leaves_every_vm_running_on_one_node(cluster: LocalCluster, namespace: str) -> None:
    skewed_pool(cluster, namespace, 12, on="exe-0")
    for name in vmis(cluster, namespace):  # slow migrations: 2 GiB at 100 MB/s, about 20 s each
        cluster.kubectl("-n", namespace, "annotate", "vmi", name, "virtfleet.io/dirty-rate=1Mi")
    apply(
        cluster,
        migration_plan(namespace, goal="drain", nodes=["exe-0"], migration={"bandwidthPerMigration": "100M"}),
    )

    def some_done() -> bool:
        return plan_status(cluster, namespace).get("done", 0) >= 2

    wait_for(some_done, 120, "no VM moved")
    cluster.kubectl(
        "-n", namespace, "patch", "vfplan", "plan", "--type=merge", "-p", '{"spec":{"cancel":true}}'
    )
    status = wait_phase(cluster, namespace, {"Cancelled"}, 60)
    assert status["done"] >= 2 and status["cancelled"] >= 1 and status["inFlight"] == 0
    # Nothing in flight; every VM runs on one node (the source for the ones not moved).
    in_flight = [
        v
        for v in migrations(cluster, namespace)
        if v.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    ]
    assert in_flight == []
    moved = {v["name"] for v in status["vms"] if v["phase"] == "Succeeded"}
    for name, vmi in vmis(cluster, namespace).items():
        assert vmi["status"]["phase"] == "Running"
        assert (vmi["status"]["nodeName"] == "exe-0") == (name not in moved), name
