"""In-memory indexes of compact facts: about nodes, templates, revisions and pools, kept by kopf from
its watches, and about VMs, VMIs and pods, kept by the operator's own informers (kube.informer: thousands
of them would make kopf's start quadratic). Index functions only describe objects; the event handlers beside them
wake the pools a change concerns. kopf runs indexers before event handlers for each event, and the
informer files a VM before it wakes anyone, so a woken pool always reads the index with that event in it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from virtfleet.api.labels import COLD_MOVE_ANNOTATION, POOL_LABEL, TEMPLATE_LABEL
from virtfleet.core.capacity import NodeFacts, Placed
from virtfleet.core.revisions import TemplateFacts
from virtfleet.kube.client import (
    CONTROLLER_REVISIONS,
    NODES,
    VIRTUAL_MACHINE_POOLS,
    VM_TEMPLATES,
)
from virtfleet.kube.facts import LAUNCHER, cold_move_of, member_of, other_pod_of, placed_of
from virtfleet.kube.informer import Changed, Indexer
from virtfleet.kube.revisions import revision_of
from virtfleet.kube.runtime import PoolKey, Runtime

# Async handlers run on the event loop; sync ones would go through a thread pool for every event.
# An index function returns {} (not None) for an object that no longer belongs in the index: kopf keeps
# an object's previous entries when its function returns None.


def pool_member_entry(body: Mapping[str, Any]) -> dict[Any, Any]:
    """(namespace, pool) -> the VM's facts, for a VM of a pool (the VM informer's "pool_members")."""
    meta = body.get("metadata") or {}
    pool = (meta.get("labels") or {}).get(POOL_LABEL)
    member = member_of(body) if pool else None
    return {(meta.get("namespace") or "", pool): member} if member is not None else {}


def cold_move_entry(body: Mapping[str, Any]) -> dict[Any, Any]:
    """Plan UID -> the VM's cold move, for a VM in one (the VM informer's "cold_moves")."""
    found = (
        cold_move_of(body)
        if COLD_MOVE_ANNOTATION in ((body.get("metadata") or {}).get("annotations") or {})
        else None
    )
    return {found[0]: found[1]} if found is not None else {}


VM_INDEXERS = {"pool_members": pool_member_entry, "cold_moves": cold_move_entry}


def vms_changed(runtime: Runtime, changed: Changed) -> None:
    """A pool VM's facts changed, deletion included: wake its pool; a cold move's: wake its plan."""
    for key in changed.get("pool_members", ()):
        runtime.wake(cast(PoolKey, key))
    for plan in changed.get("cold_moves", ()):
        runtime.wake_plan(str(plan))


def vmi_indexers(cpu_allocation_ratio: float) -> dict[str, Indexer]:
    """The VMI informer's indexes: every VMI's footprint under None ("placements", for capacity), and the
    same under its namespace and under its pool, so a change wakes the plans and the pool it concerns."""

    def filed(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], Placed | None]:
        return body.get("metadata") or {}, placed_of(body, cpu_allocation_ratio)

    def placements(body: Mapping[str, Any]) -> dict[Any, Any]:
        placed = filed(body)[1]
        return {None: placed} if placed is not None else {}

    def by_namespace(body: Mapping[str, Any]) -> dict[Any, Any]:
        meta, placed = filed(body)
        return {meta.get("namespace") or "": placed} if placed is not None else {}

    def by_pool(body: Mapping[str, Any]) -> dict[Any, Any]:
        meta, placed = filed(body)
        pool = (meta.get("labels") or {}).get(POOL_LABEL)
        return {(meta.get("namespace") or "", pool): placed} if placed is not None and pool else {}

    return {"placements": placements, "vmi_namespaces": by_namespace, "vmi_pools": by_pool}


def vmis_changed(runtime: Runtime, changed: Changed) -> None:
    """A VMI placed, moved, started or gone: capacity changed for pools waiting on it, its pool's VMs and
    the running plans of its namespace may have moved on."""
    if "placements" in changed:
        runtime.wake_capacity_waiters()
    for namespace in changed.get("vmi_namespaces", ()):
        runtime.wake_running_plans(str(namespace))
    for key in changed.get("vmi_pools", ()):
        runtime.wake(cast(PoolKey, key))


@kopf.index(*NODES.gvr)
async def nodes(body: kopf.Body, **_: Any) -> Any:
    """Node facts: allocatable, labels, readiness, NUMA cells."""
    return {None: NodeFacts.from_node(body)}


# virt-launcher pods are the VMIs themselves (counted from the VMI): the API server leaves them out.
NOT_LAUNCHERS = f"{LAUNCHER[0]}!={LAUNCHER[1]}"


def other_pod_entry(body: Mapping[str, Any]) -> dict[Any, Any]:
    """Node -> requests of a pod that is not a VM (the pod informer's "other_pods"): the scheduler counts
    them, so capacity must too."""
    found = other_pod_of(body)
    return {found[0]: found[1]} if found is not None else {}


POD_INDEXERS = {"other_pods": other_pod_entry}


def pods_changed(runtime: Runtime, changed: Changed) -> None:
    """A non-VM pod bound, resized or gone changes what pools waiting for room can create."""
    if changed:
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
