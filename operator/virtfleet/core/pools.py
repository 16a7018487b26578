"""What a pool reconcile does, decided without I/O or a clock: creates, deletes, live updates, status,
events and when to look again (`decide`); kube.pools gathers the inputs and carries it out.

Level-triggered: the plan depends only on the desired spec and the observed members, so running it twice
on the same facts gives the same answer, and a converged pool plans nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from virtfleet.api import reasons
from virtfleet.api.pool import (
    OversubscriptionSummary,
    UpdateStrategy,
    VirtualMachinePoolSpec,
    VirtualMachinePoolStatus,
)
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core import conditions
from virtfleet.core.capacity import Capacity, NodeFacts, Placed, VMLoad, effective_cpu_ratio, plan_capacity
from virtfleet.core.conditions import Desired
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.render import (
    PoolContext,
    check_compatible,
    hotplug_only,
    pool_hash,
    pool_selector,
    render_vm,
)
from virtfleet.core.revisions import RevisionFacts, TemplateFacts
from virtfleet.core.status import ObjectInputs


@dataclass(frozen=True)
class Member:
    """A pool VM as observed."""

    name: str
    ordinal: int
    revision: str
    pool_hash: str
    ready: bool
    created: datetime
    uid: str = ""
    deleting: bool = False
    node: str | None = None
    hotplug_ok: bool = False  # its revision differs from the update revision only in hot-pluggable fields


@dataclass(frozen=True)
class PoolFacts:
    replicas: int
    paused: bool
    strategy: UpdateStrategy
    scale_in_policy: str
    update_revision: str
    pool_hash: str
    members: Sequence[Member]
    now: datetime
    node_ratios: Mapping[str, float] = field(default_factory=dict)  # for MostOversubscribedNode


@dataclass
class PoolPlan:
    create: list[int] = field(default_factory=list)
    delete: list[Member] = field(default_factory=list)
    live_update: list[Member] = field(default_factory=list)
    halted: Member | None = None  # a new-revision VM that missed its ready deadline
    rolling: bool = False

    @property
    def changes(self) -> bool:
        return bool(self.create or self.delete or self.live_update)


NAMES_SHOWN = 3  # an event about many VMs names this many, then counts the rest


def named(verb: str, names: Sequence[str], what: str = "VirtualMachine") -> str:
    """One event message for what a reconcile did to many VMs: posting one Event per VM made 5,000 Event
    writes after a 5,000-VM scale-out, seconds of work after the pools were done (and what client-go's
    event correlator would have folded anyway)."""
    if len(names) == 1:
        return f"{verb} {what} {names[0]}"
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return f"{verb} {len(names)} {what}s: {shown}" + (f" and {more} more" if more > 0 else "")


def resolve(value: str, replicas: int, round_up: bool) -> int:
    """An int-or-percent budget against `replicas` (surge rounds up, unavailability down, as Deployments)."""
    if value.endswith("%"):
        exact = replicas * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def up_to_date(member: Member, facts: PoolFacts) -> bool:
    return member.revision == facts.update_revision and member.pool_hash == facts.pool_hash


def free_ordinals(members: Sequence[Member], count: int) -> list[int]:
    taken = {m.ordinal for m in members}
    result: list[int] = []
    candidate = 0
    while len(result) < count:
        if candidate not in taken:
            result.append(candidate)
        candidate += 1
    return result


def scale_in_order(members: Sequence[Member], facts: PoolFacts) -> list[Member]:
    """Members in the order they are removed: outdated and not-ready ones first, then by policy."""

    def policy_key(m: Member) -> tuple[Any, ...]:
        if facts.scale_in_policy == "Oldest":
            return (m.created.timestamp(), -m.ordinal)
        if facts.scale_in_policy == "Newest":
            return (-m.created.timestamp(), -m.ordinal)
        if facts.scale_in_policy == "MostOversubscribedNode":
            return (-facts.node_ratios.get(m.node or "", 0.0), -m.ordinal)
        return (-m.ordinal,)

    return sorted(members, key=lambda m: (up_to_date(m, facts), m.ready, *policy_key(m)))


def plan(facts: PoolFacts) -> PoolPlan:
    result = PoolPlan()
    if facts.paused:
        return result
    alive = [m for m in facts.members if not m.deleting]
    outdated = [m for m in alive if not up_to_date(m, facts)]
    replicas = facts.replicas
    rolling_update = facts.strategy.type == "RollingUpdate"
    if rolling_update:
        result.live_update = [m for m in outdated if m.hotplug_ok and m.pool_hash == facts.pool_hash]
    live = {m.name for m in result.live_update}
    restart = [m for m in outdated if m.name not in live] if rolling_update else []
    result.rolling = bool(restart)

    if not restart:
        if len(alive) < replicas:
            result.create = free_ordinals(facts.members, replicas - len(alive))
        elif len(alive) > replicas:
            result.delete = scale_in_order(alive, facts)[: len(alive) - replicas]
        return result

    # Rolling update: new-revision VMs are created up to replicas + maxSurge; outdated ones are removed
    # while at least replicas - maxUnavailable VMs stay Ready.
    surge = resolve(facts.strategy.max_surge, replicas, round_up=True)
    unavailable = resolve(facts.strategy.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # admission forbids it; never deadlock if it slips through
    deadline = facts.strategy.ready_timeout_seconds
    late = [
        m
        for m in alive
        if up_to_date(m, facts) and not m.ready and (facts.now - m.created).total_seconds() > deadline
    ]
    result.halted = late[0] if late else None
    missing = max(0, replicas + surge - len(alive))
    if result.halted is None:
        result.create = free_ordinals(facts.members, missing)
    elif len(alive) < replicas:
        result.create = free_ordinals(facts.members, replicas - len(alive))
    ready = sum(m.ready for m in alive)
    budget = ready - (replicas - unavailable)  # ready VMs that may be taken down now
    excess = len(alive) - (replicas + surge)  # beyond the surge allowance (replicas was lowered)
    for member in scale_in_order(restart, facts):
        if excess > 0:
            result.delete.append(member)
            excess -= 1
            budget -= member.ready
        elif not member.ready and result.halted is None:
            result.delete.append(member)  # it serves nobody: replace it
        elif member.ready and result.halted is None and budget > 0:
            result.delete.append(member)
            budget -= 1
    return result


@dataclass(frozen=True)
class PoolSummary:
    pending: int
    capacity_message: str
    template_problem: tuple[str, str] | None = None  # (reason, message) when the pool cannot proceed


def desired_conditions(facts: PoolFacts, result: PoolPlan, summary: PoolSummary) -> list[Desired]:
    alive = [m for m in facts.members if not m.deleting]
    ready = sum(m.ready for m in alive)
    if summary.template_problem:
        reason, message = summary.template_problem
        return [
            Desired(conditions.READY, "False", reason, message),
            Desired(conditions.STALLED, "True", reason, message),
            Desired(conditions.PROGRESSING, "False", reason, message),
            Desired(conditions.RECONCILING, "False", reason, ""),
            Desired(conditions.DEGRADED, "True", reason, message),
        ]
    all_ready = ready >= facts.replicas and len(alive) == facts.replicas and summary.pending == 0
    updated = sum(up_to_date(m, facts) for m in alive)
    converged = all_ready and updated == len(alive) and not result.changes
    out = [
        Desired(
            conditions.READY,
            "True" if all_ready else "False",
            reasons.ALL_REPLICAS_READY if all_ready else reasons.REPLICAS_NOT_READY,
            f"{ready}/{facts.replicas} VMs ready",
        )
    ]
    if facts.paused:
        out.append(Desired(conditions.PROGRESSING, "False", reasons.PAUSED, "the pool is paused"))
        out.append(Desired(conditions.RECONCILING, "False", reasons.PAUSED, ""))
    elif result.halted is not None:
        message = (
            f"{result.halted.name} at revision {facts.update_revision} not Ready after "
            f"{facts.strategy.ready_timeout_seconds}s; rollout halted"
        )
        out.append(Desired(conditions.PROGRESSING, "False", reasons.PROGRESS_DEADLINE_EXCEEDED, message))
        out.append(Desired(conditions.RECONCILING, "False", reasons.PROGRESS_DEADLINE_EXCEEDED, ""))
    elif converged:
        out.append(
            Desired(conditions.PROGRESSING, "False", reasons.ROLLOUT_COMPLETE, "all VMs are up to date")
        )
        out.append(Desired(conditions.RECONCILING, "False", reasons.ROLLOUT_COMPLETE, ""))
    else:
        reason = reasons.ROLLING_UPDATE if updated < len(alive) else reasons.SCALING
        message = f"{updated}/{len(alive)} VMs at revision {facts.update_revision}, {ready} ready"
        out.append(Desired(conditions.PROGRESSING, "True", reason, message))
        out.append(Desired(conditions.RECONCILING, "True", reason, message))
    stalled = result.halted is not None
    out.append(
        Desired(
            conditions.STALLED,
            "True" if stalled else "False",
            reasons.PROGRESS_DEADLINE_EXCEEDED if stalled else reasons.ALL_REPLICAS_READY,
            "" if not stalled else out[-1].message,
        )
    )
    degraded = summary.pending > 0 or stalled or (not all_ready and not result.changes and not result.rolling)
    out.append(
        Desired(
            conditions.DEGRADED,
            "True" if degraded else "False",
            (reasons.CAPACITY_EXHAUSTED if summary.pending else reasons.REPLICAS_NOT_READY)
            if degraded
            else reasons.ALL_REPLICAS_READY,
            f"{ready}/{facts.replicas} VMs ready, {summary.pending} pending" if degraded else "",
        )
    )
    out.append(
        Desired(
            reasons.CAPACITY_EXHAUSTED,
            "True" if summary.pending else "False",
            reasons.CAPACITY_EXHAUSTED if summary.pending else reasons.CAPACITY_AVAILABLE,
            summary.capacity_message,
        )
    )
    return out


def current_revision(facts: PoolFacts) -> str:
    alive = [m.revision for m in facts.members if not m.deleting]
    if not alive:
        return facts.update_revision
    counts = Counter(alive)
    return max(counts, key=lambda r: (counts[r], r == facts.update_revision))


# -- one reconcile, decided ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolInputs(ObjectInputs):
    """Everything one reconcile of a pool reads, gathered from kopf's body and indexes."""

    template: TemplateFacts | None
    revisions: Sequence[RevisionFacts]
    members: Sequence[Member]
    placements: Sequence[Placed]
    nodes: Sequence[NodeFacts]


