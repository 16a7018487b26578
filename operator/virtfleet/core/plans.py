"""MigrationPlan decisions (pure: no I/O, no clock; `now` is an argument): what the plan's status says
before it starts, whether it starts, what a step of the running plan writes and which events it posts.

Each status decision is a `MigrationPlanStatus` with only the fields it decides set; kube.plans dumps it
once (`core.status.wire`) and writes the fields that differ from the stored status, as for pools. The
stored status (`status` below) stays the wire's dict: it is what the diff compares against.

kube.plans gathers the inputs, calls these, carries out the actions and writes the status once; the
planner (core.migration_planner) chooses the moves, the executor (core.plan_executor) runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from virtfleet.api import reasons
from virtfleet.api.migrationplan import (
    MAX_LISTED,
    MigrationPlanSpec,
    MigrationPlanStatus,
    PlannedVM,
    PlanPhase,
    Unplaceable,
    VMPhase,
)
from virtfleet.api.timestamps import stamp
from virtfleet.core import conditions, plan_executor
from virtfleet.core.capacity import NodeFacts, Placed
from virtfleet.core.migration_planner import Plan, limits_of
from virtfleet.core.plan_executor import Attempt, ColdMove, Controls, Entry, World
from virtfleet.core.status import ObjectInputs

Event = tuple[str, str, str]  # (type, reason, message)


@dataclass(frozen=True)
class PlanInputs(ObjectInputs):
    """Everything one reconcile of a plan reads, gathered from kopf's body and indexes."""

    placements: Sequence[Placed] = ()
    nodes: Sequence[NodeFacts] = ()
    pool_ratios: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    attempts: Sequence[Attempt] = ()
    cold_moves: Sequence[ColdMove] = ()
    in_flight: Sequence[str] = ()  # every unfinished migration in the cluster: namespace/vmi
    setup_s: float | None = None  # target start-up the cluster's latest migrations showed (None: none yet)
    cold_downtime_s: float | None = None  # what the cluster's latest cold moves showed (None: none yet)


def controls_of(spec: MigrationPlanSpec, kubevirt_parallel: int, kubevirt_outbound_per_node: int) -> Controls:
    """The executor's limits and switches: the spec's, under KubeVirt's cluster-wide ones."""
    return Controls(
        **asdict(limits_of(spec.limits)),
        kubevirt_parallel=kubevirt_parallel,
        kubevirt_outbound_per_node=kubevirt_outbound_per_node,
        retries=spec.failure_policy.retries,
        backoff_s=spec.failure_policy.backoff_seconds,
        max_failures=spec.failure_policy.max_failures,
        on_failure=spec.failure_policy.on_failure,
        paused=spec.paused,
        cancel=spec.cancel,
        explicit_waves=spec.order == "waves",
    )


def invalid_spec_status(
    status: Mapping[str, Any], error: str, generation: int, now: datetime
) -> MigrationPlanStatus:
    """A spec admission should have refused (an old object, or a schema change): say so, change nothing."""
    wanted = [conditions.Desired(conditions.STALLED, "True", reasons.INVALID_SPEC, error[:1000])]
    return MigrationPlanStatus(conditions=conditions.merge(status.get("conditions"), wanted, generation, now))


# -- before the start --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeforeStart:
    """What a plan that has not started does now: write `status` and wait (until `wake_at`, or an
    event), or start."""

    status: MigrationPlanStatus = field(default_factory=MigrationPlanStatus)
    wake_at: datetime | None = None
    start: bool = False


