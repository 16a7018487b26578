"""What a pool reconcile does, decided without I/O: creates, deletes, live updates, status.

Level-triggered: the plan depends only on the desired spec and the observed members, so running it twice
on the same facts gives the same answer, and a converged pool plans nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from virtfleet.api import reasons
from virtfleet.api.pool import UpdateStrategy
from virtfleet.core import conditions
from virtfleet.core.conditions import Desired


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
