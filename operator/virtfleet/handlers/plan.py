"""MigrationPlan handlers: one worker per plan that plans, starts and runs it whenever woken, and the
indexes that tell it about its migrations (its cold moves come from the VM informer)."""

from __future__ import annotations

from itertools import chain
from typing import Any

import kopf

from virtfleet import metrics
from virtfleet.api.labels import PLAN_LABEL
from virtfleet.api.migrationplan import PlanPhase
from virtfleet.core.capacity import with_other_pods
from virtfleet.core.plan_executor import observed_cold_downtime_s, observed_setup_s
from virtfleet.handlers.worker import RETRY_AFTER_FAILURE, measured, post_events, run_worker, seconds_until
from virtfleet.kube.client import MIGRATION_PLANS, MIGRATIONS
from virtfleet.kube.facts import attempt_of, in_flight_of
from virtfleet.kube.plans import PlanInputs, delete_plan_objects, reconcile_plan
from virtfleet.kube.runtime import Runtime

KIND = "MigrationPlan"


@kopf.index(*MIGRATIONS.gvr, labels={PLAN_LABEL: kopf.PRESENT})
async def plan_migrations(body: kopf.Body, labels: kopf.Labels, **_: Any) -> Any:
    """Plan UID -> its migrations (one per attempt)."""
    attempt = attempt_of(body)
    return {labels[PLAN_LABEL]: attempt} if attempt is not None else {}


@kopf.index(*MIGRATIONS.gvr)
async def migrations_in_flight(body: kopf.Body, **_: Any) -> Any:
    """Every migration KubeVirt has not finished, whoever made it: KubeVirt's limits count them all."""
    vmi = in_flight_of(body)
    return {None: vmi} if vmi is not None else {}


@kopf.on.event(*MIGRATIONS.gvr)
async def migration_changed(labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A plan's migration moved on; any migration ending frees room under KubeVirt's limits for all."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    if PLAN_LABEL in labels:
        runtime.wake_plan(labels[PLAN_LABEL])
    runtime.wake_running_plans()


@kopf.on.event(*MIGRATION_PLANS.gvr)
async def plan_changed(uid: str, memo: kopf.Memo, **_: Any) -> None:
    """Spec edits (pause, cancel, limits): wake the plan's worker."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake_plan(uid)


@kopf.on.delete(*MIGRATION_PLANS.gvr)
async def plan_deleted(
    namespace: str | None, name: str, uid: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Remove what the garbage collector cannot (the cluster-scoped MigrationPolicy) and start VMs
    stopped for a cold move; migrations go with the plan by owner reference."""
    runtime: Runtime = memo["runtime"]
    moves = list((await runtime.vm_index("cold_moves")).get(uid, ()))
    spec, status = body.get("spec") or {}, body.get("status") or {}
    uncordon = list(status.get("cordonedNodes") or []) if spec.get("uncordonWhenDone") else []
    await delete_plan_objects(runtime.kube, namespace or "", uid, moves, runtime.now(), name, uncordon)
    runtime.forget_plan(uid)


@kopf.daemon(*MIGRATION_PLANS.gvr, cancellation_timeout=10.0)
async def plan_worker(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    uid: str,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Plan, start and run the plan on every wake-up (its spec, migrations, VMs or VMIs changed, or a
    backoff or notBefore came due), never by polling."""
    runtime: Runtime = memo["runtime"]
    namespace = namespace or ""

    async def reconcile() -> float | None:
        return await _reconcile(runtime, body, namespace, name, uid, logger, kwargs)

    try:
        await run_worker(runtime.plan_triggers[uid], stopped, reconcile)
    finally:
        runtime.forget_plan(uid)
        metrics.forget_plan(namespace, name)


async def _reconcile(
    runtime: Runtime,
    body: kopf.Body,
    namespace: str,
    name: str,
    uid: str,
    logger: kopf.Logger,
    indexes: dict[str, Any],
) -> float | None:
    """One pass; returns the seconds until something becomes due without an event (None: nothing)."""
    cold_moves = await runtime.vm_index("cold_moves")
    # Our own last write wins over the body kopf holds, which may not show it yet.
    status = runtime.plan_status.get(uid) or dict(body.get("status") or {})
    frozen = bool(status.get("startedAt"))
    inputs = PlanInputs(
        namespace=namespace,
        name=name,
        uid=uid,
        generation=int(body.metadata.get("generation") or 0),
        spec=dict(body.get("spec") or {}),
        status=status,
        placements=await runtime.placements(),
        nodes=with_other_pods(indexes["nodes"].get(None, ()), await runtime.other_pods()),
        pool_ratios={
            pool: ratios
            for (ns, pool), values in indexes["pool_ratios"].items()
            if ns == namespace
            for ratios in values
        },
        attempts=list(indexes["plan_migrations"].get(uid, ())),
        cold_moves=list(cold_moves.get(uid, ())),
        in_flight=list(indexes["migrations_in_flight"].get(None, ())),
        # Only a plan not yet frozen is estimated: the other plans' migrations are read only then.
        setup_s=None
        if frozen
        else runtime.learn(
            "setup", observed_setup_s(chain.from_iterable(indexes["plan_migrations"].values()))
        ),
        cold_downtime_s=None
        if frozen
        else runtime.learn("cold", observed_cold_downtime_s(chain.from_iterable(cold_moves.values()))),
    )
    outcome = await measured(KIND, logger, reconcile_plan(runtime, inputs))
    if outcome is None:
        return RETRY_AFTER_FAILURE
    phase = outcome.status.get("phase")
    if phase in (PlanPhase.RUNNING, PlanPhase.PAUSED):
        runtime.running_plans[uid] = namespace
    else:
        runtime.running_plans.pop(uid, None)
    metrics.record_plan(namespace, name, outcome.status, outcome.finished)
    post_events(body, outcome.events)
    return seconds_until(outcome.wake_at, runtime.now())
