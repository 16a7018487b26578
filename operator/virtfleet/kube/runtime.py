"""The operator's shared runtime: one API client, wake-up triggers, and in-flight expectations."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from virtfleet.core.kubevirt_api import FULL_KUBEVIRT_API, KubeVirtAPI
from virtfleet.core.plan_executor import Attempt, ColdMove, Refusal
from virtfleet.kube.client import Kube
from virtfleet.kube.informer import FactIndex, Informer
from virtfleet.settings import Settings

PoolKey = tuple[str, str]  # (namespace, pool name)
EXPECTATION_TTL = 60.0  # seconds after which an unobserved create/delete is assumed lost


@dataclass
class Expectations:
    """Creates and deletes in flight, as KubeVirt's pool controller keeps them: until the watch shows
    their effect, a reconcile counts them as done, so a stale cache never makes a VM twice or deletes one
    twice. Names are stable ordinals, so even a restart (empty expectations) cannot duplicate: a second
    create of the same name is refused by the API server."""

    creates: dict[str, float] = field(default_factory=dict)
    deletes: dict[str, float] = field(default_factory=dict)

    def expire(self, now: float) -> None:
        for table in (self.creates, self.deletes):
            for name in [n for n, at in table.items() if now - at > EXPECTATION_TTL]:
                del table[name]

    def observe(self, present: set[str]) -> None:
        for name in [n for n in self.creates if n in present]:
            del self.creates[name]
        for name in [n for n in self.deletes if n not in present]:
            del self.deletes[name]


@dataclass
class Runtime:
    kube: Kube
    settings: Settings
    kubevirt: KubeVirtAPI = FULL_KUBEVIRT_API  # replaced by what start-up discovers (kube.facts)
    triggers: dict[PoolKey, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    expectations: dict[PoolKey, Expectations] = field(default_factory=lambda: defaultdict(Expectations))
    waiting_for_capacity: set[PoolKey] = field(default_factory=set)
    # (namespace, template) -> pools using it, kept by the pools' own reconciles.
    pools_of_template: dict[PoolKey, set[str]] = field(default_factory=lambda: defaultdict(set))
    # Migration plans by UID: their wake-up triggers, namespaces (while they run), last written status,
    # and the migrations they started that the watch has not shown yet (VM -> (attempt, when)).
    plan_triggers: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    running_plans: dict[str, str] = field(default_factory=dict)
    plan_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan_starts: dict[str, dict[str, tuple[int, float]]] = field(default_factory=lambda: defaultdict(dict))
    plan_failures_seen: dict[str, dict[str, datetime]] = field(default_factory=lambda: defaultdict(dict))
    plan_refusals: dict[str, dict[str, Refusal]] = field(default_factory=lambda: defaultdict(dict))
    plan_status_written: dict[str, float] = field(default_factory=dict)  # monotonic time of the last write
    # What finished plan migrations and cold moves last showed (target start-up, cold downtime): kept when
    # the objects they came from go with their plans.
    learned: dict[str, float] = field(default_factory=dict)
    # The VMs, VMIs and pods, from the operator's own informers (started with the operator; see kube.informer).
    vms: Informer | None = None
    vmis: Informer | None = None
    pods: Informer | None = None  # pods that are not virt-launchers

    async def vm_index(self, name: str) -> FactIndex[Any]:
        """One of the VM informer's indexes ("pool_members", "cold_moves") once its first list is filed: a
        pool reconciled before would count none of its VMs."""
        return await self._index(self.vms, name)

    async def placements(self) -> list[Any]:
        """Every VMI's footprint (core.capacity.Placed), once the VMI informer's first list is filed."""
        return list((await self._index(self.vmis, "placements")).get(None, ()))

    async def other_pods(self) -> Mapping[str, list[tuple[int, int]]]:
        """Node -> requests of its pods that are not VMs, once the pod informer's first list is filed."""
        return cast(Mapping[str, list[tuple[int, int]]], await self._index(self.pods, "other_pods"))

    @staticmethod
    async def _index(informer: Informer | None, name: str) -> FactIndex[Any]:
        if informer is None:
            raise RuntimeError(f"the informer for {name} was not started")
        await informer.synced.wait()
        return informer.indexes[name]

    def learn(self, what: str, observed_s: float | None) -> float | None:
        """The figure to estimate with: what finished work shows now, else what it last showed (None before
        any has finished since the operator started)."""
        if observed_s is not None:
            self.learned[what] = observed_s
        return self.learned.get(what)

    def wake(self, key: PoolKey) -> None:
        self.triggers[key].set()

    def wake_capacity_waiters(self) -> None:
        for key in list(self.waiting_for_capacity):
            self.wake(key)

    def wake_template(self, template: PoolKey) -> None:
        for pool in list(self.pools_of_template.get(template, ())):
            self.wake((template[0], pool))

    def use_template(self, pool: PoolKey, template: str) -> None:
        for (namespace, name), users in self.pools_of_template.items():
            if namespace == pool[0] and name != template:
                users.discard(pool[1])
        self.pools_of_template[(pool[0], template)].add(pool[1])

    def forget(self, key: PoolKey) -> None:
        self.triggers.pop(key, None)
        self.expectations.pop(key, None)
        self.waiting_for_capacity.discard(key)
        for (namespace, _), users in self.pools_of_template.items():
            if namespace == key[0]:
                users.discard(key[1])

    def wake_plan(self, uid: str) -> None:
        self.plan_triggers[uid].set()

    def wake_running_plans(self, namespace: str | None = None) -> None:
        for uid, plan_namespace in list(self.running_plans.items()):
            if namespace is None or namespace == plan_namespace:
                self.wake_plan(uid)

    def expect_start(self, uid: str, vm: str, attempt: int) -> None:
        self.plan_starts[uid][vm] = (attempt, self.clock())

    def plan_expectations(
        self, uid: str, attempts: Mapping[str, Sequence[Attempt]], cold: Mapping[str, ColdMove]
    ) -> dict[str, int]:
        """Starts not yet visible in the watch, dropping those that are (or that never will be)."""
        starts = self.plan_starts.get(uid, {})
        now = self.clock()
        for vm, (attempt, at) in list(starts.items()):
            seen = max([a.number for a in attempts.get(vm, ())] + [cold[vm].attempt if vm in cold else 0])
            if seen >= attempt or now - at > EXPECTATION_TTL:
                del starts[vm]
        return {vm: attempt for vm, (attempt, _) in starts.items()}

    def expectations_lapse_in(self, uid: str) -> float | None:
        """Seconds until the oldest start still unseen is assumed lost: the plan must look again then,
        even if no event comes (None: nothing awaited)."""
        starts = self.plan_starts.get(uid)
        if not starts:
            return None
        oldest = min(at for _, at in starts.values())
        return max(0.0, oldest + EXPECTATION_TTL - self.clock())

    def refuse_start(self, uid: str, vm: str, attempt: int, error: str, now: datetime) -> None:
        """The API refused this start: it will never show in the watch, and it counts as a failed attempt."""
        self.plan_starts.get(uid, {}).pop(vm, None)
        earlier = self.plan_refusals[uid].get(vm)
        self.plan_refusals[uid][vm] = Refusal(attempt, (earlier.count if earlier else 0) + 1, error, now)

    def failures_seen(self, uid: str, failed: list[str], now: datetime) -> dict[str, datetime]:
        """When each failed migration was first seen (a restart sees them all anew: one longer backoff)."""
        seen = self.plan_failures_seen[uid]
        for name in failed:
            seen.setdefault(name, now)
        return dict(seen)

    def forget_plan(self, uid: str) -> None:
        for table in (self.plan_triggers, self.running_plans, self.plan_status, self.plan_starts,
                      self.plan_failures_seen, self.plan_refusals, self.plan_status_written):  # fmt: skip
            table.pop(uid, None)

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    @staticmethod
    def now() -> datetime:
        """The wall clock, for timestamps the API shows; the pure core is handed it, never reads it."""
        return datetime.now(UTC)
