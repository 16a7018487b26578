"""Capacity accounting: physical cores and memory, committed vCPUs and guest memory, effective ratios,
and how many more VMs of a pool fit without pushing any node past the pool's ratios (pure).

Definitions (docs/oversubscription.md):
- physical cores of a node = its allocatable CPUs;
- committed vCPUs = vCPUs of the VMs placed there (shared and dedicated);
- effective CPU ratio = committed shared vCPUs / (physical cores - pinned cores);
- effective memory ratio = committed guest memory / allocatable memory (hugepage-backed guests count
  against the node's hugepages instead).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from virtfleet.api.labels import CPUMANAGER_LABEL, NUMA_ANNOTATION, matches
from virtfleet.api.quantity import QuantityError, parse_bytes, parse_millicores
from virtfleet.core.cpulist import parse_cpu_list
from virtfleet.core.kubevirt import LauncherRequests


@dataclass(frozen=True)
class Cell:
    cpus: int
    hugepages_1gi: int = 0
    hugepages_2mi: int = 0


@dataclass(frozen=True)
class NodeFacts:
    name: str
    labels: Mapping[str, str]
    cpu_millis: int
    memory: int
    hugepages_1gi: int = 0
    hugepages_2mi: int = 0
    ready: bool = True
    schedulable: bool = True
    cells: tuple[Cell, ...] = ()
    tainted: bool = False  # a NoSchedule/NoExecute taint: pool VMs carry no tolerations
    # Requests of the node's pods that are not VMs (DaemonSets such as virt-handler, the CNI, operators):
    # the scheduler counts them against allocatable, so a VM counted as fitting must leave room for them.
    other_cpu_millis: int = 0
    other_memory: int = 0

    @property
    def cores(self) -> int:
        return self.cpu_millis // 1000

    @property
    def cpumanager(self) -> bool:
        return self.labels.get(CPUMANAGER_LABEL) == "true"

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeFacts:
        meta = node.get("metadata") or {}
        status = node.get("status") or {}
        allocatable = status.get("allocatable") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        cells: tuple[Cell, ...] = ()
        raw = (meta.get("annotations") or {}).get(NUMA_ANNOTATION)
        if raw:
            try:
                cells = tuple(
                    Cell(
                        cpus=len(parse_cpu_list(str(c["cpus"]))),
                        hugepages_1gi=parse_bytes(str(c.get("hugepages1Gi", "0"))),
                        hugepages_2mi=parse_bytes(str(c.get("hugepages2Mi", "0"))),
                    )
                    for c in json.loads(raw).get("cells", [])
                )
            except (ValueError, KeyError, QuantityError, TypeError):
                cells = ()  # a malformed annotation means "unknown topology": one cell
        return cls(
            name=str(meta.get("name", "")),
            labels=dict(meta.get("labels") or {}),
            cpu_millis=parse_millicores(str(allocatable.get("cpu", "0"))),
            memory=parse_bytes(str(allocatable.get("memory", "0"))),
            hugepages_1gi=parse_bytes(str(allocatable.get("hugepages-1Gi", "0"))),
            hugepages_2mi=parse_bytes(str(allocatable.get("hugepages-2Mi", "0"))),
            ready=ready,
            schedulable=not (node.get("spec") or {}).get("unschedulable"),
            cells=cells,
            tainted=any(
                t.get("effect") in ("NoSchedule", "NoExecute")
                for t in (node.get("spec") or {}).get("taints") or []
            ),
        )


def with_other_pods(
    nodes: Iterable[NodeFacts], other_pods: Mapping[str, Iterable[tuple[int, int]]]
) -> list[NodeFacts]:
    """The nodes with the (cpu millicores, memory bytes) requests of their non-VM pods added up."""
    result = []
    for node in nodes:
        pods = list(other_pods.get(node.name, ()))
        if pods:
            node = replace(
                node,
                other_cpu_millis=sum(cpu for cpu, _ in pods),
                other_memory=sum(memory for _, memory in pods),
            )
        result.append(node)
    return result


@dataclass(frozen=True)
class VMLoad:
    """One VM's demand: what it requests and what it commits."""

    requests: LauncherRequests
    node: str | None = None  # None: not placed yet

    @property
    def shared_vcpus(self) -> int:
        return 0 if self.requests.dedicated else self.requests.vcpus

    @property
    def guest_memory(self) -> int:
        huge = self.requests.hugepages_1gi_bytes or self.requests.hugepages_2mi_bytes
        return 0 if huge else self.requests.guest_memory_bytes


