"""virtfleet.core.plans: a plan's status before it starts (no cluster, no clock)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from virtfleet.api.migrationplan import ColdStage, MigrationPlanSpec, MigrationPlanStatus
from virtfleet.core.capacity import NodeFacts, Placed
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.migration_planner import build_plan
from virtfleet.core.plan_executor import (
    SETUP_SAMPLES,
    Attempt,
    ColdMove,
    observed_cold_downtime_s,
    observed_setup_s,
)
from virtfleet.core.plans import late_failure_reasons, planned_status, started_status
from virtfleet.core.status import differing, wire
from virtfleet.kube.facts import attempt_of

GIB = 2**30
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REQUESTS = launcher_requests({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"}}})
NODES = [NodeFacts(f"n{i}", {"zone": "a"}, 32_000, 256 * GIB) for i in range(3)]


def placed(name: str, node: str, pool: str = "web", namespace: str = "ns", **annotations: str) -> Placed:
    return Placed(f"{namespace}/{name}", node, REQUESTS, labels=(("virtfleet.io/pool", pool),),
                  annotations=tuple(annotations.items()))  # fmt: skip


FLEET = [placed("web-0", "n0"), placed("web-1", "n0"), placed("db-0", "n0", pool="db"), placed("web-2", "n1"),
         placed("other", "n0", namespace="elsewhere")]  # fmt: skip


def written(status: MigrationPlanStatus, stored: dict[str, Any]) -> dict[str, Any]:
    """What the adapter writes for a decided status: one dump, one diff against the stored status."""
    return differing(wire(status), stored)


def test_dry_run_status_then_no_op() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"], "dryRun": True})
    plan = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)})
    first = written(planned_status(spec, plan, {}, 1, NOW), {})
    assert first["phase"] == "Planned" and first["total"] == 3
    assert {v["name"] for v in first["vms"]} == {"web-0", "web-1", "db-0"}
    assert all(v["target"] in ("n1", "n2") for v in first["vms"])
    assert first["estimatedMakespanSeconds"] > 0
    assert written(planned_status(spec, plan, first, 1, NOW), first) == {}  # the same facts: nothing to write


def test_a_plan_waiting_to_start_reports_its_plan_and_why() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "rebalance", "notBefore": "2999-01-01T00:00:00Z"})
    status = written(
        planned_status(
            spec, build_plan(spec, "ns", FLEET, NODES, {}), {}, 2, NOW, "Pending", "waiting for notBefore"
        ),
        {},
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


# A running drain as the API server hands it back: whole numbers as ints (estimatedMakespanSeconds 12,
# estimatedStartSeconds 0), others as floats (a cold move's downtime 0.39), plan and per-VM times to the
# millisecond, conditions' times to the second, the optional per-VM fields only where known.
STORED: dict[str, Any] = {
    "observedGeneration": 2,
    "conditions": [
        {"type": "Degraded", "status": "False", "reason": "NoFailures", "message": "",
         "lastTransitionTime": "2026-12-01T12:00:00Z", "observedGeneration": 2},
        {"type": "Progressing", "status": "True", "reason": "Running", "message": "2/5 moved",
         "lastTransitionTime": "2026-12-01T12:00:01Z", "observedGeneration": 2},
        {"type": "Ready", "status": "False", "reason": "Running", "message": "2 in flight",
         "lastTransitionTime": "2026-12-01T12:00:00Z", "observedGeneration": 2},
        {"type": "Succeeded", "status": "Unknown", "reason": "Running", "message": "",
         "lastTransitionTime": "2026-12-01T12:00:01Z", "observedGeneration": 2},
    ],
    "phase": "Running",
    "total": 5,
    "done": 2,
    "failed": 0,
    "inFlight": 2,
    "cancelled": 0,
    "skipped": 0,
    "progress": "2/5",
    "startedAt": "2026-12-01T12:00:00.123Z",
    "estimatedMakespanSeconds": 12,
    "estimatedMaxDowntimeSeconds": 0.39,
    "estimatedRemainingSeconds": 4.5,
    "migrationPolicy": "virtfleet-0f1e2d3c",
    "cordonedNodes": ["n0"],
    "vms": [
        {"name": "web-0", "pool": "web", "source": "n0", "target": "n1", "method": "live", "wave": 0,
         "phase": "Succeeded", "estimatedStartSeconds": 0, "estimatedDurationSeconds": 3.2,
         "estimatedDowntimeSeconds": 0.041, "attempts": 1, "node": "n1", "migration": "drain-web-0-1",
         "startedAt": "2026-12-01T12:00:00.457Z", "finishedAt": "2026-12-01T12:00:03.900Z",
         "actualDurationSeconds": 3.44, "lastError": ""},
        {"name": "db-0", "pool": "db", "source": "n0", "target": "n2", "method": "cold", "wave": 0,
         "phase": "Succeeded", "estimatedStartSeconds": 0, "estimatedDurationSeconds": 6,
         "estimatedDowntimeSeconds": 0.39, "attempts": 1, "node": "n2", "migration": "",
         "startedAt": "2026-12-01T12:00:00.460Z", "finishedAt": "2026-12-01T12:00:07.012Z",
         "actualDurationSeconds": 6.55, "actualDowntimeSeconds": 0.39, "lastError": ""},
        {"name": "web-1", "pool": "web", "source": "n0", "target": "n2", "method": "live", "wave": 1,
         "phase": "Waiting", "estimatedStartSeconds": 3.2, "estimatedDurationSeconds": 3.2,
         "estimatedDowntimeSeconds": 0.041, "attempts": 1, "node": "n0", "migration": "drain-web-1-1",
         "startedAt": "2026-12-01T12:00:04.001Z", "finishedAt": "2026-12-01T12:00:05.250Z",
         "retryAt": "2026-12-01T12:00:35.250Z", "lastError": "migration failed: target pod not ready"},
        {"name": "web-2", "pool": "web", "source": "n0", "target": "n1", "method": "live", "wave": 1,
         "phase": "Migrating", "estimatedStartSeconds": 3.2, "estimatedDurationSeconds": 12.0,
         "estimatedDowntimeSeconds": 0.3, "attempts": 1, "node": "n0", "migration": "drain-web-2-1",
         "startedAt": "2026-12-01T12:00:07.100Z", "lastError": ""},
        {"name": "web-3", "pool": "web", "source": "n0", "target": "n2", "method": "live", "wave": 2,
         "phase": "Planned", "estimatedStartSeconds": 6.4, "estimatedDurationSeconds": 3.2,
         "estimatedDowntimeSeconds": 0.041, "attempts": 0, "migration": "", "lastError": ""},
    ],
    "unplaceable": [],
}  # fmt: skip


def test_a_stored_status_round_trips_through_the_model_to_the_same_bytes() -> None:
    """The typed status writes what the dicts wrote: the same fields, ints as ints, floats as floats and
    each timestamp at its precision; compared as JSON text, since 12 == 12.0 in Python."""
    again = wire(MigrationPlanStatus.model_validate(STORED))
    assert json.dumps(again, sort_keys=True) == json.dumps(STORED, sort_keys=True)
    assert differing(again, STORED) == {}


def test_decided_times_are_written_at_their_precision() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"]})
    plan = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)})
    now = datetime(2026, 12, 1, 12, 0, 5, 678_901, tzinfo=UTC)
    status = wire(started_status(spec, plan, {}, 1, now, "", ["n0"]))
    assert status["startedAt"] == "2026-12-01T12:00:05.678Z"  # a plan's times: to the millisecond
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {
        "2026-12-01T12:00:05Z"
    }  # to the second


def _vmim(name: str, phases: dict[str, str], final: str = "Succeeded") -> dict[str, Any]:
    """A VirtualMachineInstanceMigration as KubeVirt v1.7 reports it (second-resolution stamps)."""
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": phases["Pending"],
            "labels": {"virtfleet.io/plan": "uid", "virtfleet.io/attempt": "1"},
            "annotations": {"virtfleet.io/vm": name},
        },
        "spec": {"vmiName": name},
        "status": {
            "phase": final,
            "phaseTransitionTimestamps": [
                {"phase": phase, "phaseTransitionTimestamp": stamp} for phase, stamp in phases.items()
            ],
        },
    }


def test_estimates_take_the_target_start_up_the_cluster_showed() -> None:
    # Real KubeVirt on kind: ~12 s from Scheduling until memory moves, then a second or two of copying.
    real = [
        _vmim(f"vm-{i}", {
            "Pending": f"2026-12-01T12:0{i}:00Z", "Scheduling": f"2026-12-01T12:0{i}:01Z",
            "Running": f"2026-12-01T12:0{i}:{13 + i:02d}Z", "Succeeded": f"2026-12-01T12:0{i}:{15 + i:02d}Z",
        })
        for i in range(3)
    ]  # fmt: skip
    failed = _vmim("vm-x", {"Pending": "2026-12-01T12:09:00Z", "Scheduling": "2026-12-01T12:09:01Z",
                            "Running": "2026-12-01T12:09:59Z", "Failed": "2026-12-01T12:10:00Z"}, "Failed")  # fmt: skip
    attempts = [a for a in map(attempt_of, [*real, failed]) if a is not None]
    assert observed_setup_s(attempts) == 13.0  # median of 12, 13, 14 s; a failure says nothing
    assert observed_setup_s(attempts[3:]) is None

    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"], "dryRun": True})
    default = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)})
    learned = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)}, setup_s=observed_setup_s(attempts))
    for before, after in zip(default.moves, learned.moves, strict=True):
        assert after.estimate.duration_s - before.estimate.duration_s == 11.0
    status = written(planned_status(spec, learned, {}, 1, NOW), {})
    assert status["estimatedSetupSeconds"] == 13.0
    assert written(planned_status(spec, default, {}, 1, NOW), {})["estimatedSetupSeconds"] == 2.0


def test_the_latest_migrations_decide_the_setup_estimate() -> None:
    def attempt(minute: int, setup_s: int) -> Attempt:
        start = NOW + timedelta(minutes=minute)
        copying = start + timedelta(seconds=setup_s)
        return Attempt(f"vm-{minute}", 1, f"m-{minute}", "Succeeded", start, start, copying, copying=copying)

    old = [attempt(minute, 60) for minute in range(SETUP_SAMPLES)]
    new = [attempt(100 + minute, 5) for minute in range(SETUP_SAMPLES)]
    assert observed_setup_s([*new, *old]) == 5.0  # images are cached now: the old slow starts no longer count


def test_cold_moves_teach_the_cold_downtime_estimate() -> None:
    def move(vm: str, minute: int, down_s: int, stage: ColdStage = ColdStage.DONE) -> ColdMove:
        started = NOW + timedelta(minutes=minute)
        finished = started + timedelta(seconds=down_s) if stage == ColdStage.DONE else None
        return ColdMove(vm, 1, "n1", "Always", started, stage, finished=finished)

    assert observed_cold_downtime_s([move("a", 0, 50, ColdStage.STARTING)]) is None  # not finished: no figure
    moves = [move("a", 0, 48), move("b", 1, 54), move("c", 2, 60), move("d", 3, 0, ColdStage.FAILED)]
    assert observed_cold_downtime_s(moves) == 54.0  # the median of the finished ones

    spec = MigrationPlanSpec.model_validate(
        {"goal": "drain", "nodes": ["n0"], "method": "cold", "dryRun": True}
    )
    model = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)})
    learned = build_plan(spec, "ns", FLEET, NODES, {"web": (4.0, 1.0)}, cold_downtime_s=54.0)
    assert {m.estimate.downtime_s for m in model.moves} == {2.0 + 2.0 * 4}  # start-up + 2 s per GiB of 4Gi
    assert {(m.estimate.downtime_s, m.estimate.duration_s) for m in learned.moves} == {(54.0, 54.0)}


def test_a_failure_reason_that_arrives_after_the_plan_ended_is_added() -> None:
    line = {"name": "vm-0", "source": "n0", "target": "n1", "method": "live", "wave": 0, "phase": "Failed",
            "estimatedStartSeconds": 0, "estimatedDurationSeconds": 2.2, "estimatedDowntimeSeconds": 0.2,
            "attempts": 2, "migration": "plan-vm-0-2", "lastError": "the migration failed"}  # fmt: skip
    reason = "Live migration is not completed after 1 seconds and has been aborted"
    late = Attempt("vm-0", 2, "plan-vm-0-2", "Failed", NOW, NOW, NOW, reason)
    status = {"phase": "Failed", "vms": [line]}
    lines = late_failure_reasons(status, [late])
    assert lines is not None and lines[0].last_error == reason
    assert wire(MigrationPlanStatus(vms=lines))["vms"][0]["attempts"] == 2
    assert late_failure_reasons({"phase": "Failed", "vms": [{**line, "lastError": reason}]}, [late]) is None
    assert late_failure_reasons(status, []) is None
