"""Reconcile one VirtualMachinePool: read facts, ask the pure core, write only the difference."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from virtfleet.api import reasons
from virtfleet.api.pool import VirtualMachinePoolSpec
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core import conditions
from virtfleet.core.capacity import Capacity, NodeFacts, Placed, VMLoad, effective_cpu_ratio, plan_capacity
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.pools import (
    Member,
    PoolFacts,
    PoolPlan,
    PoolSummary,
    current_revision,
    desired_conditions,
    plan,
)
from virtfleet.core.render import (
    PoolContext,
    check_compatible,
    hotplug_only,
    pool_hash,
    pool_selector,
    render_vm,
    vm_name,
)
from virtfleet.kube.client import VIRTUAL_MACHINE_POOLS, VIRTUAL_MACHINES, ApiException
from virtfleet.kube.facts import RevisionFacts, TemplateFacts
from virtfleet.kube.runtime import EXPECTATION_TTL, PoolKey, Runtime

log = logging.getLogger("virtfleet.pools")
WRITE_CONCURRENCY = 16


@dataclass
class Outcome:
    """What a reconcile did, for the handler to report, and when it wants to run again."""

    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    wake_in: float | None = None
    rollout_done_template: str | None = None
    status: dict[str, Any] = field(default_factory=dict)  # the pool's status as just computed


@dataclass(frozen=True)
class PoolInputs:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    template: TemplateFacts | None
    revisions: Sequence[RevisionFacts]
    members: Sequence[Member]
    placements: Iterable[Placed]
    nodes: Iterable[NodeFacts]


async def reconcile_pool(runtime: Runtime, inputs: PoolInputs) -> Outcome:
    outcome = Outcome()
    key: PoolKey = (inputs.namespace, inputs.name)
    settings = runtime.settings
    now = datetime.now(UTC)
    status: dict[str, Any] = {"labelSelector": pool_selector(inputs.name)}
    spec = VirtualMachinePoolSpec.model_validate(inputs.spec)
    cpu_ratio = spec.cpu_ratio or settings.default_cpu_ratio
    memory_ratio = spec.memory_ratio or settings.default_memory_ratio
    status.update(cpuRatio=cpu_ratio, memoryRatio=memory_ratio)
    expectations = runtime.expectations[key]
    present = {m.name for m in inputs.members}
    expectations.observe(present)
    expectations.expire(runtime.clock())
    members = list(inputs.members)

    problem, template, revision = _resolve_template(inputs, spec)
    if problem is None and template is not None:
        incompatible = check_compatible(template, cpu_ratio, memory_ratio)
        if incompatible:
            problem = (reasons.INCOMPATIBLE_TEMPLATE, "; ".join(incompatible))
    if problem is not None or template is None or revision is None:
        reason, message = problem or (reasons.TEMPLATE_NOT_FOUND, "no template")
        facts = PoolFacts(
            spec.replicas, True, spec.update_strategy, spec.scale_in_policy, "", "", members, now
        )
        summary = PoolSummary(0, "", template_problem=(reason, message))
        await _write_status(runtime, inputs, facts, PoolPlan(), summary, status, outcome)
        return outcome

    context = PoolContext(inputs.name, inputs.namespace, inputs.uid, spec, cpu_ratio, memory_ratio)
    desired_hash = pool_hash(context)
    members = _with_expectations(
        members, expectations.creates, expectations.deletes, now, revision.digest, desired_hash
    )
    by_digest = {r.digest: r for r in inputs.revisions}
    members = [_mark_hotplug(m, revision, template, by_digest) for m in members]
    placements = list(inputs.placements)
    vmi_nodes = {p.key: p.node for p in placements}
    members = [replace(m, node=vmi_nodes.get(f"{inputs.namespace}/{m.name}")) for m in members]
    nodes = list(inputs.nodes)
    capacity = Capacity(nodes, (VMLoad(p.requests, p.node) for p in placements if p.node))
    node_ratios = {n: effective_cpu_ratio(capacity.nodes[n], u) for n, u in capacity.usage.items()}
    facts = PoolFacts(
        replicas=spec.replicas,
        paused=spec.paused,
        strategy=spec.update_strategy,
        scale_in_policy=spec.scale_in_policy,
        update_revision=revision.digest,
        pool_hash=desired_hash,
        members=members,
        now=now,
        node_ratios=node_ratios,
    )
    result = plan(facts)

    # Capacity: create only what fits within the pool's ratios on its eligible nodes.
    sample = render_vm(context, spec.template_ref.name, revision.digest, template, 0)
    per_vm = launcher_requests(sample["spec"]["template"]["spec"], settings.kubevirt_cpu_allocation_ratio)
    node_selector = sample["spec"]["template"]["spec"].get("nodeSelector") or {}
    unplaced = sum(1 for m in members if not m.deleting and m.node is None)
    pool_capacity = plan_capacity(
        nodes,
        (VMLoad(p.requests, p.node) for p in placements if p.node),
        unplaced=unplaced,
        wanted=len(result.create),
        per_vm=per_vm,
        node_selector=node_selector,
        cpu_ratio=cpu_ratio,
        memory_ratio=memory_ratio,
    )
    pending = len(result.create) - pool_capacity.creatable
    result.create = result.create[: pool_capacity.creatable]
    if pending:
        runtime.waiting_for_capacity.add(key)
    else:
        runtime.waiting_for_capacity.discard(key)
    status["oversubscription"] = {
        "committedVcpus": pool_capacity.committed_vcpus,
        "physicalCores": pool_capacity.physical_cores,
        "effectiveCpuRatio": pool_capacity.effective_cpu_ratio,
        "committedMemory": str(pool_capacity.committed_memory),
        "physicalMemory": str(pool_capacity.physical_memory),
        "effectiveMemoryRatio": pool_capacity.effective_memory_ratio,
        "eligibleNodes": pool_capacity.eligible_nodes,
    }
    await _execute(runtime, inputs, context, spec, template, revision, result, outcome)
    summary = PoolSummary(pending, pool_capacity.message)
    status["pendingReplicas"] = pending
    await _write_status(runtime, inputs, facts, result, summary, status, outcome)
    if pending:
        outcome.events.append(("Warning", reasons.CAPACITY_EXHAUSTED, pool_capacity.message))
    if result.halted is not None:
        outcome.events.append(
            (
                "Warning",
                reasons.PROGRESS_DEADLINE_EXCEEDED,
                f"{result.halted.name} not Ready in time; rollout halted",
            )
        )
    # A new-revision VM that is still starting: look again when its deadline passes.
    starting = [m for m in members if m.revision == revision.digest and not m.ready and not m.deleting]
    if starting and result.rolling:
        deadline = spec.update_strategy.ready_timeout_seconds
        oldest = min(m.created for m in starting)
        outcome.wake_in = max(1.0, deadline - (now - oldest).total_seconds() + 1)
    if not result.rolling and all(m.revision == revision.digest for m in members):
        outcome.rollout_done_template = spec.template_ref.name
    # A create or delete the watch never shows expires after EXPECTATION_TTL; no event will come then,
    # so look again when the oldest one is due.
    in_flight = [*expectations.creates.values(), *expectations.deletes.values()]
    if in_flight:
        due = max(1.0, min(in_flight) + EXPECTATION_TTL - runtime.clock() + 1.0)
        outcome.wake_in = due if outcome.wake_in is None else min(outcome.wake_in, due)
    return outcome


def _with_expectations(
    members: Sequence[Member],
    creates: Mapping[str, float],
    deletes: Mapping[str, float],
    now: datetime,
    digest: str,
    desired_hash: str,
) -> list[Member]:
    """Members as they will be once in-flight writes land."""
    result = [replace(m, deleting=True) if m.name in deletes else m for m in members]
    seen = {m.name for m in members}
    for name in creates:
        if name not in seen:
            ordinal = int(name.rsplit("-", 1)[1])
            result.append(Member(name, ordinal, digest, desired_hash, False, now))
    return result


def _resolve_template(
    inputs: PoolInputs, spec: VirtualMachinePoolSpec
) -> tuple[tuple[str, str] | None, VMTemplateSpec | None, RevisionFacts | None]:
    name = spec.template_ref.name
    if inputs.template is None:
        return (
            (reasons.TEMPLATE_NOT_FOUND, f"VMTemplate {inputs.namespace}/{name} does not exist"),
            None,
            None,
        )
    wanted = spec.template_ref.revision or inputs.template.current_revision
    if wanted is None:
        return (reasons.REVISION_NOT_FOUND, f"VMTemplate {name} has no valid revision yet"), None, None
    revision = next((r for r in inputs.revisions if r.digest == wanted), None)
    if revision is None:
        return (reasons.REVISION_NOT_FOUND, f"VMTemplate {name} has no revision {wanted}"), None, None
    try:
        template = VMTemplateSpec.model_validate(revision.spec)
    except ValidationError as error:
        return (reasons.INVALID_SPEC, f"revision {wanted} of {name} is invalid: {error}"), None, None
    return None, template, revision


def _mark_hotplug(
    member: Member, revision: RevisionFacts, template: VMTemplateSpec, by_digest: Mapping[str, RevisionFacts]
) -> Member:
    if member.revision == revision.digest:
        return member
    old = by_digest.get(member.revision)
    if old is None:
        return member
    try:
        old_spec = VMTemplateSpec.model_validate(old.spec)
    except ValidationError:
        return member
    return replace(member, hotplug_ok=hotplug_only(old_spec, template))


async def _execute(
    runtime: Runtime,
    inputs: PoolInputs,
    context: PoolContext,
    spec: VirtualMachinePoolSpec,
    template: VMTemplateSpec,
    revision: RevisionFacts,
    result: PoolPlan,
    outcome: Outcome,
) -> None:
    kube = runtime.kube
    key = (inputs.namespace, inputs.name)
    expectations = runtime.expectations[key]
    semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)
    tname = spec.template_ref.name

    async def create(ordinal: int) -> None:
        name = vm_name(context.name, ordinal)
        expectations.creates[name] = runtime.clock()
        async with semaphore:
            # Rendered only once a write slot is free: a 500-VM scale-out then holds at most
            # WRITE_CONCURRENCY rendered bodies at a time, not all 500.
            vm = render_vm(context, tname, revision.digest, template, ordinal)
            try:
                await kube.create(VIRTUAL_MACHINES, inputs.namespace, vm)
            except ApiException as error:
                if error.status == 409:
                    return  # it exists already (a restart, or a stale cache): nothing duplicated
                expectations.creates.pop(name, None)
                outcome.events.append(
                    ("Warning", reasons.FAILED_CREATE, f"{name}: {error.status} {error.reason}")
                )
                return
            except BaseException:
                # No answer (connection refused or reset, timeout, cancelled): whether the VM was made is
                # unknown. Expect nothing: the watch shows it if it was, and otherwise the retry creates
                # it (a second create of the same name is refused, so nothing is duplicated).
                expectations.creates.pop(name, None)
                raise
        outcome.events.append(("Normal", reasons.SUCCESSFUL_CREATE, f"created VirtualMachine {name}"))

    async def delete(member: Member) -> None:
        expectations.deletes[member.name] = runtime.clock()
        async with semaphore:
            try:
                await kube.delete(VIRTUAL_MACHINES, inputs.namespace, member.name, uid=member.uid or None)
            except ApiException as error:
                if error.status not in (404, 409):
                    expectations.deletes.pop(member.name, None)
                    raise
            except BaseException:
                expectations.deletes.pop(member.name, None)  # no answer: unknown, as for creates
                raise
        outcome.events.append(("Normal", reasons.SUCCESSFUL_DELETE, f"deleted VirtualMachine {member.name}"))

    async def live_update(member: Member) -> None:
        vm = render_vm(context, tname, revision.digest, template, member.ordinal)
        async with semaphore:
            await kube.apply(VIRTUAL_MACHINES, inputs.namespace, member.name, vm)
        outcome.events.append(
            (
                "Normal",
                reasons.HOT_PLUGGED,
                f"{member.name} moved to revision {revision.digest} without a restart",
            )
        )

    await asyncio.gather(
        *(create(o) for o in result.create),
        *(delete(m) for m in result.delete),
        *(live_update(m) for m in result.live_update),
    )


async def _write_status(
    runtime: Runtime,
    inputs: PoolInputs,
    facts: PoolFacts,
    result: PoolPlan,
    summary: PoolSummary,
    status: dict[str, Any],
    outcome: Outcome,
) -> None:
    alive = [m for m in facts.members if not m.deleting and m.revision]
    status.update(
        replicas=len(alive),
        readyReplicas=sum(m.ready for m in alive),
        updatedReplicas=sum(
            m.revision == facts.update_revision and m.pool_hash == facts.pool_hash for m in alive
        ),
        observedGeneration=inputs.generation,
    )
    status.setdefault("pendingReplicas", 0)
    if facts.update_revision:
        status["updateRevision"] = facts.update_revision
        status["currentRevision"] = current_revision(facts)
    wanted = desired_conditions(facts, result, summary)
    status["conditions"] = conditions.merge(
        inputs.status.get("conditions"), wanted, inputs.generation, facts.now
    )
    outcome.status = status
    current = dict(inputs.status)
    patch = {k: v for k, v in status.items() if current.get(k) != v}
    if not patch:
        return
    await runtime.kube.patch(
        VIRTUAL_MACHINE_POOLS, inputs.namespace, inputs.name, {"status": patch}, subresource="status"
    )
