"""MigrationPlan reconcile: plan with the pure planner, freeze the plan when it starts, then run it with
the pure executor (virtfleet.core.plan_executor) and carry out what it decides.

Before it starts (dry run, or waiting for notBefore) a plan is re-planned whenever its spec changes and
status shows the plan and its estimates. Starting freezes the plan in status.vms; from then on targets
do not change, and every step derives each VM's state from the API (migrations, cold-move annotations,
VMIs), so a restarted operator resumes where the last one stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from virtfleet import API_VERSION
from virtfleet.api import reasons
from virtfleet.api.labels import (
    ATTEMPT_LABEL,
    COLD_MOVE_ANNOTATION,
    CORDONED_BY_ANNOTATION,
    DIRTY_RATE_ANNOTATION,
    HOSTNAME_LABEL,
    NAMESPACE_NAME_LABEL,
    PLAN_ANNOTATION,
    PLAN_LABEL,
    POOL_LABEL,
    PRIORITY_ANNOTATION,
    VM_ANNOTATION,
)
from virtfleet.api.migrationplan import MAX_LISTED, MigrationPlanSpec
from virtfleet.api.quantity import QuantityError, parse_bytes
from virtfleet.core import conditions, plan_executor
from virtfleet.core.capacity import NodeFacts, VMLoad
from virtfleet.core.migration_planner import Limits, Plan, PlanRequest, PlanVM, Timing, plan_migrations
from virtfleet.core.plan_executor import (
    AbortMigration,
    Attempt,
    ColdMove,
    Controls,
    Entry,
    FinishColdMove,
    StartAfterColdMove,
    StartMigration,
    StopForColdMove,
    World,
)
from virtfleet.kube.client import (
    MIGRATION_PLANS,
    MIGRATION_POLICIES,
    MIGRATIONS,
    NODES,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINES,
    ApiException,
    Kube,
)
from virtfleet.kube.facts import Placed, parse_time
from virtfleet.kube.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_DIRTY_RATE = 50 * 2**20
DEFAULT_BANDWIDTH = 1.25e9
PLANNED = "Planned"
STATUS_INTERVAL = 1.0  # seconds between status writes of a running plan, unless its phase changes


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(at: datetime | None) -> str | None:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if at else None


# -- facts for kopf's indexes ------------------------------------------------------------------------


def attempt_of(body: Mapping[str, Any]) -> Attempt | None:
    """A plan's VirtualMachineInstanceMigration as the executor needs it."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        number = int(labels.get(ATTEMPT_LABEL, ""))
    except ValueError:
        return None
    vm = (meta.get("annotations") or {}).get(VM_ANNOTATION) or (body.get("spec") or {}).get("vmiName")
    if not vm:
        return None
    status = body.get("status") or {}
    stamps: dict[str, datetime] = {}
    for transition in status.get("phaseTransitionTimestamps") or []:
        stamps.setdefault(
            str(transition.get("phase")), parse_time(transition.get("phaseTransitionTimestamp"))
        )
    phase = str(status.get("phase") or "")
    migration = status.get("migrationState") or {}
    return Attempt(
        vm=str(vm),
        number=number,
        name=str(meta.get("name", "")),
        phase=phase,
        created=parse_time(meta.get("creationTimestamp")),
        started=stamps.get("Scheduling"),
        finished=stamps.get(phase) if phase in plan_executor.VMIM_DONE else None,
        failure=str(migration.get("failureReason") or ("the migration failed" if phase == "Failed" else "")),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def in_flight_of(body: Mapping[str, Any]) -> str | None:
    """Any migration KubeVirt has not finished: `namespace/vmi`, for KubeVirt's cluster-wide limits."""
    phase = (body.get("status") or {}).get("phase") or ""
    if phase in plan_executor.VMIM_DONE:
        return None
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{(body.get('spec') or {}).get('vmiName', '')}"


def cold_move_of(body: Mapping[str, Any]) -> tuple[str, ColdMove] | None:
    """(plan UID, the move) from a VM's cold-move annotation."""
    meta = body.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(COLD_MOVE_ANNOTATION)
    try:
        record = json.loads(raw or "")
        move = ColdMove(
            vm=str(meta.get("name", "")),
            attempt=int(record["attempt"]),
            target=str(record["target"]),
            run_strategy=str(record["runStrategy"]),
            started=parse_time(record["startedAt"]),
            stage=record["stage"],
            failure=str(record.get("failure", "")),
            finished=parse_time(record["finishedAt"]) if record.get("finishedAt") else None,
            halted=(body.get("spec") or {}).get("runStrategy") == "Halted",
            abandon=str(record.get("abandon", "")),
        )
        return str(record["plan"]), move
    except (ValueError, KeyError, TypeError):
        return None


# -- planning ------------------------------------------------------------------------------------------


def select(
    spec: MigrationPlanSpec, namespace: str, placements: Iterable[Placed], nodes: Mapping[str, NodeFacts]
) -> list[Placed]:
    chosen = []
    selection = spec.selection
    for placed in placements:
        vm_namespace, name = placed.key.split("/", 1)
        if vm_namespace != namespace or placed.node is None:
            continue
        labels = dict(placed.labels)
        if selection.pools and labels.get(POOL_LABEL) not in selection.pools:
            continue
        if selection.vms and name not in selection.vms:
            continue
        if any(labels.get(k) != v for k, v in selection.match_labels.items()):
            continue
        if selection.nodes and placed.node not in selection.nodes:
            continue
        chosen.append(placed)
    return chosen


def _plan_vm(placed: Placed, ratios: Mapping[str, tuple[float, float]]) -> PlanVM:
    labels = dict(placed.labels)
    annotations = dict(placed.annotations)
    pool = labels.get(POOL_LABEL, "")
    cpu_ratio, memory_ratio = ratios.get(pool, (1.0, 1.0))
    try:
        dirty = float(parse_bytes(annotations[DIRTY_RATE_ANNOTATION]))
        if not 0 <= dirty < float("inf"):
            dirty = DEFAULT_DIRTY_RATE
    except (KeyError, QuantityError, OverflowError):
        dirty = DEFAULT_DIRTY_RATE
    try:
        priority = int(annotations.get(PRIORITY_ANNOTATION, "0"))
    except ValueError:
        priority = 0
    return PlanVM(
        key=placed.key,
        pool=pool,
        node=placed.node or "",
        requests=placed.requests,
        cpu_ratio=cpu_ratio,
        memory_ratio=memory_ratio,
        live_migratable=placed.live_migratable,
        priority=priority,
        dirty_rate_bps=dirty,
        node_selector=placed.node_selector,
        anti_affinity=placed.anti_affinity,
        spread=placed.spread,
    )


def _pool_nodes(namespace: str, placements: Iterable[Placed]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for placed in placements:
        pool = dict(placed.labels).get(POOL_LABEL)
        if pool and placed.node and placed.key.startswith(f"{namespace}/"):
            where.setdefault(pool, []).append(placed.node)
    return where


def build_plan(
    spec: MigrationPlanSpec,
    namespace: str,
    placements: list[Placed],
    nodes: list[NodeFacts],
    pool_ratios: Mapping[str, tuple[float, float]],
) -> Plan:
    node_map = {n.name: n for n in nodes}
    selected = [_plan_vm(p, pool_ratios) for p in select(spec, namespace, placements, node_map)]
    options = spec.migration
    bandwidth = DEFAULT_BANDWIDTH
    if options.bandwidth_per_migration:
        try:
            cap = parse_bytes(options.bandwidth_per_migration)
        except QuantityError:
            cap = 0
        bandwidth = min(bandwidth, cap) if cap > 0 else bandwidth
    request = PlanRequest(
        goal=spec.goal,
        vms=selected,
        nodes=nodes,
        placed=[VMLoad(p.requests, p.node) for p in placements if p.node],
        pool_nodes=_pool_nodes(namespace, placements),
        drain_nodes=frozenset(spec.nodes),
        target_selector=dict(spec.target_selector),
        cpu_threshold=spec.thresholds.cpu_ratio,
        memory_threshold=spec.thresholds.memory_ratio,
        method=spec.method,
        order=spec.order,
        waves=[[f"{namespace}/{name}" for name in wave] for wave in spec.waves],
        limits=Limits(
            max_parallel=spec.limits.max_parallel,
            max_outbound_per_node=spec.limits.max_outbound_per_node,
            max_inbound_per_node=spec.limits.max_inbound_per_node,
            pool_budget=spec.limits.pool_disruption_budget or 1_000_000,
        ),
        timing=Timing(
            bandwidth_bps=bandwidth,
            max_downtime_s=options.max_downtime_ms / 1000,
            allow_post_copy=options.allow_post_copy,
            allow_auto_converge=options.allow_auto_converge,
            completion_timeout_per_gib=options.completion_timeout_per_gib,
        ),
    )
    return plan_migrations(request)


def _planned_entries(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "name": move.vm.split("/", 1)[1],
            "pool": move.pool,
            "source": move.source,
            "target": move.target,
            "method": move.method,
            "wave": move.wave,
            "phase": PLANNED,
            "estimatedStartSeconds": round(move.start_s, 1),
            "estimatedDurationSeconds": round(move.estimate.duration_s, 1),
            "estimatedDowntimeSeconds": round(move.estimate.downtime_s, 3),
            # The schema's defaults, so the entry compares equal to what the API server stores.
            "attempts": 0,
            "migration": "",
            "lastError": "",
        }
        for move in plan.moves[:MAX_LISTED]
    ]


def _unplaceable(plan: Plan) -> list[dict[str, str]]:
    # VMs by name (namespace/name -> name); nodes a rebalance cannot fix keep their node/ prefix.
    return [
        {"name": n if n.startswith("node/") else n.split("/", 1)[-1], "reason": r}
        for n, r in plan.unplaceable[:MAX_LISTED]
    ]


def _unplaceable_vms(plan: Plan) -> int:
    return len([u for u in plan.unplaceable if not u[0].startswith("node/")])


def plan_status(
    spec: MigrationPlanSpec,
    plan: Plan,
    status: Mapping[str, Any],
    generation: int | None,
    phase: str = PLANNED,
    wait_message: str = "",
) -> dict[str, Any]:
    """Status of a plan that has not started (dry run or waiting): the fields that differ from `status`."""
    summary = (
        f"{len(plan.moves)} VMs in {plan.waves} start rounds, estimated {plan.makespan_s:.0f}s; "
        f"{len(plan.unplaceable)} cannot be planned"
    )
    too_big = len(plan.moves) > MAX_LISTED and not spec.dry_run
    wanted = [
        conditions.Desired(conditions.READY, "True" if spec.dry_run else "False", PLANNED, summary),
        conditions.Desired(
            conditions.RECONCILING,
            "False" if spec.dry_run or too_big else "True",
            reasons.WAITING_TO_START if not spec.dry_run else PLANNED,
            wait_message,
        ),
        conditions.Desired(
            conditions.STALLED,
            "True" if too_big else "False",
            reasons.PLAN_TOO_LARGE if too_big else PLANNED,
            f"{len(plan.moves)} VMs: a plan runs at most {MAX_LISTED}; split it with selection"
            if too_big
            else "",
        ),
        conditions.Desired(
            conditions.DEGRADED,
            "True" if plan.unplaceable else "False",
            reasons.UNPLACEABLE if plan.unplaceable else PLANNED,
            f"{len(plan.unplaceable)} VMs cannot be planned" if plan.unplaceable else "",
        ),
    ]
    desired: dict[str, Any] = {
        "phase": phase,
        "total": len(plan.moves) + _unplaceable_vms(plan),
        "done": 0,
        "failed": 0,
        "progress": f"0/{len(plan.moves) + _unplaceable_vms(plan)}",
        "estimatedMakespanSeconds": round(plan.makespan_s, 1),
        "estimatedMaxDowntimeSeconds": round(
            max((m.estimate.downtime_s for m in plan.moves), default=0.0), 3
        ),
        "estimatedRemainingSeconds": round(plan.makespan_s, 1),
        "vms": _planned_entries(plan),
        "unplaceable": _unplaceable(plan),
        "observedGeneration": generation,
    }
    desired["conditions"] = conditions.merge(status.get("conditions"), wanted, generation, _now())
    return {k: v for k, v in desired.items() if status.get(k) != v}


# -- execution -----------------------------------------------------------------------------------------


@dataclass
class PlanInputs:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    placements: Sequence[Placed]
    nodes: Sequence[NodeFacts]
    pool_ratios: Mapping[str, tuple[float, float]]
    attempts: Sequence[Attempt]
    cold_moves: Sequence[ColdMove]
    in_flight: Sequence[str]  # every unfinished migration in the cluster: namespace/vmi


@dataclass
class PlanOutcome:
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    wake_at: datetime | None = None
    finished: list[plan_executor.VMState] = field(default_factory=list)  # VMs that finished in this step


def controls_of(spec: MigrationPlanSpec, runtime: Runtime) -> Controls:
    return Controls(
        max_parallel=spec.limits.max_parallel,
        max_outbound_per_node=spec.limits.max_outbound_per_node,
        max_inbound_per_node=spec.limits.max_inbound_per_node,
        pool_budget=spec.limits.pool_disruption_budget or 1_000_000,
        kubevirt_parallel=runtime.settings.kubevirt_parallel_migrations,
        kubevirt_outbound_per_node=runtime.settings.kubevirt_parallel_outbound_per_node,
        retries=spec.failure_policy.retries,
        backoff_s=spec.failure_policy.backoff_seconds,
        max_failures=spec.failure_policy.max_failures,
        on_failure=spec.failure_policy.on_failure,
        paused=spec.paused,
        cancel=spec.cancel,
        explicit_waves=spec.order == "waves",
    )


def policy_name(uid: str) -> str:
    return f"virtfleet-{uid}"


async def reconcile_plan(runtime: Runtime, inputs: PlanInputs) -> PlanOutcome:
    outcome = PlanOutcome()
    status = dict(inputs.status)
    try:
        spec = MigrationPlanSpec.model_validate(dict(inputs.spec))
    except ValidationError as error:
        # Admission normally prevents this (an old object, or a schema change): say so, change nothing.
        wanted = [conditions.Desired(conditions.STALLED, "True", reasons.INVALID_SPEC, str(error)[:1000])]
        changes = {
            "conditions": conditions.merge(status.get("conditions"), wanted, inputs.generation, _now())
        }
        await _write_status(runtime, inputs, status, changes, outcome)
        return outcome
    if status.get("phase") in plan_executor.PLAN_TERMINAL:
        await _write_status(runtime, inputs, status, {"observedGeneration": inputs.generation}, outcome)
        return outcome
    if not status.get("startedAt"):
        await _before_start(runtime, inputs, spec, status, outcome)
        return outcome
    await _run(runtime, inputs, spec, status, outcome)
    return outcome


async def _before_start(
    runtime: Runtime,
    inputs: PlanInputs,
    spec: MigrationPlanSpec,
    status: dict[str, Any],
    outcome: PlanOutcome,
) -> None:
    plan = build_plan(spec, inputs.namespace, list(inputs.placements), list(inputs.nodes), inputs.pool_ratios)
    now = _now()
    if spec.dry_run:
        await _write_status(
            runtime, inputs, status, plan_status(spec, plan, status, inputs.generation), outcome
        )
        return
    if spec.cancel:
        changes = plan_status(spec, plan, status, inputs.generation, plan_executor.PLAN_CANCELLED)
        changes["finishedAt"] = _stamp(now)
        changes["conditions"] = _final_conditions(
            status,
            inputs.generation,
            plan_executor.PLAN_CANCELLED,
            "Cancelled",
            "cancelled before it started",
        )
        await _write_status(runtime, inputs, status, changes, outcome)
        return
    waiting = ""
    if spec.not_before is not None and spec.not_before > now:
        waiting = f"waiting for notBefore {_stamp(spec.not_before)}"
        outcome.wake_at = spec.not_before
    elif spec.paused:
        waiting = "spec.paused is true"
    elif len(plan.moves) > MAX_LISTED:
        waiting = "too large"
    if waiting:
        phase = plan_executor.PLAN_PAUSED if spec.paused else plan_executor.PLAN_PENDING
        changes = plan_status(spec, plan, status, inputs.generation, phase, waiting)
        await _write_status(runtime, inputs, status, changes, outcome)
        return
    # Start: cordon first so nothing new lands on the nodes being drained, then freeze the plan.
    cordoned = await _cordon(runtime.kube, spec, inputs, outcome) if spec.goal == "drain" else []
    policy = ""
    live = [move.vm.split("/", 1)[1] for move in plan.moves if move.method == "live"]
    if live:
        policy = await _ensure_policy(runtime.kube, spec, inputs)
        await label_plan_vmis(runtime.kube, inputs, live)
    changes = plan_status(spec, plan, status, inputs.generation, plan_executor.PLAN_RUNNING)
    changes.update(startedAt=_stamp(now), migrationPolicy=policy, cordonedNodes=cordoned)
    outcome.events.append(
        ("Normal", reasons.PLAN_STARTED, f"{len(plan.moves)} VMs, estimated {plan.makespan_s:.0f}s")
    )
    await _write_status(runtime, inputs, status, changes, outcome)
    # Run the first step at once: status now holds the frozen plan.
    await _run(runtime, inputs, spec, outcome.status, outcome)


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


def world_of(runtime: Runtime, inputs: PlanInputs) -> World:
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
    expected = runtime.plan_expectations(inputs.uid, attempts, {m.vm: m for m in inputs.cold_moves})
    now = _now()
    failed = [a.name for a in inputs.attempts if a.phase == "Failed"]
    return World(
        now=now,
        failure_seen=runtime.failures_seen(inputs.uid, failed, now),
        attempts=attempts,
        cold={m.vm: m for m in inputs.cold_moves},
        vmi_nodes=vmi_nodes,
        booting=frozenset(booting),
        other_in_flight=other,
        other_outbound=other_outbound,
        expected=expected,
    )


async def _run(
    runtime: Runtime,
    inputs: PlanInputs,
    spec: MigrationPlanSpec,
    status: Mapping[str, Any],
    outcome: PlanOutcome,
) -> None:
    entries = entries_of(status)
    controls = controls_of(spec, runtime)
    world = world_of(runtime, inputs)
    result = plan_executor.step(inputs.name, entries, world, controls)
    hostnames = {n.name: n.labels.get(HOSTNAME_LABEL, n.name) for n in inputs.nodes}
    await _act(runtime, inputs, spec, status, result, hostnames, outcome)
    unplaceable = _unplaceable_count(status)
    changes = _running_status(spec, inputs, status, result, controls, unplaceable)
    outcome.wake_at = result.wake_at
    outcome.status = dict(status)
    # Status follows the plan at most once a second while only per-VM lines and counts move; a phase
    # change is written at once. The worker is then free to refill a freed slot without waiting on it.
    since = runtime.clock() - runtime.plan_status_written.get(inputs.uid, 0.0)
    if changes and "phase" not in changes and since < STATUS_INTERVAL:
        due = _now() + timedelta(seconds=STATUS_INTERVAL - since)
        outcome.wake_at = min(outcome.wake_at, due) if outcome.wake_at else due
        return
    before = {str(vm.get("name")): vm.get("phase") for vm in status.get("vms") or []}
    for state in result.vms:
        if state.phase == before.get(state.entry.name):
            continue
        if state.phase in plan_executor.TERMINAL:
            outcome.finished.append(state)
        if state.phase == plan_executor.FAILED:
            outcome.events.append(
                ("Warning", reasons.MIGRATION_FAILED, f"{state.entry.name}: {state.last_error} (gave up)")
            )
        elif state.phase == plan_executor.WAITING:
            outcome.events.append(
                ("Warning", reasons.MIGRATION_RETRY,
                 f"{state.entry.name}: attempt {state.attempts} failed ({state.last_error}); retrying")
            )  # fmt: skip
    if "phase" in changes:
        outcome.events.append(_phase_event(changes["phase"], result))
    if result.phase in plan_executor.PLAN_TERMINAL and spec.uncordon_when_done:
        await _uncordon(runtime.kube, inputs, status.get("cordonedNodes") or [], outcome)
    await _write_status(runtime, inputs, status, changes, outcome)
    if changes:
        runtime.plan_status_written[inputs.uid] = runtime.clock()


def _unplaceable_count(status: Mapping[str, Any]) -> int:
    return len([u for u in status.get("unplaceable") or [] if not str(u.get("name", "")).startswith("node/")])


def _vm_line(state: plan_executor.VMState, original: Mapping[str, Any]) -> dict[str, Any]:
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
        "startedAt": _stamp(state.started),
        "finishedAt": _stamp(state.finished),
        "actualDurationSeconds": round(state.duration_s, 2) if state.duration_s is not None else None,
        "actualDowntimeSeconds": round(state.downtime_s, 2) if state.downtime_s is not None else None,
        "retryAt": _stamp(state.retry_at) if state.phase == plan_executor.WAITING else None,
    }
    line.update({k: v for k, v in optional.items() if v not in (None, "")})
    return line


