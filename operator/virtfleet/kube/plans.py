"""MigrationPlan reconcile: gather the inputs, let the pure core decide (virtfleet.core.plans, with the
planner and the executor), carry out the actions, write the status once.

Before it starts (dry run, or waiting for notBefore) a plan is re-planned whenever its spec changes and
status shows the plan and its estimates. Starting freezes the plan in status.vms; from then on targets
do not change, and every step derives each VM's state from the API (migrations, cold-move annotations,
VMIs), so a restarted operator resumes where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from virtfleet.api import reasons
from virtfleet.api.labels import (
    HOSTNAME_LABEL,
    PLAN_LABEL,
)
from virtfleet.api.migrationplan import ColdStage, MigrationPlanSpec, MigrationPlanStatus
from virtfleet.api.timestamps import stamp
from virtfleet.core import plan_executor, plans
from virtfleet.core import plan_objects as objects
from virtfleet.core.migration_planner import Plan, build_plan
from virtfleet.core.plan_executor import (
    AbortMigration,
    ColdMove,
    FinishColdMove,
    StartAfterColdMove,
    StartMigration,
    StopForColdMove,
    World,
)
from virtfleet.core.plans import Event, PlanInputs
from virtfleet.core.status import differing, wire
from virtfleet.kube.client import (
    MIGRATION_PLANS,
    MIGRATION_POLICIES,
    MIGRATIONS,
    NODES,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINES,
    ApiError,
    Conflict,
    Kube,
    NotFound,
)
from virtfleet.kube.discovery import discover_kubevirt
from virtfleet.kube.runtime import Runtime

__all__ = ["PlanInputs", "PlanOutcome", "delete_plan_objects", "reconcile_plan"]

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0  # seconds between status writes of a running plan, unless its phase changes


@dataclass
class PlanOutcome:
    """What a reconcile did, for the handler to report, and when it wants to run again."""

    status: dict[str, Any] = field(default_factory=dict)  # the plan's status as just written
    events: list[Event] = field(default_factory=list)
    wake_at: datetime | None = None
    finished: list[plan_executor.VMState] = field(default_factory=list)  # VMs that finished in this step


async def reconcile_plan(runtime: Runtime, inputs: PlanInputs) -> PlanOutcome:
    now = runtime.now()
    outcome = PlanOutcome()
    status = dict(inputs.status)
    try:
        spec = MigrationPlanSpec.model_validate(dict(inputs.spec))
    except ValidationError as error:
        desired = plans.invalid_spec_status(status, str(error), inputs.generation, now)
        await _write_status(runtime, inputs, status, _patch(desired, status), outcome)
        return outcome
    if status.get("phase") in plan_executor.PLAN_TERMINAL:
        desired = MigrationPlanStatus(observed_generation=inputs.generation)
        late = plans.late_failure_reasons(status, inputs.attempts)
        if late is not None:
            desired = MigrationPlanStatus(observed_generation=inputs.generation, vms=late)
        await _write_status(runtime, inputs, status, _patch(desired, status), outcome)
        return outcome
    if not status.get("startedAt"):
        plan = build_plan(
            spec,
            inputs.namespace,
            list(inputs.placements),
            list(inputs.nodes),
            inputs.pool_ratios,
            runtime.kubevirt,
            inputs.setup_s,
            inputs.cold_downtime_s,
        )
        decision = plans.before_start(spec, plan, status, inputs.generation, now)
        outcome.wake_at = decision.wake_at
        if not decision.start:
            await _write_status(runtime, inputs, status, _patch(decision.status, status), outcome)
            return outcome
        await _start(runtime, inputs, spec, plan, status, now, outcome)
        status = outcome.status  # the frozen plan: its first step runs at once
    await _run(runtime, inputs, spec, status, now, outcome)
    return outcome


async def _start(
    runtime: Runtime,
    inputs: PlanInputs,
    spec: MigrationPlanSpec,
    plan: Plan,
    status: Mapping[str, Any],
    now: datetime,
    outcome: PlanOutcome,
) -> None:
    """Cordon first so nothing new lands on the nodes being drained, then freeze the plan."""
    cordoned = await _cordon(runtime.kube, spec, inputs, outcome) if spec.goal == "drain" else []
    policy = ""
    live = [move.vm.split("/", 1)[1] for move in plan.moves if move.method == "live"]
    if live:
        policy = await _ensure_policy(runtime, spec, inputs)
        await label_plan_vmis(runtime.kube, inputs, live)
    desired = plans.started_status(spec, plan, status, inputs.generation, now, policy, cordoned)
    outcome.events.append(plans.started_event(plan))
    await _write_status(runtime, inputs, status, _patch(desired, status), outcome)


def _world(runtime: Runtime, inputs: PlanInputs, now: datetime) -> World:
    """The indexes' world, plus what only this operator remembers: starts the watch has not shown yet,
    and when it first saw each failure (backoffs count on its own clock)."""
    world = plans.world_of(inputs, now)
    failed = [a.name for a in inputs.attempts if a.phase == "Failed"]
    return replace(
        world,
        expected=runtime.plan_expectations(inputs.uid, world.attempts, world.cold),
        failure_seen=runtime.failures_seen(inputs.uid, failed, now),
        refused=dict(runtime.plan_refusals.get(inputs.uid, {})),
    )


async def _run(
    runtime: Runtime,
    inputs: PlanInputs,
    spec: MigrationPlanSpec,
    status: Mapping[str, Any],
    now: datetime,
    outcome: PlanOutcome,
) -> None:
    settings = runtime.settings
    controls = plans.controls_of(
        spec, settings.kubevirt_parallel_migrations, settings.kubevirt_parallel_outbound_per_node
    )
    result = plan_executor.step(inputs.name, plans.entries_of(status), _world(runtime, inputs, now), controls)
    hostnames = {n.name: n.labels.get(HOSTNAME_LABEL, n.name) for n in inputs.nodes}
    refused = await _act(runtime, inputs, status, result, hostnames, now, outcome)
    if refused:  # step again at once: the refused VMs wait out a backoff, or fail for good
        result = plan_executor.step(
            inputs.name, plans.entries_of(status), _world(runtime, inputs, now), controls
        )
    changes = _patch(plans.running_status(spec, inputs, status, result, controls, now), status)
    outcome.wake_at = _earliest(result.wake_at, runtime.expectations_lapse_in(inputs.uid), now)
    outcome.status = dict(status)
    # Status follows the plan at most once a second while only per-VM lines and counts move; a phase
    # change is written at once. The worker is then free to refill a freed slot without waiting on it.
    since = runtime.clock() - runtime.plan_status_written.get(inputs.uid, 0.0)
    if changes and "phase" not in changes and since < STATUS_INTERVAL:
        due = runtime.now() + timedelta(seconds=STATUS_INTERVAL - since)
        outcome.wake_at = min(outcome.wake_at, due) if outcome.wake_at else due
        return
    events, finished = plans.step_events(status, result, changes)
    outcome.events.extend(events)
    outcome.finished.extend(finished)
    if result.phase in plan_executor.PLAN_TERMINAL and spec.uncordon_when_done:
        await _uncordon(runtime.kube, inputs, status.get("cordonedNodes") or [], outcome)
    await _write_status(runtime, inputs, status, changes, outcome)
    if changes:
        runtime.plan_status_written[inputs.uid] = runtime.clock()


def _earliest(at: datetime | None, lapse_in: float | None, now: datetime) -> datetime | None:
    """The step's own wake-up, or when an unseen start is assumed lost, whichever comes first: a create
    that never shows (lost, or refused without an answer) must not leave the plan waiting for an event."""
    if lapse_in is None:
        return at
    lapse = now + timedelta(seconds=lapse_in)
    return lapse if at is None else min(at, lapse)


def _patch(desired: MigrationPlanStatus, status: Mapping[str, Any]) -> dict[str, Any]:
    """The one place a plan's typed status becomes the wire's (one dump), and the fields of it that differ
    from the stored status (one diff): the merge patch, empty when nothing changed."""
    return differing(wire(desired), status)


async def _write_status(
    runtime: Runtime,
    inputs: PlanInputs,
    status: Mapping[str, Any],
    changes: Mapping[str, Any],
    outcome: PlanOutcome,
) -> None:
    """Write `changes`, a patch from `_patch`, and remember the status it makes."""
    outcome.status = {**status, **changes}
    if not changes:
        return
    updated = await runtime.kube.patch(
        MIGRATION_PLANS, inputs.namespace, inputs.name, {"status": changes}, subresource="status"
    )
    outcome.status = dict(updated.get("status") or {})
    runtime.plan_status[inputs.uid] = outcome.status


# -- actions -------------------------------------------------------------------------------------------


ACTION_CONCURRENCY = 16


async def _act(
    runtime: Runtime,
    inputs: PlanInputs,
    status: Mapping[str, Any],
    result: plan_executor.Step,
    hostnames: Mapping[str, str],
    now: datetime,
    outcome: PlanOutcome,
) -> bool:
    """Carry out a step's actions concurrently (each concerns another VM): a slot freed is refilled as
    fast as one API call allows. True if the API refused a start (recorded in the runtime)."""
    kube = runtime.kube
    policy = bool(status.get("migrationPolicy"))
    labelled = {
        placed.key.split("/", 1)[1]
        for placed in inputs.placements
        if placed.key.startswith(f"{inputs.namespace}/") and (PLAN_LABEL, inputs.uid) in placed.labels
    }
    semaphore = asyncio.Semaphore(ACTION_CONCURRENCY)
    refused = False

    async def one(action: plan_executor.Action) -> None:
        nonlocal refused
        try:
            async with semaphore:
                if isinstance(action, StartMigration):
                    runtime.expect_start(inputs.uid, action.vm, action.attempt)
                    if policy and action.vm not in labelled:  # labelled at the start; a new VMI is not
                        await _label_vmi(kube, inputs, action.vm)
                    await _create_migration(kube, inputs, action, hostnames)
                elif isinstance(action, AbortMigration):
                    await kube.delete(MIGRATIONS, inputs.namespace, action.name)
                elif isinstance(action, StopForColdMove):
                    runtime.expect_start(inputs.uid, action.vm, action.attempt)
                    await _stop_for_cold_move(kube, inputs, action, hostnames, now)
                elif isinstance(action, StartAfterColdMove):
                    await _start_after_cold_move(kube, inputs, action)
                elif isinstance(action, FinishColdMove):
                    await _finish_cold_move(kube, inputs, action, now)
        except (NotFound, Conflict):
            return  # gone, or changed under us: the next step sees the new state and decides again
        except ApiError as error:
            outcome.events.append(("Warning", reasons.ACTION_FAILED, f"{action}: {error}"))
            log.warning(
                "migration plan %s/%s: %s failed: %s %s", inputs.namespace, inputs.name, action, error.status,
                error.reason,
            )  # fmt: skip
            if isinstance(action, StartMigration | StopForColdMove):
                runtime.refuse_start(inputs.uid, action.vm, action.attempt, _refusal_text(error), now)
                refused = True

    await asyncio.gather(*(one(action) for action in result.actions))
    return refused


def _refusal_text(error: ApiError) -> str:
    """The API's own words for a refused start (KubeVirt's webhook says why), for the VM's status line."""
    return f"refused by the API {error}"


