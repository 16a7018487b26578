"""MigrationPlan reconcile, dry-run part: select VMs, plan with the pure planner, report in status.

Execution (VirtualMachineInstanceMigrations, cold moves, cancel, retries) is not built yet: a plan that
is not a dry run is planned and reported the same way, with Stalled=True saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from virtfleet.api.migrationplan import MAX_LISTED, MigrationPlanSpec
from virtfleet.core import conditions
from virtfleet.core.capacity import NodeFacts, VMLoad
from virtfleet.core.migration_planner import Limits, Plan, PlanRequest, PlanVM, Timing, plan_migrations
from virtfleet.core.quantity import QuantityError, parse_bytes
from virtfleet.core.render import POOL_LABEL
from virtfleet.kube.facts import Placed

DEFAULT_DIRTY_RATE = 50 * 2**20
DEFAULT_BANDWIDTH = 1.25e9
EXECUTOR_MISSING = "ExecutorNotAvailable"
PLANNED = "Planned"


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
        dirty = float(parse_bytes(annotations["virtfleet.io/dirty-rate"]))
    except (KeyError, QuantityError):
        dirty = DEFAULT_DIRTY_RATE
    try:
        priority = int(annotations.get("virtfleet.io/priority", "0"))
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
    )


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
        cap = parse_bytes(options.bandwidth_per_migration)
        bandwidth = min(bandwidth, cap) if cap > 0 else bandwidth
    request = PlanRequest(
        goal=spec.goal,
        vms=selected,
        nodes=nodes,
        placed=[VMLoad(p.requests, p.node) for p in placements if p.node],
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


def plan_status(
    spec: MigrationPlanSpec, plan: Plan, status: Mapping[str, Any], generation: int | None
) -> dict[str, Any]:
    """The status fields that differ from `status` (empty: nothing to write)."""
    vms = [
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
        }
        for move in plan.moves[:MAX_LISTED]
    ]
    unplaceable = [
        {"name": name.split("/", 1)[-1], "reason": reason} for name, reason in plan.unplaceable[:MAX_LISTED]
    ]
    summary = (
        f"{len(plan.moves)} VMs in {plan.waves} start rounds, estimated {plan.makespan_s:.0f}s; "
        f"{len(plan.unplaceable)} cannot be planned"
    )
    wanted = [
        conditions.Desired(conditions.READY, "True" if spec.dry_run else "False", PLANNED, summary),
        conditions.Desired(
            conditions.STALLED,
            "False" if spec.dry_run else "True",
            PLANNED if spec.dry_run else EXECUTOR_MISSING,
            ""
            if spec.dry_run
            else "this version plans and estimates only; executing plans is not available yet",
        ),
        conditions.Desired(
            "Degraded",
            "True" if plan.unplaceable else "False",
            "Unplaceable" if plan.unplaceable else PLANNED,
            f"{len(plan.unplaceable)} VMs cannot be planned" if plan.unplaceable else "",
        ),
    ]
    desired: dict[str, Any] = {
        "phase": PLANNED,
        "total": len(plan.moves) + len([u for u in plan.unplaceable if not u[0].startswith("node/")]),
        "done": 0,
        "failed": 0,
        "estimatedMakespanSeconds": round(plan.makespan_s, 1),
        "estimatedMaxDowntimeSeconds": round(
            max((m.estimate.downtime_s for m in plan.moves), default=0.0), 3
        ),
        "vms": vms,
        "unplaceable": unplaceable,
        "observedGeneration": generation,
    }
    desired["conditions"] = conditions.merge(status.get("conditions"), wanted, generation, datetime.now(UTC))
    return {k: v for k, v in desired.items() if status.get(k) != v}