def _running_status(
    spec: MigrationPlanSpec,
    inputs: PlanInputs,
    status: Mapping[str, Any],
    result: plan_executor.Step,
    controls: Controls,
    unplaceable: int,
) -> dict[str, Any]:
    originals = {str(vm.get("name")): vm for vm in status.get("vms") or []}
    total = len(result.vms) + unplaceable
    done = result.count(plan_executor.SUCCEEDED)
    failed = result.count(plan_executor.FAILED) + unplaceable
    desired: dict[str, Any] = {
        "phase": result.phase,
        "total": total,
        "done": done,
        "failed": failed,
        "inFlight": result.in_flight,
        "cancelled": result.count(plan_executor.CANCELLED),
        "skipped": result.count(plan_executor.SKIPPED),
        "progress": f"{done}/{total}",
        "estimatedRemainingSeconds": round(plan_executor.remaining_seconds(result, controls), 1),
        "vms": [_vm_line(s, originals.get(s.entry.name, {})) for s in result.vms],
        "observedGeneration": inputs.generation,
    }
    now = _now()
    terminal = result.phase in plan_executor.PLAN_TERMINAL
    if terminal and not status.get("finishedAt"):
        desired["finishedAt"] = _stamp(now)
    if terminal:
        final = result.phase
        if final == plan_executor.PLAN_SUCCEEDED and failed:
            final = plan_executor.PLAN_FAILED  # the run ended, but not every VM moved
            desired["phase"] = final
        message = result.message + (f"; {unplaceable} could not be planned" if unplaceable else "")
        desired["conditions"] = _final_conditions(status, inputs.generation, final, result.reason, message)
    else:
        budget = result.reason == reasons.FAILURE_BUDGET_EXCEEDED
        wanted = [
            conditions.Desired(conditions.READY, "False", result.reason, result.message),
            conditions.Desired(
                conditions.RECONCILING,
                "True" if result.phase == plan_executor.PLAN_RUNNING else "False",
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
    return {k: v for k, v in desired.items() if status.get(k) != v}


def _degraded(failed: int, unplaceable: int) -> conditions.Desired:
    if not failed:
        return conditions.Desired(conditions.DEGRADED, "False", "NoFailures", "")
    return conditions.Desired(
        conditions.DEGRADED,
        "True",
        reasons.MIGRATION_FAILED,
        f"{failed} VMs failed to move ({unplaceable} could not be planned)",
    )


def _final_conditions(
    status: Mapping[str, Any], generation: int, phase: str, reason: str, message: str
) -> list[dict[str, Any]]:
    succeeded = phase == plan_executor.PLAN_SUCCEEDED
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
    return conditions.merge(status.get("conditions"), wanted, generation, _now())


def _phase_event(phase: str, result: plan_executor.Step) -> tuple[str, str, str]:
    kinds = {
        plan_executor.PLAN_SUCCEEDED: ("Normal", reasons.PLAN_SUCCEEDED),
        plan_executor.PLAN_FAILED: ("Warning", reasons.PLAN_FAILED),
        plan_executor.PLAN_CANCELLED: ("Normal", reasons.PLAN_CANCELLED),
        plan_executor.PLAN_PAUSED: ("Warning" if result.reason == reasons.FAILURE_BUDGET_EXCEEDED else "Normal",
                                    reasons.PLAN_PAUSED),
    }  # fmt: skip
    kind, reason = kinds.get(phase, ("Normal", reasons.PLAN_RUNNING))
    return kind, reason, result.message


async def _write_status(
    runtime: Runtime,
    inputs: PlanInputs,
    status: Mapping[str, Any],
    changes: Mapping[str, Any],
    outcome: PlanOutcome,
) -> None:
    changes = {k: v for k, v in changes.items() if status.get(k) != v}
    outcome.status = {**status, **changes}
    if not changes:
        return
    updated = await runtime.kube.patch(
        MIGRATION_PLANS, inputs.namespace, inputs.name, {"status": changes}, subresource="status"
    )
    outcome.status = dict(updated.get("status") or {})
    runtime.plan_status[inputs.uid] = outcome.status


# -- actions -------------------------------------------------------------------------------------------


def _owner(inputs: PlanInputs) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "MigrationPlan", "name": inputs.name, "uid": inputs.uid,
            "controller": True}  # fmt: skip


ACTION_CONCURRENCY = 16


async def _act(
    runtime: Runtime,
    inputs: PlanInputs,
    spec: MigrationPlanSpec,
    status: Mapping[str, Any],
    result: plan_executor.Step,
    hostnames: Mapping[str, str],
    outcome: PlanOutcome,
) -> None:
    """Carry out a step's actions concurrently (each concerns another VM): a slot freed is refilled as
    fast as one API call allows."""
    kube = runtime.kube
    policy = bool(status.get("migrationPolicy"))
    labelled = {
        placed.key.split("/", 1)[1]
        for placed in inputs.placements
        if placed.key.startswith(f"{inputs.namespace}/") and (PLAN_LABEL, inputs.uid) in placed.labels
    }
    semaphore = asyncio.Semaphore(ACTION_CONCURRENCY)

    async def one(action: plan_executor.Action) -> None:
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
                    await _stop_for_cold_move(kube, inputs, action, hostnames)
                elif isinstance(action, StartAfterColdMove):
                    await _start_after_cold_move(kube, inputs, action)
                elif isinstance(action, FinishColdMove):
                    await _finish_cold_move(kube, inputs, action)
        except ApiException as error:
            if error.status in (404, 409):
                return  # gone, or changed under us: the next step sees the new state and decides again
            outcome.events.append(
                ("Warning", reasons.ACTION_FAILED, f"{action}: {error.status} {error.reason}")
            )
            log.warning(
                "migration plan %s/%s: %s failed: %s %s", inputs.namespace, inputs.name, action, error.status,
                error.reason,
            )  # fmt: skip

    await asyncio.gather(*(one(action) for action in result.actions))


async def label_plan_vmis(kube: Kube, inputs: PlanInputs, names: Iterable[str]) -> None:
    """Label the VMIs of a plan's live moves at its start, so its MigrationPolicy selects them."""
    semaphore = asyncio.Semaphore(ACTION_CONCURRENCY)

    async def one(name: str) -> None:
        async with semaphore:
            try:
                await _label_vmi(kube, inputs, name)
            except ApiException as error:
                if error.status != 404:
                    raise

    await asyncio.gather(*(one(name) for name in names))


async def _create_migration(
    kube: Kube, inputs: PlanInputs, action: StartMigration, hostnames: Mapping[str, str]
) -> None:
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {
            "name": action.name,
            "namespace": inputs.namespace,
            "labels": {PLAN_LABEL: inputs.uid, ATTEMPT_LABEL: str(action.attempt)},
            "annotations": {VM_ANNOTATION: action.vm},
            "ownerReferences": [_owner(inputs)],
        },
        "spec": {
            "vmiName": action.vm,
            "addedNodeSelector": {HOSTNAME_LABEL: hostnames.get(action.target, action.target)},
        },
    }
    try:
        await kube.create(MIGRATIONS, inputs.namespace, body)
    except ApiException as error:
        if error.status != 409:  # 409: created before a restart or a stale cache; never a second one
            raise