def before_start(
    spec: MigrationPlanSpec, plan: Plan, status: Mapping[str, Any], generation: int, now: datetime
) -> BeforeStart:
    if spec.dry_run:
        return BeforeStart(planned_status(spec, plan, status, generation, now))
    if spec.cancel:
        fields = _planned_fields(spec, plan, status, generation, now, PlanPhase.CANCELLED)
        fields["finished_at"] = now
        fields["conditions"] = final_conditions(
            status,
            generation,
            PlanPhase.CANCELLED,
            reasons.PLAN_CANCELLED,
            "cancelled before it started",
            now,
        )
        return BeforeStart(MigrationPlanStatus(**fields))
    waiting, wake_at = "", None
    if spec.not_before is not None and spec.not_before > now:
        waiting, wake_at = f"waiting for notBefore {stamp(spec.not_before)}", spec.not_before
    elif spec.paused:
        waiting = "spec.paused is true"
    elif len(plan.moves) > MAX_LISTED:
        waiting = "too large"
    if waiting:
        phase = PlanPhase.PAUSED if spec.paused else PlanPhase.PENDING
        return BeforeStart(planned_status(spec, plan, status, generation, now, phase, waiting), wake_at)
    return BeforeStart(start=True)


def started_status(
    spec: MigrationPlanSpec,
    plan: Plan,
    status: Mapping[str, Any],
    generation: int,
    now: datetime,
    policy: str,
    cordoned: Sequence[str],
) -> MigrationPlanStatus:
    """The frozen plan: status.vms from now on names each VM's source, target and method."""
    fields = _planned_fields(spec, plan, status, generation, now, PlanPhase.RUNNING)
    fields.update(started_at=now, migration_policy=policy, cordoned_nodes=list(cordoned))
    return MigrationPlanStatus(**fields)


def started_event(plan: Plan) -> Event:
    return "Normal", reasons.PLAN_STARTED, f"{len(plan.moves)} VMs, estimated {plan.makespan_s:.0f}s"


def _planned_entries(plan: Plan) -> list[PlannedVM]:
    return [
        PlannedVM(
            name=move.vm.split("/", 1)[1],
            pool=move.pool,
            source=move.source,
            target=move.target,
            method=move.method,
            wave=move.wave,
            phase=VMPhase.PLANNED,
            estimated_start_seconds=round(move.start_s, 1),
            estimated_duration_seconds=round(move.estimate.duration_s, 1),
            estimated_downtime_seconds=round(move.estimate.downtime_s, 3),
            # The schema's defaults, set so they are written and the entry compares equal to what the
            # API server stores.
            attempts=0,
            migration="",
            last_error="",
        )
        for move in plan.moves[:MAX_LISTED]
    ]


def _unplaceable(plan: Plan) -> list[Unplaceable]:
    # VMs by name (namespace/name -> name); nodes a rebalance cannot fix keep their node/ prefix.
    return [
        Unplaceable(name=n if n.startswith("node/") else n.split("/", 1)[-1], reason=r)
        for n, r in plan.unplaceable[:MAX_LISTED]
    ]


def _unplaceable_vms(plan: Plan) -> int:
    return len([u for u in plan.unplaceable if not u[0].startswith("node/")])


def planned_status(
    spec: MigrationPlanSpec,
    plan: Plan,
    status: Mapping[str, Any],
    generation: int | None,
    now: datetime,
    phase: PlanPhase = PlanPhase.PLANNED,
    wait_message: str = "",
) -> MigrationPlanStatus:
    """Status of a plan that has not started (dry run or waiting)."""
    return MigrationPlanStatus(**_planned_fields(spec, plan, status, generation, now, phase, wait_message))