async def label_plan_vmis(kube: Kube, inputs: PlanInputs, names: Iterable[str]) -> None:
    """Label the VMIs of a plan's live moves at its start, so its MigrationPolicy selects them."""
    semaphore = asyncio.Semaphore(ACTION_CONCURRENCY)

    async def one(name: str) -> None:
        async with semaphore:
            with contextlib.suppress(NotFound):
                await _label_vmi(kube, inputs, name)

    await asyncio.gather(*(one(name) for name in names))


async def _create_migration(
    kube: Kube, inputs: PlanInputs, action: StartMigration, hostnames: Mapping[str, str]
) -> None:
    # Conflict: created before a restart or from a stale cache; never a second one.
    with contextlib.suppress(Conflict):
        await kube.create(MIGRATIONS, inputs.namespace, objects.migration(inputs, action, hostnames))


async def _label_vmi(kube: Kube, inputs: PlanInputs, vm: str) -> None:
    labels = {PLAN_LABEL: inputs.uid}
    await kube.patch(VIRTUAL_MACHINE_INSTANCES, inputs.namespace, vm, {"metadata": {"labels": labels}})


async def _stop_for_cold_move(
    kube: Kube, inputs: PlanInputs, action: StopForColdMove, hostnames: Mapping[str, str], now: datetime
) -> None:
    """Stage 1: remember how the VM ran, pin it to the target, stop it (one write)."""
    vm = await kube.get(VIRTUAL_MACHINES, inputs.namespace, action.vm)
    strategy = (vm.get("spec") or {}).get("runStrategy")
    if strategy not in objects.COLD_RUN_STRATEGIES:
        raise ApiError(
            status=422, reason=f"cold moves need runStrategy Always or RerunOnFailure, not {strategy}"
        )
    patch = objects.stop_for_cold_move(vm, inputs.uid, action, hostnames, now)
    await kube.patch(VIRTUAL_MACHINES, inputs.namespace, action.vm, patch)


