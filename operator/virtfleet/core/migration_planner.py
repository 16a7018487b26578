"""Plan many migrations (pure, no I/O): which VMs move, where, in what order, within which limits, and
how long it will take.

Goals: drain given nodes; move selected VMs to nodes matching a selector; rebalance nodes whose effective
CPU or memory ratio exceeds a threshold (DRS-like, fewest moves: the largest VMs of the most loaded node
first). Targets respect capacity and the moving VM's pool ratios (virtfleet.core.capacity), NUMA fit for
pinned VMs, the VM's own nodeSelector, required anti-affinity and topology spread (as the scheduler will
apply them to the migration's target pod), and exclude the sources. VMs that cannot be planned are listed with a reason, never dropped.

Timing: each VM's duration and downtime come from the pre-copy model (virtfleet.core.precopy), the same
one the twin runs. The schedule is simulated as the executor runs it: in order, starting a VM as soon as
the plan's maxParallel, the per-node outbound/inbound limits and the per-pool disruption budget allow.
Simplification: a source whose next VM is blocked (target inbound or pool budget) waits for it
(head-of-line per source) instead of letting later VMs overtake.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from virtfleet.api.labels import DIRTY_RATE_ANNOTATION, POOL_LABEL, PRIORITY_ANNOTATION, matches
from virtfleet.api.migrationplan import MigrationLimits, MigrationPlanSpec
from virtfleet.api.quantity import QuantityError, parse_bytes
from virtfleet.core import precopy
from virtfleet.core.capacity import (
    Capacity,
    NodeFacts,
    Placed,
    VMLoad,
    effective_cpu_ratio,
    effective_memory_ratio,
)
from virtfleet.core.kubevirt import LauncherRequests
from virtfleet.core.kubevirt_api import FULL_KUBEVIRT_API, KubeVirtAPI

Goal = Literal["drain", "move", "rebalance"]
Order = Literal["priority", "smallestFirst", "largestFirst", "waves"]
Method = Literal["live", "cold", "liveWithColdFallback"]
DEFAULT_DIRTY_RATE = 50 * 2**20  # bytes/s a guest dirties when its VMI does not say
# Target pod start-up per migration until the cluster's own migrations say otherwise (plan_executor.
# observed_setup_s); the twin's default, well under what real KubeVirt on kind takes.
DEFAULT_SETUP_S = 2.0
COLD_DOWNTIME_PER_GIB = 2.0  # seconds a cold move keeps a VM down per GiB (stop, re-place, boot)


@dataclass(frozen=True)
class PlanVM:
    key: str  # namespace/name
    pool: str
    node: str
    requests: LauncherRequests
    cpu_ratio: float = 1.0
    memory_ratio: float = 1.0
    live_migratable: bool = True
    priority: int = 0
    dirty_rate_bps: float = DEFAULT_DIRTY_RATE
    # The VMI's own placement rules, which the scheduler enforces on the migration's target pod:
    node_selector: tuple[tuple[str, str], ...] = ()
    anti_affinity: bool = False  # required: no two VMs of its pool on one node
    spread: tuple[str, int] | None = None  # (topologyKey, maxSkew) over its pool's VMs, DoNotSchedule


@dataclass(frozen=True)
class Limits:
    max_parallel: int = 5
    max_outbound_per_node: int = 2
    max_inbound_per_node: int = 2
    pool_budget: int = 1_000_000  # VMs of one pool migrating at once


@dataclass(frozen=True)
class Timing:
    bandwidth_bps: float = 1.25e9
    max_downtime_s: float = 0.3
    allow_post_copy: bool = False
    allow_auto_converge: bool = False
    completion_timeout_per_gib: int = precopy.DEFAULT_COMPLETION_TIMEOUT_PER_GIB
    setup_s: float = DEFAULT_SETUP_S
    cold_downtime_s: float | None = None  # learned from the cluster's cold moves; None: the model below


@dataclass(frozen=True)
class PlanRequest:
    goal: Goal
    vms: Sequence[PlanVM]  # the selection
    nodes: Sequence[NodeFacts]
    placed: Sequence[VMLoad]  # every VMI's footprint, the selection's included
    drain_nodes: frozenset[str] = frozenset()
    target_selector: Mapping[str, str] = field(default_factory=dict)
    cpu_threshold: float = 4.0
    memory_threshold: float = 1.0
    method: Method = "live"
    order: Order = "priority"
    waves: Sequence[Sequence[str]] = ()
    limits: Limits = Limits()
    timing: Timing = Timing()
    # Where each pool's VMs run now (pool -> one node per VM), for anti-affinity and spread on targets.
    pool_nodes: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Move:
    vm: str
    pool: str
    source: str
    target: str
    method: Literal["live", "cold"]
    estimate: precopy.MigrationEstimate
    start_s: float = 0.0
    wave: int = 0

    @property
    def end_s(self) -> float:
        return self.start_s + self.estimate.duration_s


@dataclass
class Plan:
    moves: list[Move] = field(default_factory=list)
    unplaceable: list[tuple[str, str]] = field(default_factory=list)  # (vm, reason)
    setup_s: float = DEFAULT_SETUP_S  # target start-up per migration the estimates assume

    @property
    def makespan_s(self) -> float:
        return max((m.end_s for m in self.moves), default=0.0)

    @property
    def waves(self) -> int:
        return max((m.wave for m in self.moves), default=-1) + 1


def plan_migrations(request: PlanRequest) -> Plan:
    plan = Plan(setup_s=request.timing.setup_s)
    capacity = Capacity(request.nodes, request.placed)
    candidates = _to_move(request, capacity, plan)
    ordered = _ordered(request, candidates, plan)
    targets = _Targets(request, capacity)
    chosen: list[Move] = []
    # Pools share shapes and dirty rates: a fleet of 100,000 VMs has a few dozen distinct estimates.
    estimates: dict[tuple[str, int, float], precopy.MigrationEstimate] = {}
    for vm in ordered:
        method: Literal["live", "cold"] = "live"
        if not vm.live_migratable:
            if request.method == "live":
                plan.unplaceable.append((vm.key, "not live-migratable and the plan's method is live"))
                continue
            method = "cold"
        elif request.method == "cold":
            method = "cold"
        target = targets.pick(vm)
        if target is None:
            plan.unplaceable.append((vm.key, targets.reason(vm)))
            continue
        shape = (method, vm.requests.guest_memory_bytes, vm.dirty_rate_bps)
        if shape not in estimates:
            estimates[shape] = _estimate(vm, method, request.timing)
        chosen.append(Move(vm.key, vm.pool, vm.node, target, method, estimates[shape]))
    wave_of = _wave_index(request, ordered)
    plan.moves = _schedule(chosen, request.limits, wave_of)
    return plan


def _to_move(request: PlanRequest, capacity: Capacity, plan: Plan) -> list[PlanVM]:
    if request.goal == "drain":
        return [vm for vm in request.vms if vm.node in request.drain_nodes]
    if request.goal == "move":
        selector = request.target_selector
        nodes = capacity.nodes
        return [
            vm for vm in request.vms if vm.node not in nodes or not matches(nodes[vm.node].labels, selector)
        ]
    # Rebalance: take the largest VMs off the most loaded node until no node is over a threshold.
    by_node: dict[str, list[PlanVM]] = defaultdict(list)
    for vm in request.vms:
        by_node[vm.node].append(vm)
    chosen: list[PlanVM] = []
    for name, usage in capacity.usage.items():
        node = capacity.nodes[name]
        cpu_over = effective_cpu_ratio(node, usage) - request.cpu_threshold
        memory_over = effective_memory_ratio(node, usage) - request.memory_threshold
        if cpu_over <= 1e-9 and memory_over <= 1e-9:
            continue
        excess_vcpus = max(0.0, cpu_over) * max(node.cores - usage.pinned_cores, 1)
        excess_memory = max(0.0, memory_over) * node.memory
        movable = sorted(
            by_node.get(name, ()), key=lambda v: (-v.requests.vcpus, -v.requests.guest_memory_bytes, v.key)
        )
        for vm in movable:
            if excess_vcpus <= 1e-9 and excess_memory <= 1e-9:
                break
            chosen.append(vm)
            excess_vcpus -= 0 if vm.requests.dedicated else vm.requests.vcpus
            excess_memory -= vm.requests.guest_memory_bytes
        if excess_vcpus > 1e-9 or excess_memory > 1e-9:
            plan.unplaceable.append(
                (f"node/{name}", "not enough selected VMs on it to bring it under the threshold")
            )
    return chosen


def _ordered(request: PlanRequest, vms: list[PlanVM], plan: Plan) -> list[PlanVM]:
    if request.order == "waves":
        position = {name: (w, i) for w, names in enumerate(request.waves) for i, name in enumerate(names)}
        missing = [vm for vm in vms if vm.key not in position]
        for vm in missing:
            plan.unplaceable.append((vm.key, "not listed in any wave"))
        return sorted((vm for vm in vms if vm.key in position), key=lambda v: position[v.key])
    if request.order == "smallestFirst":
        return sorted(vms, key=lambda v: (v.requests.guest_memory_bytes, v.key))
    if request.order == "largestFirst":
        return sorted(vms, key=lambda v: (-v.requests.guest_memory_bytes, v.key))
    return sorted(vms, key=lambda v: (-v.priority, v.key))


def _wave_index(request: PlanRequest, ordered: list[PlanVM]) -> dict[str, int]:
    if request.order == "waves":
        return {name: w for w, names in enumerate(request.waves) for name in names}
    return {}


class _Targets:
    """Target choice: the eligible node with the most free memory that fits the VM within its pool's
    ratios, via a heap with lazy re-insertion so each pick costs O(log nodes) in the common case."""

    def __init__(self, request: PlanRequest, capacity: Capacity) -> None:
        self.capacity = capacity
        self.excluded = set(request.drain_nodes)
        selector = request.target_selector
        self.allowed = {
            n.name
            for n in capacity.nodes.values()
            if n.ready and n.schedulable and not n.tainted and matches(n.labels, selector)
        } - self.excluded
        self.heap = [(-self._free(name), name) for name in self.allowed]
        heapq.heapify(self.heap)
        self.per_node: dict[str, Counter[str]] = defaultdict(Counter)  # pool -> VMs per node
        for pool, where in request.pool_nodes.items():
            self.per_node[pool].update(where)
        self.domain_counts: dict[tuple[str, str, tuple[tuple[str, str], ...]], Counter[str]] = {}

    def _placement_allows(self, vm: PlanVM, name: str) -> bool:
        """The VM's nodeSelector, required anti-affinity and topology spread, as the scheduler applies them
        to the migration's target pod (the source VM still counts while it migrates)."""
        labels = self.capacity.nodes[name].labels
        if any(labels.get(k) != v for k, v in vm.node_selector):
            return False
        counts = self.per_node.get(vm.pool, Counter())
        if vm.anti_affinity and counts[name] > 0:
            return False
        if vm.spread is not None:
            key, max_skew = vm.spread
            if key not in labels:
                return False
            domains = self._domains(vm.pool, key, vm.node_selector)
            if domains[labels[key]] + 1 - min(domains.values()) > max_skew:
                return False
        return True

    def _domains(self, pool: str, key: str, selector: tuple[tuple[str, str], ...]) -> Counter[str]:
        """The pool's VMs per topology domain, over the nodes the VM may run on (kept up to date by _moved)."""
        cache_key = (pool, key, selector)
        if cache_key not in self.domain_counts:
            counts = self.per_node.get(pool, Counter())
            domains: Counter[str] = Counter()
            for node in self.capacity.nodes.values():
                if key in node.labels and all(node.labels.get(k) == v for k, v in selector):
                    domains[node.labels[key]] += counts[node.name]
            self.domain_counts[cache_key] = domains
        return self.domain_counts[cache_key]

    def _moved(self, vm: PlanVM, target: str) -> None:
        counts = self.per_node[vm.pool]
        counts[vm.node] -= 1
        counts[target] += 1
        for (pool, key, selector), domains in self.domain_counts.items():
            if pool != vm.pool:
                continue
            for node, delta in ((vm.node, -1), (target, 1)):
                facts = self.capacity.nodes.get(node)
                if facts and key in facts.labels and all(facts.labels.get(k) == v for k, v in selector):
                    domains[facts.labels[key]] += delta

    def _free(self, name: str) -> float:
        node = self.capacity.nodes[name]
        return (node.memory - self.capacity.usage[name].memory) / max(node.memory, 1)

    def pick(self, vm: PlanVM) -> str | None:
        load = VMLoad(vm.requests)
        skipped: list[tuple[float, str]] = []
        found: str | None = None
        while self.heap:
            score, name = heapq.heappop(self.heap)
            if -score != self._free(name):  # stale entry: refresh it
                heapq.heappush(self.heap, (-self._free(name), name))
                continue
            node = self.capacity.nodes[name]
            if (
                name != vm.node
                and not (vm.requests.dedicated and not node.cpumanager)
                and self._placement_allows(vm, name)
            ):
                cell = self.capacity.fits(node, load, vm.cpu_ratio, vm.memory_ratio)
                if cell is not None:
                    self.capacity.usage[name].add(load, cell if vm.requests.numa_passthrough else None)
                    self._moved(vm, name)
                    found = name
                    skipped.append((-self._free(name), name))
                    break
            skipped.append((score, name))
        for item in skipped:
            heapq.heappush(self.heap, item)
        return found

    def reason(self, vm: PlanVM) -> str:
        if not self.allowed - {vm.node}:
            return "no eligible target node (all excluded, cordoned, NotReady, tainted or not matching)"
        if vm.node_selector or vm.anti_affinity or vm.spread:
            rules = [r for r, on in (("nodeSelector", vm.node_selector), ("anti-affinity", vm.anti_affinity),
                                     ("topology spread", vm.spread)) if on]  # fmt: skip
            room = "or its pool's ratios" if not vm.requests.dedicated else "or free pinned cores"
            return f"no target node satisfies its {', '.join(rules)} with room within its capacity {room}"
        if vm.requests.dedicated:
            return "no cpumanager node has enough free pinned cores (and NUMA cell) within cpuRatio 1"
        return (
            f"no target node has room for {vm.requests.vcpus} vCPUs / {vm.requests.guest_memory_bytes / 2**30:.1f}Gi "
            f"within the pool's ratios (cpu {vm.cpu_ratio:g}, memory {vm.memory_ratio:g})"
        )


