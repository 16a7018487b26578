"""virtfleet.kube.plans.reconcile_plan against a fake client that fails on any call not allowed: what a
reconcile writes before a plan starts, when it starts, and that a plan that only plans writes nothing
the second time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fake_kube import FakeKube, runtime_with

from virtfleet.api import reasons
from virtfleet.api.labels import CORDONED_BY_ANNOTATION
from virtfleet.core.capacity import NodeFacts, Placed
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.plans import PlanInputs
from virtfleet.kube.client import (
    MIGRATION_PLANS,
    MIGRATION_POLICIES,
    MIGRATIONS,
    NODES,
    VIRTUAL_MACHINE_INSTANCES,
    ApiError,
    ResourceRef,
)
from virtfleet.kube.discovery import CRDS, KUBEVIRTS
from virtfleet.kube.plans import delete_plan_objects, reconcile_plan
from virtfleet.kube.runtime import EXPECTATION_TTL

GIB = 2**30
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REQUESTS = launcher_requests({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"}}})
FLEET = [Placed(f"ns/vm-{i}", "n0", REQUESTS, labels=(("virtfleet.io/pool", "web"),), running=True)
         for i in range(3)]  # fmt: skip
NODE_FACTS = [NodeFacts(f"n{i}", {"kubernetes.io/hostname": f"n{i}"}, 32_000, 256 * GIB) for i in range(3)]

# A plan re-reads what the cluster's KubeVirt serves before it writes its MigrationPolicy.
DISCOVERY = (("get", CRDS), ("list", KUBEVIRTS))


def inputs(spec: dict[str, Any], status: dict[str, Any] | None = None) -> PlanInputs:
    return PlanInputs("ns", "drain", "plan-uid", 1, spec, status or {}, FLEET, NODE_FACTS)


@pytest.fixture(autouse=True)
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("virtfleet.kube.runtime.Runtime.now", staticmethod(lambda: NOW))


async def test_a_dry_run_writes_its_plan_once_then_nothing() -> None:
    kube = FakeKube(("patch/status", MIGRATION_PLANS))
    runtime = runtime_with(kube)
    spec = {"goal": "drain", "nodes": ["n0"], "dryRun": True}
    first = await reconcile_plan(runtime, inputs(spec))
    assert kube.calls == [("patch/status", "migrationplans", "ns/drain")]
    assert first.status["phase"] == "Planned" and first.status["total"] == 3
    again = FakeKube()
    runtime.kube = again  # type: ignore[assignment]
    second = await reconcile_plan(runtime, inputs(spec, first.status))
    assert again.calls == [] and second.events == [] and second.wake_at is None


async def test_a_plan_waiting_for_not_before_wakes_then_and_touches_nothing_else() -> None:
    kube = FakeKube(("patch/status", MIGRATION_PLANS))
    spec = {"goal": "drain", "nodes": ["n0"], "notBefore": "2026-12-01T13:00:00Z"}
    outcome = await reconcile_plan(runtime_with(kube), inputs(spec))
    assert kube.calls == [("patch/status", "migrationplans", "ns/drain")]
    assert outcome.status["phase"] == "Pending"
    assert outcome.wake_at == datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


async def test_starting_a_drain_cordons_freezes_the_plan_and_starts_what_the_limits_allow() -> None:
    kube = FakeKube(
        ("patch", NODES),
        ("apply", MIGRATION_POLICIES),
        *DISCOVERY,
        ("patch", VIRTUAL_MACHINE_INSTANCES),
        ("patch/status", MIGRATION_PLANS),
        ("create", MIGRATIONS),
    )
    outcome = await reconcile_plan(runtime_with(kube), inputs({"goal": "drain", "nodes": ["n0"]}))
    assert kube.writes("patch", "nodes") == ["/n0"]
    assert kube.writes("apply", "migrationpolicies") == ["/virtfleet-plan-uid"]
    # Two migrations: the default maxOutboundPerNode of the drained node.
    assert len(kube.writes("create", "virtualmachineinstancemigrations")) == 2
    # One write freezes the plan, one reports the first step.
    assert kube.writes("patch/status", "migrationplans") == ["ns/drain", "ns/drain"]
    assert outcome.status["phase"] == "Running" and outcome.status["startedAt"] == "2026-12-01T12:00:00.000Z"
    assert [r for _, r, _ in outcome.events][:2] == [reasons.NODE_CORDONED, reasons.PLAN_STARTED]


async def test_an_invalid_spec_is_reported_and_nothing_else_is_written() -> None:
    kube = FakeKube(("patch/status", MIGRATION_PLANS))
    outcome = await reconcile_plan(runtime_with(kube), inputs({"goal": "teleport"}))
    assert kube.calls == [("patch/status", "migrationplans", "ns/drain")]
    stalled = next(c for c in outcome.status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", reasons.INVALID_SPEC)


async def test_a_finished_plan_only_records_the_generation() -> None:
    kube = FakeKube()
    status = {"phase": "Succeeded", "observedGeneration": 1}
    outcome = await reconcile_plan(runtime_with(kube), inputs({"goal": "drain", "nodes": ["n0"]}, status))
    assert kube.calls == [] and outcome.events == []


@pytest.mark.parametrize(("cordoned_by", "ours"), [("ns/drain", True), ("someone/else", False)])
async def test_a_restart_between_cordon_and_status_still_uncordons_only_its_own(
    cordoned_by: str, ours: bool
) -> None:
    """kill -9 after the cordon, before the status that records it: the node is already unschedulable
    when the plan starts again, and only the plan's own annotation makes it the plan's to uncordon."""
    node = {"metadata": {"name": "n0", "annotations": {CORDONED_BY_ANNOTATION: cordoned_by}}, "spec": {"unschedulable": True}}  # fmt: skip
    kube = FakeKube(
        ("get", NODES),
        ("apply", MIGRATION_POLICIES),
        *DISCOVERY,
        ("patch", VIRTUAL_MACHINE_INSTANCES),
        ("patch/status", MIGRATION_PLANS),
        ("create", MIGRATIONS),
        objects={("get", "nodes", "/n0"): node},
    )
    cordoned = [replace(NODE_FACTS[0], schedulable=False), *NODE_FACTS[1:]]
    plan = PlanInputs("ns", "drain", "plan-uid", 1, {"goal": "drain", "nodes": ["n0"], "uncordonWhenDone": True},
                      {}, FLEET, cordoned)  # fmt: skip
    outcome = await reconcile_plan(runtime_with(kube), plan)
    assert kube.writes("patch", "nodes") == []  # no second cordon
    assert outcome.status["cordonedNodes"] == (["n0"] if ours else [])


@pytest.mark.parametrize(("uncordon", "cordoned_by", "patched"), [
    (["n0"], "ns/drain", ["/n0"]), (["n0"], "someone/else", []), ([], "ns/drain", []),
])  # fmt: skip
async def test_deleting_a_plan_mid_drain_uncordons_what_it_cordoned(
    uncordon: list[str], cordoned_by: str, patched: list[str]
) -> None:
    """Found on real KubeVirt: a drain plan deleted with its namespace left its node cordoned."""
    node = {"metadata": {"name": "n0", "annotations": {CORDONED_BY_ANNOTATION: cordoned_by}}, "spec": {"unschedulable": True}}  # fmt: skip
    kube = FakeKube(
        ("delete", MIGRATION_POLICIES), ("get", NODES), ("patch", NODES), ("list", VIRTUAL_MACHINE_INSTANCES),
        objects={("get", "nodes", "/n0"): node},
    )  # fmt: skip
    await delete_plan_objects(kube, "ns", "plan-uid", [], NOW, "drain", uncordon)
    assert kube.writes("patch", "nodes") == patched


class RefusingKube(FakeKube):
    """KubeVirt's admission webhook refuses every migration create, as it does while the VMI's previous
    migration is still in flight."""

    async def create(
        self, ref: ResourceRef, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        if ref.plural == MIGRATIONS.plural:
            self._call("create", ref, namespace, body["metadata"]["name"], body)
            raise ApiError(status=400, reason="Bad Request", body=json.dumps({"message": WEBHOOK_DENIAL}))
        return await super().create(ref, namespace, body)


WEBHOOK_DENIAL = (
    'admission webhook "migration-create-validator.kubevirt.io" denied the request: in-flight migration '
    "detected. Active migration job (1234) is currently already in progress for VMI vm-0."
)
PLAN_WRITES = (
    ("patch", NODES),
    ("apply", MIGRATION_POLICIES),
    *DISCOVERY,
    ("patch", VIRTUAL_MACHINE_INSTANCES),
    ("patch/status", MIGRATION_PLANS),
    ("create", MIGRATIONS),
)


async def test_a_refused_start_counts_as_a_failed_attempt_and_the_plan_wakes_for_its_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = RefusingKube(*PLAN_WRITES)
    runtime = runtime_with(kube)
    spec = {"goal": "drain", "nodes": ["n0"], "limits": {"maxParallel": 1},
            "failurePolicy": {"retries": 1, "backoffSeconds": 5, "maxFailures": 0, "onFailure": "abort"}}  # fmt: skip
    first = await reconcile_plan(runtime, inputs(spec))
    line = first.status["vms"][0]
    assert (line["phase"], line["attempts"]) == ("Waiting", 1), line
    assert WEBHOOK_DENIAL in line["lastError"]  # KubeVirt's words reach the user
    assert reasons.ACTION_FAILED in [reason for _, reason, _ in first.events]
    assert first.wake_at == NOW + timedelta(seconds=5)  # the backoff, not "wait for an event"
    assert runtime.plan_starts["plan-uid"] == {}  # nothing awaited from the watch

    later = NOW + timedelta(seconds=5)
    monkeypatch.setattr("virtfleet.kube.runtime.Runtime.now", staticmethod(lambda: later))
    second = await reconcile_plan(runtime, inputs(spec, first.status))
    assert kube.writes("create", "virtualmachineinstancemigrations") == ["ns/drain-vm-0-1", "ns/drain-vm-0-2"]
    assert second.status["phase"] == "Failed", second.status  # retries spent, budget 0, abort
    assert second.status["vms"][0]["attempts"] == 2


async def test_a_start_the_watch_never_shows_wakes_the_plan_when_it_is_assumed_lost() -> None:
    kube = FakeKube(*PLAN_WRITES)
    runtime = runtime_with(kube)
    outcome = await reconcile_plan(runtime, inputs({"goal": "drain", "nodes": ["n0"]}))
    assert outcome.status["vms"][0]["phase"] == "Migrating"
    assert outcome.wake_at is not None
    assert outcome.wake_at <= NOW + timedelta(seconds=EXPECTATION_TTL)
