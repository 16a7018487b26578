"""Reconcile one VirtualMachinePool: gather the inputs, let the pure core decide (core.pools.decide),
carry out the writes, write the status once, and only the fields that differ."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from virtfleet.api import reasons
from virtfleet.core.pools import Defaults, Member, PoolInputs, PoolPlan, Rendering, decide, named
from virtfleet.core.render import live_update_patch, render_vm, vm_name
from virtfleet.core.status import differing, wire
from virtfleet.kube.client import VIRTUAL_MACHINE_POOLS, VIRTUAL_MACHINES, ApiError, Conflict, NotFound
from virtfleet.kube.runtime import EXPECTATION_TTL, PoolKey, Runtime

__all__ = ["PoolInputs", "PoolOutcome", "reconcile_pool"]

log = logging.getLogger("virtfleet.pools")
WRITE_CONCURRENCY = 16


@dataclass
class PoolOutcome:
    """What a reconcile did, for the handler to report, and when it wants to run again."""

    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    wake_at: datetime | None = None
    rollout_done_template: str | None = None
    status: dict[str, Any] = field(default_factory=dict)  # the pool's status as just computed


async def reconcile_pool(runtime: Runtime, inputs: PoolInputs) -> PoolOutcome:
    key: PoolKey = (inputs.namespace, inputs.name)
    settings = runtime.settings
    expectations = runtime.expectations[key]
    expectations.observe({m.name for m in inputs.members})
    expectations.expire(runtime.clock())
    defaults = Defaults(
        settings.default_cpu_ratio, settings.default_memory_ratio, settings.kubevirt_cpu_allocation_ratio
    )
    decision = decide(inputs, list(expectations.creates), list(expectations.deletes), defaults, runtime.now())
    # The one place the typed status becomes the wire's camelCase, and only the fields it sets.
    status = wire(decision.status)
    outcome = PoolOutcome(
        wake_at=decision.wake_at, rollout_done_template=decision.rollout_done_template, status=status
    )
    if decision.rendering is not None:
        if decision.pending:
            runtime.waiting_for_capacity.add(key)
        else:
            runtime.waiting_for_capacity.discard(key)
        await _execute(runtime, inputs, decision.rendering, decision.plan, outcome)
    await _write_status(runtime, inputs, status)
    outcome.events.extend(decision.events)
    if decision.rendering is not None:
        # A create or delete the watch never shows expires after EXPECTATION_TTL; no event will come
        # then, so look again when the oldest one is due.
        in_flight = [*expectations.creates.values(), *expectations.deletes.values()]
        if in_flight:
            due = runtime.now() + timedelta(
                seconds=max(1.0, min(in_flight) + EXPECTATION_TTL - runtime.clock() + 1.0)
            )
            outcome.wake_at = due if outcome.wake_at is None else min(outcome.wake_at, due)
    return outcome


async def _execute(
    runtime: Runtime, inputs: PoolInputs, rendering: Rendering, result: PoolPlan, outcome: PoolOutcome
) -> None:
    kube = runtime.kube
    key = (inputs.namespace, inputs.name)
    expectations = runtime.expectations[key]
    semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)
    context, tname, digest, template = (
        rendering.context,
        rendering.template_name,
        rendering.digest,
        rendering.template,
    )

    async def create(ordinal: int) -> None:
        name = vm_name(context.name, ordinal)
        expectations.creates[name] = runtime.clock()
        async with semaphore:
            # Rendered only once a write slot is free: a 500-VM scale-out then holds at most
            # WRITE_CONCURRENCY rendered bodies at a time, not all 500.
            vm = render_vm(context, tname, digest, template, ordinal)
            try:
                await kube.create(VIRTUAL_MACHINES, inputs.namespace, vm)
            except Conflict:
                return  # it exists already (a restart, or a stale cache): nothing duplicated
            except ApiError as error:
                expectations.creates.pop(name, None)
                refused[str(error)].append(name)
                return
            except BaseException:
                # No answer (connection refused or reset, timeout, cancelled): whether the VM was made is
                # unknown. Expect nothing: the watch shows it if it was, and otherwise the retry creates
                # it (a second create of the same name is refused, so nothing is duplicated).
                expectations.creates.pop(name, None)
                raise
        created.append(name)

    async def delete(member: Member) -> None:
        expectations.deletes[member.name] = runtime.clock()
        async with semaphore:
            try:
                await kube.delete(VIRTUAL_MACHINES, inputs.namespace, member.name, uid=member.uid or None)
            except (NotFound, Conflict):
                pass  # gone already, or replaced by a VM of the same name (another uid): not ours to delete
            except BaseException:
                expectations.deletes.pop(member.name, None)  # no answer: unknown, as for creates
                raise
        deleted.append(member.name)

    async def live_update(member: Member) -> None:
        vm = render_vm(context, tname, digest, template, member.ordinal)
        async with semaphore:
            await kube.patch(VIRTUAL_MACHINES, inputs.namespace, member.name, live_update_patch(vm))
        updated.append(member.name)

    created: list[str] = []
    deleted: list[str] = []
    updated: list[str] = []
    refused: defaultdict[str, list[str]] = defaultdict(list)  # the API's answer -> VMs it refused
    try:
        await asyncio.gather(
            *(create(o) for o in result.create),
            *(delete(m) for m in result.delete),
            *(live_update(m) for m in result.live_update),
        )
    finally:  # what was done is reported, even when a write had no answer
        for reason, verb, names in ((reasons.SUCCESSFUL_CREATE, "created", created),
                                    (reasons.SUCCESSFUL_DELETE, "deleted", deleted)):  # fmt: skip
            if names:
                outcome.events.append(("Normal", reason, named(verb, sorted(names, key=_ordinal))))
        if updated:
            message = (
                named("moved", sorted(updated, key=_ordinal)) + f" to revision {digest} without a restart"
            )
            outcome.events.append(("Normal", reasons.HOT_PLUGGED, message))
        for error, names in refused.items():
            message = named("could not create", sorted(names, key=_ordinal)) + f": {error}"
            outcome.events.append(("Warning", reasons.FAILED_CREATE, message))


def _ordinal(name: str) -> tuple[str, int]:
    """pool-9 before pool-10."""
    prefix, _, number = name.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (name, -1)


async def _write_status(runtime: Runtime, inputs: PoolInputs, status: dict[str, Any]) -> None:
    patch = differing(status, inputs.status)
    if not patch:
        return
    await runtime.kube.patch(
        VIRTUAL_MACHINE_POOLS, inputs.namespace, inputs.name, {"status": patch}, subresource="status"
    )