def _planned_fields(
    spec: MigrationPlanSpec,
    plan: Plan,
    status: Mapping[str, Any],
    generation: int | None,
    now: datetime,
    phase: PlanPhase = PlanPhase.PLANNED,
    wait_message: str = "",
) -> dict[str, Any]:
    """planned_status's fields, for the statuses that add to them (cancelled, started) before the model
    is built: a field assigned afterwards would not be validated."""
    summary = (
        f"{len(plan.moves)} VMs in {plan.waves} start rounds, estimated {plan.makespan_s:.0f}s; "
        f"{len(plan.unplaceable)} cannot be planned"
    )
    too_big = len(plan.moves) > MAX_LISTED and not spec.dry_run
    wanted = [
        conditions.Desired(conditions.READY, "True" if spec.dry_run else "False", reasons.PLANNED, summary),
        conditions.Desired(
            conditions.RECONCILING,
            "False" if spec.dry_run or too_big else "True",
            reasons.WAITING_TO_START if not spec.dry_run else reasons.PLANNED,
            wait_message,
        ),
        conditions.Desired(
            conditions.STALLED,
            "True" if too_big else "False",
            reasons.PLAN_TOO_LARGE if too_big else reasons.PLANNED,
            f"{len(plan.moves)} VMs: a plan runs at most {MAX_LISTED}; split it with selection"
            if too_big
            else "",
        ),
        conditions.Desired(
            conditions.DEGRADED,
            "True" if plan.unplaceable else "False",
            reasons.UNPLACEABLE if plan.unplaceable else reasons.PLANNED,
            f"{len(plan.unplaceable)} VMs cannot be planned" if plan.unplaceable else "",
        ),
    ]
    return {
        "phase": phase,
        "total": len(plan.moves) + _unplaceable_vms(plan),
        "done": 0,
        "failed": 0,
        "progress": f"0/{len(plan.moves) + _unplaceable_vms(plan)}",
        "estimated_makespan_seconds": round(plan.makespan_s, 1),
        "estimated_max_downtime_seconds": round(
            max((m.estimate.downtime_s for m in plan.moves), default=0.0), 3
        ),
        "estimated_remaining_seconds": round(plan.makespan_s, 1),
        "estimated_setup_seconds": round(plan.setup_s, 1),
        "vms": _planned_entries(plan),
        "unplaceable": _unplaceable(plan),
        "observed_generation": generation,
        "conditions": conditions.merge(status.get("conditions"), wanted, generation, now),
    }


# -- running -----------------------------------------------------------------------------------------------


def entries_of(status: Mapping[str, Any]) -> list[Entry]:
    return [
        Entry(
            name=str(vm["name"]),
            pool=str(vm.get("pool", "")),
            source=str(vm["source"]),
            target=str(vm["target"]),
            method="cold" if vm.get("method") == "cold" else "live",
            wave=int(vm.get("wave", 0)),
            estimated_duration_s=float(vm.get("estimatedDurationSeconds", 0)),
            estimated_downtime_s=float(vm.get("estimatedDowntimeSeconds", 0)),
        )
        for vm in status.get("vms") or []
    ]


def world_of(inputs: PlanInputs, now: datetime) -> World:
    """What the indexes show, as the executor reads it. The operator's own memory (starts the watch has
    not shown yet, when it first saw each failure) is the adapter's to add."""
    prefix = f"{inputs.namespace}/"
    vmi_nodes: dict[str, str | None] = {}
    booting: set[str] = set()
    node_of_vmi: dict[str, str | None] = {}
    for placed in inputs.placements:
        node_of_vmi[placed.key] = placed.node
        if placed.key.startswith(prefix):
            vmi_nodes[placed.key[len(prefix) :]] = placed.node
            if placed.node and not placed.running:
                booting.add(placed.key[len(prefix) :])
    attempts: dict[str, list[Attempt]] = {}
    for attempt in inputs.attempts:
        attempts.setdefault(attempt.vm, []).append(attempt)
    ours = {f"{prefix}{a.vm}" for a in inputs.attempts if a.in_flight}
    other_outbound: dict[str, int] = {}
    other = 0
    for vmi in inputs.in_flight:
        if vmi in ours:
            continue
        other += 1
        source = node_of_vmi.get(vmi)
        if source:
            other_outbound[source] = other_outbound.get(source, 0) + 1
    return World(
        now=now,
        attempts=attempts,
        cold={m.vm: m for m in inputs.cold_moves},
        vmi_nodes=vmi_nodes,
        booting=frozenset(booting),
        other_in_flight=other,
        other_outbound=other_outbound,
    )


