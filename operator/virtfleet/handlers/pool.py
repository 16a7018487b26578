"""VirtualMachinePool handlers: one long-lived worker per pool that reconciles whenever woken."""

from __future__ import annotations

from typing import Any

import kopf

from virtfleet import metrics
from virtfleet.core.capacity import with_other_pods
from virtfleet.handlers.worker import RETRY_AFTER_FAILURE, measured, post_events, run_worker, seconds_until
from virtfleet.kube.client import VIRTUAL_MACHINE_POOLS
from virtfleet.kube.pools import PoolInputs, reconcile_pool
from virtfleet.kube.runtime import Runtime
from virtfleet.kube.templates import collect_unused_revisions

KIND = "VirtualMachinePool"


@kopf.on.event(*VIRTUAL_MACHINE_POOLS.gvr)
async def pool_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Spec edits, scale subresource writes (kubectl scale, HPA): wake the pool's worker."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake((namespace or "", name))


@kopf.daemon(*VIRTUAL_MACHINE_POOLS.gvr, cancellation_timeout=10.0)
async def pool_worker(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Reconcile the pool on every wake-up (its VMs, template, nodes or VMIs changed), never by polling."""
    runtime: Runtime = memo["runtime"]
    namespace = namespace or ""
    key = (namespace, name)
    # kopf injects its indexes by name.
    nodes: kopf.Index[Any, Any] = kwargs["nodes"]
    templates: kopf.Index[Any, Any] = kwargs["templates"]
    revisions: kopf.Index[Any, Any] = kwargs["revisions"]
    pools_by_template: kopf.Index[Any, Any] = kwargs["pools_by_template"]

    async def reconcile() -> float | None:
        pool_members = await runtime.vm_index("pool_members")
        template_name = (body.get("spec") or {}).get("templateRef", {}).get("name", "")
        runtime.use_template(key, template_name)
        inputs = PoolInputs(
            namespace=namespace,
            name=name,
            uid=str(body.metadata.uid),
            generation=int(body.metadata.get("generation") or 0),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            template=next(iter(templates.get((namespace, template_name), ())), None),
            revisions=list(revisions.get((namespace, template_name), ())),
            members=list(pool_members.get(key, ())),
            placements=await runtime.placements(),
            nodes=with_other_pods(nodes.get(None, ()), await runtime.other_pods()),
        )
        outcome = await measured(KIND, logger, reconcile_pool(runtime, inputs))
        if outcome is None:
            return RETRY_AFTER_FAILURE
        metrics.record_pool(namespace, name, outcome.status, int(inputs.spec.get("replicas", 0)))
        post_events(body, outcome.events)
        if outcome.rollout_done_template:
            done = next(iter(templates.get((namespace, outcome.rollout_done_template), ())), None)
            if done is not None and done.current_revision:
                await collect_unused_revisions(
                    runtime,
                    namespace,
                    outcome.rollout_done_template,
                    revisions,
                    pools_by_template,
                    pool_members,
                    done.current_revision,
                    template_spec=done.spec,
                )
        return seconds_until(outcome.wake_at, runtime.now())

    try:
        await run_worker(runtime.triggers[key], stopped, reconcile)
    finally:
        runtime.forget(key)
        metrics.forget_pool(namespace, name)