async def _label_vmi(kube: Kube, inputs: PlanInputs, vm: str) -> None:
    labels = {PLAN_LABEL: inputs.uid}
    await kube.patch(VIRTUAL_MACHINE_INSTANCES, inputs.namespace, vm, {"metadata": {"labels": labels}})


def _cold_record(inputs: PlanInputs, **fields: Any) -> str:
    return json.dumps({"plan": inputs.uid, **fields}, sort_keys=True)


async def _stop_for_cold_move(
    kube: Kube, inputs: PlanInputs, action: StopForColdMove, hostnames: Mapping[str, str]
) -> None:
    """Stage 1: remember how the VM ran, pin it to the target, stop it (one write, guarded by its
    resourceVersion so a concurrent edit is never overwritten)."""
    vm = await kube.get(VIRTUAL_MACHINES, inputs.namespace, action.vm)
    spec = vm.get("spec") or {}
    strategy = spec.get("runStrategy")
    if strategy not in ("Always", "RerunOnFailure"):
        raise ApiException(
            status=422, reason=f"cold moves need runStrategy Always or RerunOnFailure, not {strategy}"
        )
    template_spec = (spec.get("template") or {}).get("spec") or {}
    record = _cold_record(
        inputs,
        attempt=action.attempt,
        target=action.target,
        runStrategy=strategy,
        pinned=(template_spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL),
        startedAt=_stamp(_now()),
        stage="stopping",
    )
    pin = {HOSTNAME_LABEL: hostnames.get(action.target, action.target)}
    await kube.patch(
        VIRTUAL_MACHINES,
        inputs.namespace,
        action.vm,
        {
            "metadata": {"annotations": {COLD_MOVE_ANNOTATION: record},
                         "resourceVersion": vm["metadata"]["resourceVersion"]},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"nodeSelector": pin}}},
        },
    )  # fmt: skip