def step_events(
    status: Mapping[str, Any], result: plan_executor.Step, changes: Mapping[str, Any]
) -> tuple[list[Event], list[plan_executor.VMState]]:
    """The events a step posts (VMs that failed or retry, a new phase) and the VMs it finished."""
    events: list[Event] = []
    finished: list[plan_executor.VMState] = []
    before = {str(vm.get("name")): vm.get("phase") for vm in status.get("vms") or []}
    for state in result.vms:
        if state.phase == before.get(state.entry.name):
            continue
        if state.phase in plan_executor.TERMINAL:
            finished.append(state)
        if state.phase == VMPhase.FAILED:
            events.append(
                ("Warning", reasons.MIGRATION_FAILED, f"{state.entry.name}: {state.last_error} (gave up)")
            )
        elif state.phase == VMPhase.WAITING:
            events.append(
                ("Warning", reasons.MIGRATION_RETRY,
                 f"{state.entry.name}: attempt {state.attempts} failed ({state.last_error}); retrying")
            )  # fmt: skip
    if "phase" in changes:
        events.append(_phase_event(changes["phase"], result))
    return events, finished


def late_failure_reasons(status: Mapping[str, Any], attempts: Sequence[Attempt]) -> list[PlannedVM] | None:
    """A finished plan's VM lines with KubeVirt's failure reasons that arrived after it ended (a VMIM can
    turn Failed before its reason is written), or None when there is nothing to add."""
    reasons_by_name = {a.name: a.failure for a in attempts if a.phase == "Failed" and a.failure}
    lines = [dict(vm) for vm in status.get("vms") or []]
    changed = False
    for line in lines:
        reason = reasons_by_name.get(str(line.get("migration", "")))
        if line.get("phase") == VMPhase.FAILED and reason and line.get("lastError") != reason:
            line["lastError"] = reason
            changed = True
    return [PlannedVM.model_validate(line) for line in lines] if changed else None


def _unplaceable_count(status: Mapping[str, Any]) -> int:
    return len([u for u in status.get("unplaceable") or [] if not str(u.get("name", "")).startswith("node/")])


def _vm_line(state: plan_executor.VMState, original: Mapping[str, Any]) -> PlannedVM:
    # The frozen plan's fields as stored (so a whole estimate the API hands back as 12 stays 12), then
    # the pipeline's. Validated by alias: the keys are the wire's.
    line: dict[str, Any] = {
        key: original[key]
        for key in ("name", "pool", "source", "target", "method", "wave", "estimatedStartSeconds",
                    "estimatedDurationSeconds", "estimatedDowntimeSeconds")
        if key in original
    }  # fmt: skip
    # The schema's defaults included, so the line compares equal to what the API server stores.
    line.update(phase=state.phase, attempts=state.attempts, migration=state.migration,
                lastError=state.last_error[:1024])  # fmt: skip
    optional: dict[str, Any] = {
        "node": state.node,
        "startedAt": state.started,
        "finishedAt": state.finished,
        "actualDurationSeconds": round(state.duration_s, 2) if state.duration_s is not None else None,
        "actualDowntimeSeconds": round(state.downtime_s, 2) if state.downtime_s is not None else None,
        "retryAt": state.retry_at if state.phase == VMPhase.WAITING else None,
    }
    # Unknown yet: left unset, so not written (nor removed: the whole list is replaced anyway).
    line.update({k: v for k, v in optional.items() if v not in (None, "")})
    return PlannedVM.model_validate(line)


