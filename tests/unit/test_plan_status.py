"""Selecting a plan's VMs and reporting a plan in status (no cluster)."""

from __future__ import annotations

from virtfleet.api.migrationplan import MigrationPlanSpec
from virtfleet.core.capacity import NodeFacts
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.kube.facts import Placed
from virtfleet.kube.plans import build_plan, plan_status, select

GIB = 2**30
REQUESTS = launcher_requests({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"}}})
NODES = [NodeFacts(f"n{i}", {"zone": "a"}, 32_000, 256 * GIB) for i in range(3)]


def placed(name: str, node: str, pool: str = "web", namespace: str = "ns", **annotations: str) -> Placed:
    return Placed(f"{namespace}/{name}", node, REQUESTS, labels=(("virtfleet.io/pool", pool),),
                  annotations=tuple(annotations.items()))  # fmt: skip


FLEET = [placed("web-0", "n0"), placed("web-1", "n0"), placed("db-0", "n0", pool="db"), placed("web-2", "n1"),
         placed("other", "n0", namespace="elsewhere")]  # fmt: skip


def test_selection_is_namespaced_and_combines_fields() -> None:
    spec = MigrationPlanSpec.model_validate(
        {"goal": "drain", "nodes": ["n0"], "selection": {"pools": ["web"]}}
    )
    assert [p.key for p in select(spec, "ns", FLEET, {})] == ["ns/web-0", "ns/web-1", "ns/web-2"]
    spec = MigrationPlanSpec.model_validate(
        {"goal": "drain", "nodes": ["n0"], "selection": {"vms": ["db-0"]}}
    )
    assert [p.key for p in select(spec, "ns", FLEET, {})] == ["ns/db-0"]


def test_dry_run_status_then_no_op() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"], "dryRun": True})
    plan = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)})
    first = plan_status(spec, plan, {}, 1)
    assert first["phase"] == "Planned" and first["total"] == 3
    assert {v["name"] for v in first["vms"]} == {"web-0", "web-1", "db-0"}
    assert all(v["target"] in ("n1", "n2") for v in first["vms"])
    assert first["estimatedMakespanSeconds"] > 0
    assert plan_status(spec, plan, first, 1) == {}  # the same facts: nothing to write


def test_priority_annotation_orders_the_moves() -> None:
    fleet = [placed("a", "n0"), placed("b", "n0", **{"virtfleet.io/priority": "10"})]
    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"], "dryRun": True,
                                             "limits": {"maxParallel": 1}})  # fmt: skip
    plan = build_plan(spec, "ns", fleet, NODES, {})
    assert [m.vm for m in plan.moves] == ["ns/b", "ns/a"]


def test_a_plan_waiting_to_start_reports_its_plan_and_why() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "rebalance", "notBefore": "2999-01-01T00:00:00Z"})
    status = plan_status(
        spec, build_plan(spec, "ns", FLEET, NODES, {}), {}, 2, "Pending", "waiting for notBefore"
    )
    reconciling = next(c for c in status["conditions"] if c["type"] == "Reconciling")
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert status["phase"] == "Pending"
    assert (reconciling["status"], reconciling["reason"], reconciling["message"]) == (
        "True",
        "WaitingToStart",
        "waiting for notBefore",
    )
    assert stalled["status"] == "False"