async def _cold_update(
    kube: Kube, inputs: PlanInputs, vm_name: str, run_strategy: str | None, unpin: bool, **changes: Any
) -> None:
    vm = await kube.get(VIRTUAL_MACHINES, inputs.namespace, vm_name)
    record = json.loads((vm["metadata"].get("annotations") or {}).get(COLD_MOVE_ANNOTATION) or "{}")
    if record.get("plan") != inputs.uid:
        return
    record.update(changes)
    spec: dict[str, Any] = {}
    if run_strategy is not None:
        spec["runStrategy"] = run_strategy
    if unpin:
        spec["template"] = {"spec": {"nodeSelector": {HOSTNAME_LABEL: record.get("pinned")}}}
    patch: dict[str, Any] = {
        "metadata": {"annotations": {COLD_MOVE_ANNOTATION: json.dumps(record, sort_keys=True)},
                     "resourceVersion": vm["metadata"]["resourceVersion"]},
    }  # fmt: skip
    if spec:
        patch["spec"] = spec
    await kube.patch(VIRTUAL_MACHINES, inputs.namespace, vm_name, patch)


async def _start_after_cold_move(kube: Kube, inputs: PlanInputs, action: StartAfterColdMove) -> None:
    """Stage 2: start it (Always, whatever it ran with: a stopped RerunOnFailure VM would stay stopped).
    A move given up starts unpinned, wherever the scheduler puts it."""
    changes: dict[str, Any] = {"stage": "starting"}
    if action.abandon:
        changes["abandon"] = action.abandon
    await _cold_update(kube, inputs, action.vm, "Always", bool(action.abandon), **changes)