async def _cold_update(
    kube: Kube, inputs: PlanInputs, vm_name: str, run_strategy: str | None, unpin: bool, **changes: Any
) -> None:
    vm = await kube.get(VIRTUAL_MACHINES, inputs.namespace, vm_name)
    patch = objects.cold_update(vm, inputs.uid, run_strategy, unpin, **changes)
    if patch is not None:
        await kube.patch(VIRTUAL_MACHINES, inputs.namespace, vm_name, patch)


async def _start_after_cold_move(kube: Kube, inputs: PlanInputs, action: StartAfterColdMove) -> None:
    """Stage 2: start it (Always, whatever it ran with: a stopped RerunOnFailure VM would stay stopped).
    A move given up starts unpinned, wherever the scheduler puts it."""
    changes: dict[str, Any] = {"stage": ColdStage.STARTING}
    if action.abandon:
        changes["abandon"] = action.abandon
    await _cold_update(kube, inputs, action.vm, "Always", bool(action.abandon), **changes)


async def _finish_cold_move(kube: Kube, inputs: PlanInputs, action: FinishColdMove, now: datetime) -> None:
    """Stage 3: the VM runs again; unpin it and give it back its runStrategy."""
    vm = await kube.get(VIRTUAL_MACHINES, inputs.namespace, action.vm)
    record = objects.cold_record(vm)
    changes: dict[str, Any] = {
        "stage": ColdStage.FAILED if action.failure else ColdStage.DONE,
        "finishedAt": stamp(now),
    }
    if action.failure:
        changes["failure"] = action.failure
    await _cold_update(kube, inputs, action.vm, str(record.get("runStrategy") or "Always"), True, **changes)