@dataclass(frozen=True)
class Defaults:
    """The operator's settings a pool decision reads."""

    cpu_ratio: float
    memory_ratio: float
    kubevirt_cpu_allocation_ratio: float


@dataclass(frozen=True)
class Rendering:
    """What rendering the pool's VMs needs: present only when the pool's template can be used."""

    context: PoolContext
    template_name: str
    digest: str
    template: VMTemplateSpec


@dataclass
class PoolDecision:
    """One reconcile's decision: the writes to make, the whole status to report, the events to post after
    the writes, and when to look again even if no event comes."""

    plan: PoolPlan
    status: VirtualMachinePoolStatus
    rendering: Rendering | None = None
    pending: int = 0  # VMs wanted but not created for lack of capacity
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    wake_at: datetime | None = None
    rollout_done_template: str | None = None


def decide(
    inputs: PoolInputs, creates: Sequence[str], deletes: Collection[str], defaults: Defaults, now: datetime
) -> PoolDecision:
    """The pool's decision from its inputs and the creates and deletes still in flight."""
    spec = VirtualMachinePoolSpec.model_validate(inputs.spec)
    cpu_ratio = spec.cpu_ratio or defaults.cpu_ratio
    memory_ratio = spec.memory_ratio or defaults.memory_ratio
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
        ratios = Ratios(cpu_ratio, memory_ratio)
        return PoolDecision(PoolPlan(), pool_status(inputs, facts, PoolPlan(), summary, ratios))

    context = PoolContext(inputs.name, inputs.namespace, inputs.uid, spec, cpu_ratio, memory_ratio)
    desired_hash = pool_hash(context)
    members = _with_expectations(members, creates, deletes, now, revision.digest, desired_hash)
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
    per_vm = launcher_requests(sample["spec"]["template"]["spec"], defaults.kubevirt_cpu_allocation_ratio)
    node_selector = sample["spec"]["template"]["spec"].get("nodeSelector") or {}
    spread_keys = [
        str(c["topologyKey"])
        for c in sample["spec"]["template"]["spec"].get("topologySpreadConstraints") or []
        if c.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule"
    ]
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
        spread_keys=spread_keys,
    )
    pending = len(result.create) - pool_capacity.creatable
    result.create = result.create[: pool_capacity.creatable]
    oversubscription = OversubscriptionSummary(
        committed_vcpus=pool_capacity.committed_vcpus,
        physical_cores=pool_capacity.physical_cores,
        effective_cpu_ratio=pool_capacity.effective_cpu_ratio,
        committed_memory=str(pool_capacity.committed_memory),
        physical_memory=str(pool_capacity.physical_memory),
        effective_memory_ratio=pool_capacity.effective_memory_ratio,
        eligible_nodes=pool_capacity.eligible_nodes,
    )
    summary = PoolSummary(pending, pool_capacity.message)
    decision = PoolDecision(
        result,
        pool_status(inputs, facts, result, summary, Ratios(cpu_ratio, memory_ratio), oversubscription),
        Rendering(context, spec.template_ref.name, revision.digest, template),
        pending,
    )
    if pending:
        decision.events.append(("Warning", reasons.CAPACITY_EXHAUSTED, pool_capacity.message))
    if result.halted is not None:
        decision.events.append(
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
        decision.wake_at = now + timedelta(seconds=max(1.0, deadline - (now - oldest).total_seconds() + 1))
    if not result.rolling and all(m.revision == revision.digest for m in members):
        decision.rollout_done_template = spec.template_ref.name
    return decision


@dataclass(frozen=True)
class Ratios:
    """The CPU and memory ratios in force: the spec's, or the operator's defaults."""

    cpu: float
    memory: float


def pool_status(
    inputs: PoolInputs,
    facts: PoolFacts,
    result: PoolPlan,
    summary: PoolSummary,
    ratios: Ratios,
    oversubscription: OversubscriptionSummary | None = None,
) -> VirtualMachinePoolStatus:
    """The pool's whole status. Only the fields given are set, so a dump with exclude_unset writes
    exactly these (a pool without a usable template reports no oversubscription)."""
    alive = [m for m in facts.members if not m.deleting and m.revision]
    status = VirtualMachinePoolStatus(
        label_selector=pool_selector(inputs.name),
        cpu_ratio=ratios.cpu,
        memory_ratio=ratios.memory,
        pending_replicas=summary.pending,
        replicas=len(alive),
        ready_replicas=sum(m.ready for m in alive),
        updated_replicas=sum(
            m.revision == facts.update_revision and m.pool_hash == facts.pool_hash for m in alive
        ),
        observed_generation=inputs.generation,
        conditions=conditions.merge(
            inputs.status.get("conditions"),
            desired_conditions(facts, result, summary),
            inputs.generation,
            facts.now,
        ),
    )
    if oversubscription is not None:
        status.oversubscription = oversubscription
    if facts.update_revision:
        status.update_revision = facts.update_revision
        status.current_revision = current_revision(facts)
    return status


def _with_expectations(
    members: Sequence[Member],
    creates: Sequence[str],
    deletes: Collection[str],
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