async def _finish_cold_move(kube: Kube, inputs: PlanInputs, action: FinishColdMove) -> None:
    """Stage 3: the VM runs again; unpin it and give it back its runStrategy."""
    vm = await kube.get(VIRTUAL_MACHINES, inputs.namespace, action.vm)
    record = json.loads((vm["metadata"].get("annotations") or {}).get(COLD_MOVE_ANNOTATION) or "{}")
    changes: dict[str, Any] = {"stage": "failed" if action.failure else "done", "finishedAt": _stamp(_now())}
    if action.failure:
        changes["failure"] = action.failure
    await _cold_update(kube, inputs, action.vm, str(record.get("runStrategy") or "Always"), True, **changes)


async def _ensure_policy(kube: Kube, spec: MigrationPlanSpec, inputs: PlanInputs) -> str:
    """spec.migration as a KubeVirt MigrationPolicy selecting the plan's VMIs (labelled before each start)."""
    options = spec.migration
    policy_spec: dict[str, Any] = {
        "allowPostCopy": options.allow_post_copy,
        "allowAutoConverge": options.allow_auto_converge,
        "completionTimeoutPerGiB": options.completion_timeout_per_gib,
        "maxDowntimeMs": options.max_downtime_ms,
        "selectors": {
            "virtualMachineInstanceSelector": {PLAN_LABEL: inputs.uid},
            "namespaceSelector": {NAMESPACE_NAME_LABEL: inputs.namespace},
        },
    }
    if options.bandwidth_per_migration:
        policy_spec["bandwidthPerMigration"] = options.bandwidth_per_migration
    name = policy_name(inputs.uid)
    body = {
        "apiVersion": "migrations.kubevirt.io/v1alpha1",
        "kind": "MigrationPolicy",
        "metadata": {"name": name, "labels": {PLAN_LABEL: inputs.uid},
                     "annotations": {PLAN_ANNOTATION: f"{inputs.namespace}/{inputs.name}"}},
        "spec": policy_spec,
    }  # fmt: skip
    await kube.apply(MIGRATION_POLICIES, None, name, body)
    return name


