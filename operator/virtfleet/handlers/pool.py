"""VirtualMachinePool handlers: one long-lived worker per pool that reconciles whenever woken."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import kopf

from virtfleet import GROUP, VERSION, metrics
from virtfleet.kube.pools import PoolInputs, reconcile_pool
from virtfleet.kube.runtime import Runtime
from virtfleet.kube.templates import collect_unused_revisions

PLURAL = "virtualmachinepools"


@kopf.on.event(GROUP, VERSION, PLURAL)
async def pool_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Spec edits, scale subresource writes (kubectl scale, HPA): wake the pool's worker."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake((namespace or "", name))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
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
    pool_members: kopf.Index[Any, Any] = kwargs["pool_members"]
    placements: kopf.Index[Any, Any] = kwargs["placements"]
    nodes: kopf.Index[Any, Any] = kwargs["nodes"]
    templates: kopf.Index[Any, Any] = kwargs["templates"]
    revisions: kopf.Index[Any, Any] = kwargs["revisions"]
    pools_by_template: kopf.Index[Any, Any] = kwargs["pools_by_template"]
    trigger = runtime.triggers[key]
    trigger.set()
    try:
        while not stopped:
            wake_in: float | None = None
            if trigger.is_set():
                trigger.clear()
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
                    placements=list(placements.get(None, ())),
                    nodes=list(nodes.get(None, ())),
                )
                started = time.monotonic()
                try:
                    outcome = await reconcile_pool(runtime, inputs)
                except Exception as error:  # a failed write: try again shortly, without a storm
                    metrics.RECONCILES.labels("VirtualMachinePool", "error").inc()
                    logger.warning(f"reconcile failed, retrying in 5s: {error}")
                    wake_in = 5.0
                else:
                    metrics.RECONCILES.labels("VirtualMachinePool", "ok").inc()
                    metrics.RECONCILE_SECONDS.labels("VirtualMachinePool").observe(time.monotonic() - started)
                    metrics.record_pool(namespace, name, outcome.status, int(inputs.spec.get("replicas", 0)))
                    for kind, reason, message in outcome.events:
                        kopf.event(body, type=kind, reason=reason, message=message)
                    wake_in = outcome.wake_in
                    if outcome.rollout_done_template:
                        await collect_unused_revisions(
                            runtime,
                            namespace,
                            outcome.rollout_done_template,
                            revisions,
                            pools_by_template,
                            pool_members,
                        )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trigger.wait(), timeout=wake_in if wake_in is not None else 30.0)
                continue
            if wake_in is not None:
                trigger.set()
    finally:
        runtime.forget(key)
        metrics.forget_pool(namespace, name)