async def _ensure_policy(runtime: Runtime, spec: MigrationPlanSpec, inputs: PlanInputs) -> str:
    # KubeVirt can be upgraded, downgraded or reinstalled under a running operator (seen on kind: v1.9's
    # CRDs at the operator's start, v1.7's a minute later): read what its MigrationPolicy serves now.
    runtime.kubevirt = await discover_kubevirt(runtime.kube)
    body = objects.migration_policy(spec, inputs, runtime.kubevirt)
    await runtime.kube.apply(MIGRATION_POLICIES, None, body["metadata"]["name"], body)
    return str(body["metadata"]["name"])


async def delete_plan_objects(
    kube: Kube,
    namespace: str,
    uid: str,
    cold_moves: Sequence[ColdMove],
    now: datetime,
    name: str = "",
    uncordon: Sequence[str] = (),
) -> None:
    """A deleted plan: its MigrationPolicy goes (cluster-scoped, so not by owner reference), VMs in a cold
    move start again, VMIs lose the plan's label, and the nodes it cordoned are uncordoned if it was to do
    so when done (a plan deleted mid-drain, or with its namespace, left them cordoned). Migrations go by
    owner reference (garbage collector)."""
    with contextlib.suppress(NotFound):
        await kube.delete(MIGRATION_POLICIES, None, objects.policy_name(uid))
    inputs = PlanInputs(namespace, name, uid, 0, {}, {})
    if uncordon:
        await _uncordon(kube, inputs, uncordon, PlanOutcome())
    for move in cold_moves:
        if move.stage in (ColdStage.STOPPING, ColdStage.STARTING):
            with contextlib.suppress(NotFound):
                # Start it unpinned: no step will follow to finish the move.
                await _cold_update(kube, inputs, move.vm, "Always" if move.halted else move.run_strategy, True,
                                   stage=ColdStage.FAILED, failure="the plan was deleted", finishedAt=stamp(now))  # fmt: skip
    labelled = await kube.list(VIRTUAL_MACHINE_INSTANCES, namespace, label_selector=f"{PLAN_LABEL}={uid}")
    for vmi in labelled.get("items") or []:
        with contextlib.suppress(NotFound):
            await kube.patch(
                VIRTUAL_MACHINE_INSTANCES,
                namespace,
                vmi["metadata"]["name"],
                {"metadata": {"labels": {PLAN_LABEL: None}}},
            )


async def _cordon(kube: Kube, spec: MigrationPlanSpec, inputs: PlanInputs, outcome: PlanOutcome) -> list[str]:
    """Cordon the nodes to drain that are schedulable; remember which, so only those are uncordoned."""
    schedulable = {n.name for n in inputs.nodes if n.schedulable}
    owner = f"{inputs.namespace}/{inputs.name}"
    cordoned = []
    for node in spec.nodes:
        if node not in schedulable:
            # Already cordoned: ours only if this plan did it and the operator stopped before the status
            # write that records it (kill -9 then); anyone else's cordon is left alone when we finish.
            try:
                mine = objects.cordoned_by(await kube.get(NODES, None, node)) == owner
            except NotFound:
                continue
            if mine:
                cordoned.append(node)
            continue
        try:
            await kube.patch(NODES, None, node, objects.cordon(owner))
        except NotFound:
            continue
        cordoned.append(node)
        outcome.events.append(("Normal", reasons.NODE_CORDONED, f"cordoned {node} to drain it"))
    return cordoned


async def _uncordon(kube: Kube, inputs: PlanInputs, nodes: Sequence[str], outcome: PlanOutcome) -> None:
    owner = f"{inputs.namespace}/{inputs.name}"
    for name in nodes:
        try:
            node = await kube.get(NODES, None, name)
        except NotFound:
            continue
        if objects.cordoned_by(node) != owner:
            continue  # someone else cordoned it since, or already uncordoned
        await kube.patch(NODES, None, name, objects.uncordon())
        outcome.events.append(("Normal", reasons.NODE_UNCORDONED, f"uncordoned {name}"))