async def delete_plan_objects(kube: Kube, namespace: str, uid: str, cold_moves: Sequence[ColdMove]) -> None:
    """A deleted plan: its MigrationPolicy goes (cluster-scoped, so not by owner reference), VMs in a cold
    move start again, VMIs lose the plan's label. Migrations go by owner reference (garbage collector)."""
    try:
        await kube.delete(MIGRATION_POLICIES, None, policy_name(uid))
    except ApiException as error:
        if error.status != 404:
            raise
    inputs = PlanInputs(namespace, "", uid, 0, {}, {}, (), (), {}, (), (), ())
    for move in cold_moves:
        if move.stage in ("stopping", "starting"):
            try:
                # Start it unpinned: no step will follow to finish the move.
                await _cold_update(kube, inputs, move.vm, "Always" if move.halted else move.run_strategy, True,
                                   stage="failed", failure="the plan was deleted", finishedAt=_stamp(_now()))  # fmt: skip
            except ApiException as error:
                if error.status != 404:
                    raise
    labelled = await kube.list(VIRTUAL_MACHINE_INSTANCES, namespace, label_selector=f"{PLAN_LABEL}={uid}")
    for vmi in labelled.get("items") or []:
        try:
            await kube.patch(
                VIRTUAL_MACHINE_INSTANCES,
                namespace,
                vmi["metadata"]["name"],
                {"metadata": {"labels": {PLAN_LABEL: None}}},
            )
        except ApiException as error:
            if error.status != 404:
                raise