def _estimate(vm: PlanVM, method: Literal["live", "cold"], timing: Timing) -> precopy.MigrationEstimate:
    memory = vm.requests.guest_memory_bytes
    if method == "cold":
        down = timing.cold_downtime_s
        if down is None:
            down = timing.setup_s + COLD_DOWNTIME_PER_GIB * memory / precopy.GIB
        return precopy.MigrationEstimate(down, down, 0, 0, "PreCopy", True, copy_started_s=timing.setup_s)
    return precopy.estimate(
        precopy.MigrationInputs(
            memory_bytes=memory,
            dirty_rate_bps=vm.dirty_rate_bps,
            bandwidth_bps=timing.bandwidth_bps,
            max_downtime_s=timing.max_downtime_s,
            allow_post_copy=timing.allow_post_copy,
            allow_auto_converge=timing.allow_auto_converge,
            completion_timeout_per_gib=timing.completion_timeout_per_gib,
            setup_s=timing.setup_s,
        )
    )


def _schedule(moves: list[Move], limits: Limits, wave_of: Mapping[str, int]) -> list[Move]:
    """Simulate the executor: start moves in order as soon as every limit allows."""
    queues: dict[str, deque[tuple[int, Move]]] = defaultdict(deque)
    for index, move in enumerate(moves):
        queues[move.source].append((index, move))
    heads = [(queue[0][0], source) for source, queue in queues.items()]
    heapq.heapify(heads)
    running: list[tuple[float, int, Move]] = []  # (end, index, move)
    outbound: dict[str, int] = defaultdict(int)
    inbound: dict[str, int] = defaultdict(int)
    per_pool: dict[str, int] = defaultdict(int)
    current_wave = min((wave_of.get(m.vm, 0) for m in moves), default=0)
    wave_left: dict[int, int] = defaultdict(int)
    for move in moves:
        wave_left[wave_of.get(move.vm, 0)] += 1
    last_wave = max(wave_left, default=0)
    scheduled: list[Move] = []
    now = 0.0
    start_round = 0
    while heads or running:
        blocked: list[tuple[int, str]] = []
        started_any = False
        while heads and len(running) < limits.max_parallel:
            index, source = heapq.heappop(heads)
            move = queues[source][0][1]
            wave = wave_of.get(move.vm, 0)
            if (
                outbound[source] >= limits.max_outbound_per_node
                or inbound[move.target] >= limits.max_inbound_per_node
                or per_pool[move.pool] >= limits.pool_budget
                or (wave_of and wave != current_wave)
            ):
                blocked.append((index, source))
                continue
            queues[source].popleft()
            if queues[source]:
                heapq.heappush(heads, (queues[source][0][0], source))
            outbound[source] += 1
            inbound[move.target] += 1
            per_pool[move.pool] += 1
            started = Move(move.vm, move.pool, move.source, move.target, move.method, move.estimate, now,
                           wave if wave_of else start_round)  # fmt: skip
            heapq.heappush(running, (started.end_s, index, started))
            started_any = True
        for item in blocked:
            heapq.heappush(heads, item)
        if started_any:
            start_round += 1
        if not running:
            break  # nothing can ever start (a limit of zero): stop rather than spin
        end, _, done = heapq.heappop(running)
        now = end
        outbound[done.source] -= 1
        inbound[done.target] -= 1
        per_pool[done.pool] -= 1
        scheduled.append(done)
        if wave_of:
            wave_left[done.wave] -= 1
            while wave_left.get(current_wave, 0) == 0 and current_wave < last_wave:
                current_wave += 1
    return sorted(scheduled, key=lambda m: (m.start_s, m.vm))