@dataclass(frozen=True)
class Placed:
    """A VMI's footprint: where it runs (None: not yet) and what it requests, plus what a migration plan
    needs to know of it."""

    key: str
    node: str | None
    requests: LauncherRequests
    labels: tuple[tuple[str, str], ...] = ()
    live_migratable: bool = True
    annotations: tuple[tuple[str, str], ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    anti_affinity: bool = False  # a required pod anti-affinity on the hostname
    spread: tuple[str, int] | None = None  # the first DoNotSchedule topology spread: (key, maxSkew)
    running: bool = False  # status.phase Running (a placed VMI may still be Scheduled, booting)


@dataclass
class NodeUsage:
    cpu_millis: int = 0
    memory: int = 0
    hugepages_1gi: int = 0
    hugepages_2mi: int = 0
    shared_vcpus: int = 0
    pinned_cores: int = 0
    guest_memory: int = 0
    vcpus: int = 0
    cell_cores: list[int] = field(default_factory=list)
    cell_huge_1gi: list[int] = field(default_factory=list)
    cell_huge_2mi: list[int] = field(default_factory=list)

    def add(self, load: VMLoad, cell: int | None = None) -> None:
        r = load.requests
        self.cpu_millis += r.pod_cpu_millis
        self.memory += r.pod_memory_bytes
        self.hugepages_1gi += r.hugepages_1gi_bytes
        self.hugepages_2mi += r.hugepages_2mi_bytes
        self.shared_vcpus += load.shared_vcpus
        self.pinned_cores += r.dedicated_cores
        self.guest_memory += load.guest_memory
        self.vcpus += r.vcpus
        if cell is not None:
            self.cell_cores[cell] += r.dedicated_cores
            self.cell_huge_1gi[cell] += r.hugepages_1gi_bytes
            self.cell_huge_2mi[cell] += r.hugepages_2mi_bytes


def effective_cpu_ratio(node: NodeFacts, usage: NodeUsage) -> float:
    shared_cores = node.cores - usage.pinned_cores
    return (
        usage.shared_vcpus / shared_cores
        if shared_cores > 0
        else (float("inf") if usage.shared_vcpus else 0.0)
    )


def effective_memory_ratio(node: NodeFacts, usage: NodeUsage) -> float:
    return usage.guest_memory / node.memory if node.memory > 0 else 0.0


class Capacity:
    """Usage of a set of nodes, and a greedy fit for new VMs."""

    def __init__(self, nodes: Iterable[NodeFacts], placed: Iterable[VMLoad]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.usage: dict[str, NodeUsage] = {}
        for node in self.nodes.values():
            cells = len(node.cells) or 1
            self.usage[node.name] = NodeUsage(
                cpu_millis=node.other_cpu_millis,
                memory=node.other_memory,
                cell_cores=[0] * cells,
                cell_huge_1gi=[0] * cells,
                cell_huge_2mi=[0] * cells,
            )
        for load in placed:
            if load.node in self.usage:
                self.usage[load.node].add(load)

    def eligible(
        self, node_selector: Mapping[str, str], dedicated: bool, required_keys: Iterable[str] = ()
    ) -> list[NodeFacts]:
        """Nodes the scheduler may place the VM on. `required_keys`: topology keys of DoNotSchedule spread
        constraints; kube-scheduler filters out nodes without them ("missing required label")."""
        keys = tuple(required_keys)
        nodes = []
        for node in self.nodes.values():
            if not (node.ready and node.schedulable) or node.tainted:
                continue
            if not matches(node.labels, node_selector) or any(k not in node.labels for k in keys):
                continue
            if dedicated and not node.cpumanager:
                continue
            nodes.append(node)
        return sorted(nodes, key=lambda n: n.name)

    def fits(self, node: NodeFacts, load: VMLoad, cpu_ratio: float, memory_ratio: float) -> int | None:
        """The NUMA cell index (0 when cells do not matter) if `load` fits `node` within the ratios."""
        usage = self.usage[node.name]
        r = load.requests
        if (
            usage.cpu_millis + r.pod_cpu_millis > node.cpu_millis
            or usage.memory + r.pod_memory_bytes > node.memory
        ):
            return None
        if usage.hugepages_1gi + r.hugepages_1gi_bytes > node.hugepages_1gi:
            return None
        if usage.hugepages_2mi + r.hugepages_2mi_bytes > node.hugepages_2mi:
            return None
        shared_cores = node.cores - usage.pinned_cores - r.dedicated_cores
        if r.dedicated and shared_cores < 0:
            return None
        if usage.shared_vcpus + load.shared_vcpus > cpu_ratio * max(shared_cores, 0) + 1e-9:
            return None
        if usage.guest_memory + load.guest_memory > memory_ratio * node.memory + 1e-9:
            return None
        if not r.numa_passthrough:
            return 0
        cells = node.cells or (Cell(node.cores, node.hugepages_1gi, node.hugepages_2mi),)
        for index, cell in enumerate(cells):
            if (
                usage.cell_cores[index] + r.dedicated_cores <= cell.cpus
                and usage.cell_huge_1gi[index] + r.hugepages_1gi_bytes <= cell.hugepages_1gi
                and usage.cell_huge_2mi[index] + r.hugepages_2mi_bytes <= cell.hugepages_2mi
            ):
                return index
        return None

    def fill(
        self, load: VMLoad, nodes: list[NodeFacts], cpu_ratio: float, memory_ratio: float, limit: int
    ) -> int:
        """Add copies of `load` to `nodes` until `limit` are placed or none fits; return how many.

        Copies are identical and nodes independent, so each node takes copies until the next does not fit
        (usage only grows, so that one never fits later), node by node: the count is the same as trying
        every node for every copy, in time linear in nodes plus copies instead of their product."""
        placed = 0
        for node in nodes:
            while placed < limit:
                cell = self.fits(node, load, cpu_ratio, memory_ratio)
                if cell is None:
                    break
                self.usage[node.name].add(load, cell if load.requests.numa_passthrough else None)
                placed += 1
        return placed


@dataclass(frozen=True)
class PoolCapacity:
    creatable: int
    eligible_nodes: int
    committed_vcpus: int
    physical_cores: int
    committed_memory: int
    physical_memory: int
    message: str

    @property
    def effective_cpu_ratio(self) -> float:
        return round(self.committed_vcpus / self.physical_cores, 3) if self.physical_cores else 0.0

    @property
    def effective_memory_ratio(self) -> float:
        return round(self.committed_memory / self.physical_memory, 3) if self.physical_memory else 0.0


def plan_capacity(
    nodes: Iterable[NodeFacts],
    placed: Iterable[VMLoad],
    unplaced: int,
    wanted: int,
    per_vm: LauncherRequests,
    node_selector: Mapping[str, str],
    cpu_ratio: float,
    memory_ratio: float,
    spread_keys: Sequence[str] = (),
) -> PoolCapacity:
    """How many of `wanted` new VMs can be created after the pool's `unplaced` ones (created, not yet
    scheduled) are accounted for, keeping every eligible node within the pool's ratios."""
    capacity = Capacity(nodes, placed)
    eligible = capacity.eligible(node_selector, per_vm.dedicated, spread_keys)
    # Report the eligible nodes as they stand, before the hypothetical VMs below are placed.
    committed_vcpus = sum(capacity.usage[n.name].vcpus for n in eligible)
    cores = sum(n.cores for n in eligible)
    committed_memory = sum(capacity.usage[n.name].guest_memory for n in eligible)
    memory = sum(n.memory for n in eligible)
    load = VMLoad(per_vm)
    capacity.fill(load, eligible, cpu_ratio, memory_ratio, unplaced)
    creatable = capacity.fill(load, eligible, cpu_ratio, memory_ratio, wanted)
    message = ""
    if creatable < wanted:
        message = (
            f"{wanted - creatable} of {wanted} new VMs do not fit: each needs {per_vm.vcpus} vCPUs and "
            f"{_gib(per_vm.guest_memory_bytes)} guest memory ({per_vm.pod_cpu_millis}m CPU, "
            f"{_gib(per_vm.pod_memory_bytes)} memory requested); {len(eligible)} eligible node(s) commit "
            f"{committed_vcpus} vCPUs on {cores} cores and {_gib(committed_memory)} of {_gib(memory)} "
            f"at cpuRatio {cpu_ratio:g}, memoryRatio {memory_ratio:g}"
        )
        if spread_keys:
            message += f" (nodes need label(s) {', '.join(spread_keys)} for the pool's topology spread)"
    return PoolCapacity(
        creatable=creatable,
        eligible_nodes=len(eligible),
        committed_vcpus=committed_vcpus,
        physical_cores=cores,
        committed_memory=committed_memory,
        physical_memory=memory,
        message=message,
    )


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f}Gi"
