"""In-memory indexes kopf keeps from its watches: compact facts about VMs, VMIs, nodes, templates,
revisions and pools. Index functions only describe objects; the event handlers beside them wake the
pools a change concerns. kopf runs indexers before event handlers for each event, so a woken pool
always reads the index with that event in it."""

from __future__ import annotations

from typing import Any

import kopf

from virtfleet.api.labels import POOL_LABEL, TEMPLATE_LABEL
from virtfleet.core.capacity import NodeFacts
from virtfleet.core.revisions import TemplateFacts
from virtfleet.kube.client import (
    CONTROLLER_REVISIONS,
    NODES,
    PODS,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINE_POOLS,
    VIRTUAL_MACHINES,
    VM_TEMPLATES,
)
from virtfleet.kube.facts import LAUNCHER, member_of, other_pod_of, placed_of
from virtfleet.kube.revisions import revision_of
from virtfleet.kube.runtime import Runtime

# Async handlers run on the event loop; sync ones would go through a thread pool for every event.
# An index function returns {} (not None) for an object that no longer belongs in the index: kopf keeps
# an object's previous entries when its function returns None.


@kopf.index(*VIRTUAL_MACHINES.gvr, labels={POOL_LABEL: kopf.PRESENT})
async def pool_members(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """(namespace, pool) -> the pool's VMs."""
    member = member_of(body)
    return {(namespace, labels[POOL_LABEL]): member} if member is not None else {}


@kopf.on.event(*VIRTUAL_MACHINES.gvr, labels={POOL_LABEL: kopf.PRESENT})
async def member_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """Any change of a pool VM, deletion included, wakes its pool."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake((namespace or "", labels[POOL_LABEL]))


@kopf.index(*VIRTUAL_MACHINE_INSTANCES.gvr)
async def placements(body: kopf.Body, memo: kopf.Memo, **_: Any) -> Any:
    """All VMIs' footprints, for capacity accounting."""
    runtime: Runtime | None = memo.get("runtime")
    ratio = runtime.settings.kubevirt_cpu_allocation_ratio if runtime else 10.0
    placed = placed_of(body, ratio)
    return {None: placed} if placed is not None else {}


@kopf.on.event(*VIRTUAL_MACHINE_INSTANCES.gvr)
async def vmi_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A VMI placed, moved or gone changes capacity for pools waiting on it, and readiness for its own."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake_capacity_waiters()
        runtime.wake_running_plans(namespace)
        if POOL_LABEL in labels:
            runtime.wake((namespace or "", labels[POOL_LABEL]))


@kopf.index(*NODES.gvr)
async def nodes(body: kopf.Body, **_: Any) -> Any:
    """Node facts: allocatable, labels, readiness, NUMA cells."""
    return {None: NodeFacts.from_node(body)}


@kopf.index(*PODS.gvr)
async def other_pods(body: kopf.Body, **_: Any) -> Any:
    """Node -> requests of its pods that are not VMs: the scheduler counts them, so capacity must too."""
    found = other_pod_of(body)
    return {found[0]: found[1]} if found is not None else {}


@kopf.on.event(*PODS.gvr, when=lambda labels, **_: labels.get(LAUNCHER[0]) != LAUNCHER[1])
async def other_pod_changed(memo: kopf.Memo, **_: Any) -> None:
    """A non-VM pod bound, resized or gone changes what pools waiting for room can create."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake_capacity_waiters()


@kopf.on.event(*NODES.gvr)
async def node_changed(memo: kopf.Memo, **_: Any) -> None:
    """Capacity appeared or vanished."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake_capacity_waiters()


@kopf.index(*VM_TEMPLATES.gvr)
async def templates(
    body: kopf.Body, namespace: str | None, name: str, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> Any:
    """(namespace, name) -> the template's spec and current revision."""
    facts = TemplateFacts(
        name=name,
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        spec=dict(body.get("spec") or {}),
        current_revision=status.get("currentRevision"),
    )
    return {(namespace, name): facts}


@kopf.on.event(*VM_TEMPLATES.gvr)
async def template_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A new current revision (or a deleted template) concerns every pool using it."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake_template((namespace or "", name))


@kopf.index(*CONTROLLER_REVISIONS.gvr, labels={TEMPLATE_LABEL: kopf.PRESENT})
async def revisions(body: kopf.Body, namespace: str | None, **_: Any) -> Any:
    """(namespace, template) -> the template's revisions."""
    revision = revision_of(body)
    return {(namespace, revision.template): revision} if revision is not None else {}


@kopf.on.event(*CONTROLLER_REVISIONS.gvr, labels={TEMPLATE_LABEL: kopf.PRESENT})
async def revision_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wake_template((namespace or "", labels[TEMPLATE_LABEL]))


@kopf.index(*VIRTUAL_MACHINE_POOLS.gvr)
async def pools_by_template(
    spec: kopf.Spec, status: kopf.Status, namespace: str | None, name: str, **_: Any
) -> Any:
    """(namespace, template) -> (pool, revisions it pins or runs)."""
    ref = spec.get("templateRef") or {}
    used = {
        r for r in (ref.get("revision"), status.get("currentRevision"), status.get("updateRevision")) if r
    }
    return {(namespace, ref.get("name", "")): (name, frozenset(used))}


@kopf.index(*VIRTUAL_MACHINE_POOLS.gvr)
async def pool_ratios(status: kopf.Status, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, pool) -> the (cpu, memory) ratios in force, for migration targets."""
    cpu, memory = status.get("cpuRatio"), status.get("memoryRatio")
    if cpu is None or memory is None:
        return {}
    return {(namespace, name): (float(cpu), float(memory))}