def running_status(
    spec: MigrationPlanSpec,
    inputs: PlanInputs,
    status: Mapping[str, Any],
    result: plan_executor.Step,
    controls: Controls,
    now: datetime,
) -> MigrationPlanStatus:
    """Status of a running plan after a step."""
    unplaceable = _unplaceable_count(status)
    originals = {str(vm.get("name")): vm for vm in status.get("vms") or []}
    total = len(result.vms) + unplaceable
    done = result.count(VMPhase.SUCCEEDED)
    failed = result.count(VMPhase.FAILED) + unplaceable
    desired: dict[str, Any] = {
        "phase": result.phase,
        "total": total,
        "done": done,
        "failed": failed,
        "in_flight": result.in_flight,
        "cancelled": result.count(VMPhase.CANCELLED),
        "skipped": result.count(VMPhase.SKIPPED),
        "progress": f"{done}/{total}",
        "estimated_remaining_seconds": round(plan_executor.remaining_seconds(result, controls), 1),
        "vms": [_vm_line(s, originals.get(s.entry.name, {})) for s in result.vms],
        "observed_generation": inputs.generation,
    }
    terminal = result.phase in plan_executor.PLAN_TERMINAL
    if terminal and not status.get("finishedAt"):
        desired["finished_at"] = now
    if terminal:
        final = result.phase
        if final == PlanPhase.SUCCEEDED and failed:
            final = PlanPhase.FAILED  # the run ended, but not every VM moved
            desired["phase"] = final
        message = result.message + (f"; {unplaceable} could not be planned" if unplaceable else "")
        desired["conditions"] = final_conditions(
            status, inputs.generation, final, result.reason, message, now
        )
    else:
        budget = result.reason == reasons.FAILURE_BUDGET_EXCEEDED
        wanted = [
            conditions.Desired(conditions.READY, "False", result.reason, result.message),
            conditions.Desired(
                conditions.RECONCILING,
                "True" if result.phase == PlanPhase.RUNNING else "False",
                result.reason,
                result.message,
            ),
            conditions.Desired(
                conditions.STALLED,
                "True" if budget else "False",
                result.reason,
                result.message if budget else "",
            ),
            conditions.Desired(conditions.PROGRESSING, "True", result.reason, f"{done}/{total} moved"),
            conditions.Desired(conditions.SUCCEEDED, "Unknown", result.reason, ""),
            _degraded(failed, unplaceable),
        ]
        desired["conditions"] = conditions.merge(status.get("conditions"), wanted, inputs.generation, now)
    return MigrationPlanStatus(**desired)


def _degraded(failed: int, unplaceable: int) -> conditions.Desired:
    if not failed:
        return conditions.Desired(conditions.DEGRADED, "False", reasons.NO_FAILURES, "")
    return conditions.Desired(
        conditions.DEGRADED,
        "True",
        reasons.MIGRATION_FAILED,
        f"{failed} VMs failed to move ({unplaceable} could not be planned)",
    )


def final_conditions(
    status: Mapping[str, Any], generation: int, phase: str, reason: str, message: str, now: datetime
) -> list[dict[str, Any]]:
    succeeded = phase == PlanPhase.SUCCEEDED
    failed = int(status.get("failed") or 0)
    wanted = [
        conditions.Desired(conditions.READY, "True" if succeeded else "False", reason, message),
        conditions.Desired(conditions.RECONCILING, "False", reason, ""),
        # kstatus: a plan that ended without doing its job needs a person.
        conditions.Desired(
            conditions.STALLED, "False" if succeeded else "True", reason, "" if succeeded else message
        ),
        conditions.Desired(conditions.PROGRESSING, "False", reason, message),
        conditions.Desired(conditions.SUCCEEDED, "True" if succeeded else "False", phase, message),
    ]
    if succeeded:
        wanted.append(_degraded(failed, 0))
    return conditions.merge(status.get("conditions"), wanted, generation, now)


def _phase_event(phase: str, result: plan_executor.Step) -> Event:
    kinds: dict[str, tuple[str, str]] = {
        PlanPhase.SUCCEEDED: ("Normal", reasons.PLAN_SUCCEEDED),
        PlanPhase.FAILED: ("Warning", reasons.PLAN_FAILED),
        PlanPhase.CANCELLED: ("Normal", reasons.PLAN_CANCELLED),
        PlanPhase.PAUSED: ("Warning" if result.reason == reasons.FAILURE_BUDGET_EXCEEDED else "Normal",
                                    reasons.PLAN_PAUSED),
    }  # fmt: skip
    kind, reason = kinds.get(phase, ("Normal", reasons.PLAN_RUNNING))
    return kind, reason, result.message