# -- from a MigrationPlan's spec ------------------------------------------------------------------------


def limits_of(limits: MigrationLimits) -> Limits:
    """spec.limits as the planner and the executor both read them (no budget: no limit)."""
    return Limits(
        max_parallel=limits.max_parallel,
        max_outbound_per_node=limits.max_outbound_per_node,
        max_inbound_per_node=limits.max_inbound_per_node,
        pool_budget=limits.pool_disruption_budget or Limits.pool_budget,
    )


def select(
    spec: MigrationPlanSpec, namespace: str, placements: Iterable[Placed], nodes: Mapping[str, NodeFacts]
) -> list[Placed]:
    """The VMs of `namespace` the plan's selection covers, placed on a node."""
    chosen = []
    selection = spec.selection
    for placed in placements:
        vm_namespace, name = placed.key.split("/", 1)
        if vm_namespace != namespace or placed.node is None:
            continue
        labels = dict(placed.labels)
        if selection.pools and labels.get(POOL_LABEL) not in selection.pools:
            continue
        if selection.vms and name not in selection.vms:
            continue
        if not matches(labels, selection.match_labels):
            continue
        if selection.nodes and placed.node not in selection.nodes:
            continue
        chosen.append(placed)
    return chosen


def _plan_vm(placed: Placed, ratios: Mapping[str, tuple[float, float]]) -> PlanVM:
    labels = dict(placed.labels)
    annotations = dict(placed.annotations)
    pool = labels.get(POOL_LABEL, "")
    cpu_ratio, memory_ratio = ratios.get(pool, (1.0, 1.0))
    try:
        dirty = float(parse_bytes(annotations[DIRTY_RATE_ANNOTATION]))
        if not 0 <= dirty < float("inf"):
            dirty = DEFAULT_DIRTY_RATE
    except (KeyError, QuantityError, OverflowError):
        dirty = DEFAULT_DIRTY_RATE
    try:
        priority = int(annotations.get(PRIORITY_ANNOTATION, "0"))
    except ValueError:
        priority = 0
    return PlanVM(
        key=placed.key,
        pool=pool,
        node=placed.node or "",
        requests=placed.requests,
        cpu_ratio=cpu_ratio,
        memory_ratio=memory_ratio,
        live_migratable=placed.live_migratable,
        priority=priority,
        dirty_rate_bps=dirty,
        node_selector=placed.node_selector,
        anti_affinity=placed.anti_affinity,
        spread=placed.spread,
    )