async def _cordon(kube: Kube, spec: MigrationPlanSpec, inputs: PlanInputs, outcome: PlanOutcome) -> list[str]:
    """Cordon the nodes to drain that are schedulable; remember which, so only those are uncordoned."""
    schedulable = {n.name for n in inputs.nodes if n.schedulable}
    owner = f"{inputs.namespace}/{inputs.name}"
    cordoned = []
    for node in spec.nodes:
        if node not in schedulable:
            continue
        body = {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: owner}}, "spec": {"unschedulable": True}}
        try:
            await kube.patch(NODES, None, node, body)
        except ApiException as error:
            if error.status == 404:
                continue
            raise
        cordoned.append(node)
        outcome.events.append(("Normal", reasons.NODE_CORDONED, f"cordoned {node} to drain it"))
    return cordoned


async def _uncordon(kube: Kube, inputs: PlanInputs, nodes: Sequence[str], outcome: PlanOutcome) -> None:
    owner = f"{inputs.namespace}/{inputs.name}"
    for name in nodes:
        try:
            node = await kube.get(NODES, None, name)
        except ApiException as error:
            if error.status == 404:
                continue
            raise
        if (node["metadata"].get("annotations") or {}).get(CORDONED_BY_ANNOTATION) != owner:
            continue  # someone else cordoned it since, or already uncordoned
        body = {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: None}}, "spec": {"unschedulable": None}}
        await kube.patch(NODES, None, name, body)
        outcome.events.append(("Normal", reasons.NODE_UNCORDONED, f"uncordoned {name}"))
