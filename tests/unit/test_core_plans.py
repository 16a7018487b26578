"""virtfleet.core.plans: a plan's status before it starts (no cluster, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime

from virtfleet.api.migrationplan import MigrationPlanSpec
from virtfleet.core.capacity import NodeFacts, Placed
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.migration_planner import build_plan
from virtfleet.core.plans import planned_status

GIB = 2**30
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REQUESTS = launcher_requests({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"}}})
NODES = [NodeFacts(f"n{i}", {"zone": "a"}, 32_000, 256 * GIB) for i in range(3)]


def placed(name: str, node: str, pool: str = "web", namespace: str = "ns", **annotations: str) -> Placed:
    return Placed(f"{namespace}/{name}", node, REQUESTS, labels=(("virtfleet.io/pool", pool),),
                  annotations=tuple(annotations.items()))  # fmt: skip


FLEET = [placed("web-0", "n0"), placed("web-1", "n0"), placed("db-0", "n0", pool="db"), placed("web-2", "n1"),
         placed("other", "n0", namespace="elsewhere")]  # fmt: skip


def test_dry_run_status_then_no_op() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"], "dryRun": True})
    plan = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)})
    first = planned_status(spec, plan, {}, 1, NOW)
    assert first["phase"] == "Planned" and first["total"] == 3
    assert {v["name"] for v in first["vms"]} == {"web-0", "web-1", "db-0"}
    assert all(v["target"] in ("n1", "n2") for v in first["vms"])
    assert first["estimatedMakespanSeconds"] > 0
    assert planned_status(spec, plan, first, 1, NOW) == {}  # the same facts: nothing to write


def test_a_plan_waiting_to_start_reports_its_plan_and_why() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "rebalance", "notBefore": "2999-01-01T00:00:00Z"})
    status = planned_status(
        spec, build_plan(spec, "ns", FLEET, NODES, {}), {}, 2, NOW, "Pending", "waiting for notBefore"
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