def _pool_nodes(namespace: str, placements: Iterable[Placed]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for placed in placements:
        pool = dict(placed.labels).get(POOL_LABEL)
        if pool and placed.node and placed.key.startswith(f"{namespace}/"):
            where.setdefault(pool, []).append(placed.node)
    return where


def build_plan(
    spec: MigrationPlanSpec,
    namespace: str,
    placements: list[Placed],
    nodes: list[NodeFacts],
    pool_ratios: Mapping[str, tuple[float, float]],
    kubevirt: KubeVirtAPI = FULL_KUBEVIRT_API,
    setup_s: float | None = None,
    cold_downtime_s: float | None = None,
) -> Plan:
    """The request the spec makes of the planner, over what the indexes show, and its plan; timed by the
    downtime limit the cluster's KubeVirt really applies, and the target start-up and cold-move downtime its
    migrations and cold moves showed."""
    node_map = {n.name: n for n in nodes}
    selected = [_plan_vm(p, pool_ratios) for p in select(spec, namespace, placements, node_map)]
    options = spec.migration
    bandwidth = Timing.bandwidth_bps
    if options.bandwidth_per_migration:
        try:
            cap = parse_bytes(options.bandwidth_per_migration)
        except QuantityError:
            cap = 0
        bandwidth = min(bandwidth, cap) if cap > 0 else bandwidth
    request = PlanRequest(
        goal=spec.goal,
        vms=selected,
        nodes=nodes,
        placed=[VMLoad(p.requests, p.node) for p in placements if p.node],
        pool_nodes=_pool_nodes(namespace, placements),
        drain_nodes=frozenset(spec.nodes),
        target_selector=dict(spec.target_selector),
        cpu_threshold=spec.thresholds.cpu_ratio,
        memory_threshold=spec.thresholds.memory_ratio,
        method=spec.method,
        order=spec.order,
        waves=[[f"{namespace}/{name}" for name in wave] for wave in spec.waves],
        limits=limits_of(spec.limits),
        timing=Timing(
            bandwidth_bps=bandwidth,
            max_downtime_s=kubevirt.max_downtime_ms(options.max_downtime_ms) / 1000,
            allow_post_copy=options.allow_post_copy,
            allow_auto_converge=options.allow_auto_converge,
            completion_timeout_per_gib=options.completion_timeout_per_gib,
            setup_s=DEFAULT_SETUP_S if setup_s is None else setup_s,
            cold_downtime_s=cold_downtime_s,
        ),
    )
    return plan_migrations(request)
