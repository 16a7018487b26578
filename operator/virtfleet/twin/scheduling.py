"""Placing virt-launcher pods on nodes the way kube-scheduler would (pure, no I/O).

Filters, in kube-scheduler's terms: NodeReady, NodeUnschedulable (cordon), TaintToleration (NoSchedule,
NoExecute), NodeAffinity (nodeSelector and required node affinity, plus KubeVirt's cpumanager selector for
dedicated CPUs), NodeResourcesFit (cpu, memory, hugepages against allocatable minus what is placed),
InterPodAffinity (required affinity and anti-affinity), PodTopologySpread (DoNotSchedule constraints), and
the static CPU manager / topology manager for pinned CPUs (single-numa-node for NUMA passthrough).
Scoring: LeastAllocated (the most free cpu and memory, on average) then the node name, so runs repeat.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from virtfleet.api.labels import CPUMANAGER_LABEL, NUMA_ANNOTATION, matches
from virtfleet.api.quantity import parse_bytes, parse_millicores
from virtfleet.core.cpulist import parse_cpu_list
from virtfleet.core.kubevirt import LauncherRequests
from virtfleet.twin.fleet import BANDWIDTH_ANNOTATION

JSON = dict[str, Any]


@dataclass
class Cell:
    id: int
    cpus: list[int]
    hugepages_2mi: int
    hugepages_1gi: int


@dataclass
class NodeInfo:
    name: str
    labels: dict[str, str]
    taints: list[JSON]
    unschedulable: bool
    ready: bool
    cpu_millis: int
    memory: int
    hugepages_2mi: int
    hugepages_1gi: int
    cells: list[Cell]
    bandwidth: int | None = None

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeInfo:
        meta = node.get("metadata", {})
        spec = node.get("spec", {})
        status = node.get("status", {})
        allocatable = status.get("allocatable", {})
        annotations = meta.get("annotations") or {}
        cells: list[Cell] = []
        if NUMA_ANNOTATION in annotations:
            for raw in json.loads(annotations[NUMA_ANNOTATION]).get("cells", []):
                cells.append(
                    Cell(
                        id=int(raw["id"]),
                        cpus=parse_cpu_list(raw["cpus"]),
                        hugepages_2mi=parse_bytes(str(raw.get("hugepages2Mi", "0"))),
                        hugepages_1gi=parse_bytes(str(raw.get("hugepages1Gi", "0"))),
                    )
                )
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
        )
        bandwidth = annotations.get(BANDWIDTH_ANNOTATION)
        return cls(
            name=meta["name"],
            labels=dict(meta.get("labels") or {}),
            taints=list(spec.get("taints") or []),
            unschedulable=bool(spec.get("unschedulable")),
            ready=ready,
            cpu_millis=parse_millicores(str(allocatable.get("cpu", "0"))),
            memory=parse_bytes(str(allocatable.get("memory", "0"))),
            hugepages_2mi=parse_bytes(str(allocatable.get("hugepages-2Mi", "0"))),
            hugepages_1gi=parse_bytes(str(allocatable.get("hugepages-1Gi", "0"))),
            cells=cells,
            bandwidth=parse_bytes(bandwidth) if bandwidth else None,
        )


@dataclass(frozen=True)
class PodView:
    """What the scheduler needs to know of a virt-launcher pod."""

    key: str  # unique, e.g. "ns/vmi" or "ns/vmi@target"
    namespace: str
    labels: Mapping[str, str]
    requests: LauncherRequests
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity: Mapping[str, Any] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    spread: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_vmi(
        cls,
        key: str,
        namespace: str,
        labels: Mapping[str, str],
        spec: Mapping[str, Any],
        requests: LauncherRequests,
        added_node_selector: Mapping[str, str] | None = None,
    ) -> PodView:
        selector = dict(spec.get("nodeSelector") or {})
        selector.update(added_node_selector or {})
        if requests.dedicated:
            selector[CPUMANAGER_LABEL] = "true"  # as KubeVirt renders dedicated-CPU pods
        return cls(
            key=key,
            namespace=namespace,
            labels=dict(labels),
            requests=requests,
            node_selector=selector,
            affinity=dict(spec.get("affinity") or {}),
            tolerations=tuple(spec.get("tolerations") or ()),
            spread=tuple(spec.get("topologySpreadConstraints") or ()),
        )


@dataclass
class Placement:
    pod: PodView
    node: str
    cpuset: tuple[int, ...] = ()
    cell: int | None = None


@dataclass
class Decision:
    node: str | None
    reason: str = ""
    cpuset: tuple[int, ...] = ()
    cell: int | None = None


@dataclass
class _Usage:
    cpu_millis: int = 0
    memory: int = 0
    hugepages_2mi: int = 0
    hugepages_1gi: int = 0
    pinned: set[int] = field(default_factory=set)
    cell_hugepages: Counter[tuple[int, str]] = field(default_factory=Counter)
    pods: dict[str, Placement] = field(default_factory=dict)


class ClusterState:
    """Nodes and what is placed on them: the scheduler's cache, including assumed placements."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.placements: dict[str, Placement] = {}
        self._usage: dict[str, _Usage] = defaultdict(_Usage)

    # -- bookkeeping ---------------------------------------------------------------------------------

    def set_node(self, node: NodeInfo) -> None:
        self.nodes[node.name] = node

    def remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)

    def place(self, placement: Placement) -> None:
        self.remove(placement.pod.key)
        self.placements[placement.pod.key] = placement
        usage = self._usage[placement.node]
        requests = placement.pod.requests
        usage.cpu_millis += requests.pod_cpu_millis
        usage.memory += requests.pod_memory_bytes
        usage.hugepages_2mi += requests.hugepages_2mi_bytes
        usage.hugepages_1gi += requests.hugepages_1gi_bytes
        usage.pinned.update(placement.cpuset)
        if placement.cell is not None:
            usage.cell_hugepages[(placement.cell, "2Mi")] += requests.hugepages_2mi_bytes
            usage.cell_hugepages[(placement.cell, "1Gi")] += requests.hugepages_1gi_bytes
        usage.pods[placement.pod.key] = placement

    def remove(self, key: str) -> Placement | None:
        placement = self.placements.pop(key, None)
        if placement is None:
            return None
        usage = self._usage[placement.node]
        requests = placement.pod.requests
        usage.cpu_millis -= requests.pod_cpu_millis
        usage.memory -= requests.pod_memory_bytes
        usage.hugepages_2mi -= requests.hugepages_2mi_bytes
        usage.hugepages_1gi -= requests.hugepages_1gi_bytes
        usage.pinned.difference_update(placement.cpuset)
        if placement.cell is not None:
            usage.cell_hugepages[(placement.cell, "2Mi")] -= requests.hugepages_2mi_bytes
            usage.cell_hugepages[(placement.cell, "1Gi")] -= requests.hugepages_1gi_bytes
        usage.pods.pop(key, None)
        return placement

    def used(self, node: str) -> tuple[int, int]:
        usage = self._usage[node]
        return usage.cpu_millis, usage.memory

    def pods_on(self, node: str) -> list[Placement]:
        return list(self._usage[node].pods.values())

    # -- scheduling ----------------------------------------------------------------------------------

    def schedule(self, pod: PodView, exclude: Iterable[str] = ()) -> Decision:
        excluded = set(exclude)
        failures: Counter[str] = Counter()
        candidates: list[tuple[float, str, tuple[int, ...], int | None]] = []
        selectable = [n for n in self.nodes.values() if n.name not in excluded]
        spread_counts = self._spread_counts(pod, selectable)
        for node in selectable:
            reason = self._filter(pod, node, spread_counts)
            if reason:
                failures[reason] += 1
                continue
            pinning = self._pin(pod, node)
            if pinning is None:
                failures["Insufficient free NUMA-aligned pinned cpus"] += 1
                continue
            cpuset, cell = pinning
            candidates.append((self._score(pod, node), node.name, cpuset, cell))
        if not candidates:
            total = len(self.nodes)
            details = ", ".join(f"{count} {why}" for why, count in sorted(failures.items()))
            if excluded:
                details += (", " if details else "") + f"{len(excluded & set(self.nodes))} node(s) excluded"
            return Decision(None, f"0/{total} nodes are available: {details or 'no nodes'}.")
        candidates.sort(key=lambda c: (-c[0], c[1]))
        _, name, cpuset, cell = candidates[0]
        return Decision(name, cpuset=cpuset, cell=cell)

    def _filter(self, pod: PodView, node: NodeInfo, spread_counts: list[dict[str, int]]) -> str:
        if not node.ready:
            return "node(s) were not ready"
        if node.unschedulable:
            return "node(s) were unschedulable"
        for taint in node.taints:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(taint, pod.tolerations):
                return "node(s) had untolerated taint(s)"
        if not _matches_node(pod, node):
            return "node(s) didn't match Pod's node affinity/selector"
        usage = self._usage[node.name]
        requests = pod.requests
        if usage.cpu_millis + requests.pod_cpu_millis > node.cpu_millis:
            return "Insufficient cpu"
        if usage.memory + requests.pod_memory_bytes > node.memory:
            return "Insufficient memory"
        if usage.hugepages_2mi + requests.hugepages_2mi_bytes > node.hugepages_2mi:
            return "Insufficient hugepages-2Mi"
        if usage.hugepages_1gi + requests.hugepages_1gi_bytes > node.hugepages_1gi:
            return "Insufficient hugepages-1Gi"
        reason = self._inter_pod(pod, node)
        if reason:
            return reason
        for constraint, counts in zip(pod.spread, spread_counts, strict=True):
            if constraint.get("whenUnsatisfiable", "DoNotSchedule") != "DoNotSchedule":
                continue
            domain = node.labels.get(constraint.get("topologyKey", ""))
            if domain is None or not counts:
                return "node(s) didn't match pod topology spread constraints (missing required label)"
            skew = counts.get(domain, 0) + 1 - min(counts.values())
            if skew > int(constraint.get("maxSkew", 1)):
                return "node(s) didn't match pod topology spread constraints"
        return ""

    def _pin(self, pod: PodView, node: NodeInfo) -> tuple[tuple[int, ...], int | None] | None:
        requests = pod.requests
        if not requests.dedicated:
            return (), None
        usage = self._usage[node.name]
        cells = node.cells or [Cell(0, list(range(node.cpu_millis // 1000)), 0, 0)]
        free_by_cell = [(cell, [c for c in cell.cpus if c not in usage.pinned]) for cell in cells]
        if requests.numa_passthrough:
            # Topology manager single-numa-node: cores and hugepages from one cell.
            for cell, free in sorted(free_by_cell, key=lambda item: (len(item[1]), item[0].id)):
                huge_ok = (
                    usage.cell_hugepages[(cell.id, "1Gi")] + requests.hugepages_1gi_bytes
                    <= cell.hugepages_1gi
                    and usage.cell_hugepages[(cell.id, "2Mi")] + requests.hugepages_2mi_bytes
                    <= cell.hugepages_2mi
                )
                if len(free) >= requests.dedicated_cores and huge_ok:
                    return tuple(free[: requests.dedicated_cores]), cell.id
            return None
        # Static CPU manager: prefer one cell (best fit), else spill over in cell order.
        fitting = [item for item in free_by_cell if len(item[1]) >= requests.dedicated_cores]
        if fitting:
            cell, free = min(fitting, key=lambda item: (len(item[1]), item[0].id))
            return tuple(free[: requests.dedicated_cores]), None
        spilled = [c for _, free in free_by_cell for c in free]
        if len(spilled) < requests.dedicated_cores:
            return None
        return tuple(spilled[: requests.dedicated_cores]), None

    def _score(self, pod: PodView, node: NodeInfo) -> float:
        usage = self._usage[node.name]
        cpu_free = (node.cpu_millis - usage.cpu_millis - pod.requests.pod_cpu_millis) / max(
            node.cpu_millis, 1
        )
        memory_free = (node.memory - usage.memory - pod.requests.pod_memory_bytes) / max(node.memory, 1)
        return (cpu_free + memory_free) / 2

    def _inter_pod(self, pod: PodView, node: NodeInfo) -> str:
        affinity = pod.affinity
        for term in _required(affinity.get("podAntiAffinity")):
            if self._domain_has_match(pod, node, term):
                return "node(s) didn't satisfy existing pods anti-affinity rules"
        for term in _required(affinity.get("podAffinity")):
            if not self._domain_has_match(pod, node, term):
                anywhere = any(self._pod_matches_term(p.pod, pod, term) for p in self.placements.values())
                if anywhere or not _selector_matches(term.get("labelSelector"), pod.labels):
                    return "node(s) didn't match pod affinity rules"
        return ""

    def _domain_has_match(self, pod: PodView, node: NodeInfo, term: Mapping[str, Any]) -> bool:
        key = term.get("topologyKey", "")
        domain = node.labels.get(key)
        if domain is None:
            return False
        for other in self.nodes.values():
            if other.labels.get(key) != domain:
                continue
            for placed in self._usage[other.name].pods.values():
                if placed.pod.key != pod.key and self._pod_matches_term(placed.pod, pod, term):
                    return True
        return False

    @staticmethod
    def _pod_matches_term(other: PodView, pod: PodView, term: Mapping[str, Any]) -> bool:
        namespaces = term.get("namespaces") or [pod.namespace]
        return other.namespace in namespaces and _selector_matches(term.get("labelSelector"), other.labels)

    def _spread_counts(self, pod: PodView, nodes: list[NodeInfo]) -> list[dict[str, int]]:
        result = []
        for constraint in pod.spread:
            key = constraint.get("topologyKey", "")
            counts: dict[str, int] = {}
            for node in nodes:
                # Domains count only nodes the pod could go to by selector and affinity (as upstream).
                if key not in node.labels or not _matches_node(pod, node):
                    continue
                domain = node.labels[key]
                counts.setdefault(domain, 0)
                for placed in self._usage[node.name].pods.values():
                    if (
                        placed.pod.key != pod.key
                        and placed.pod.namespace == pod.namespace
                        and _selector_matches(constraint.get("labelSelector"), placed.pod.labels)
                    ):
                        counts[domain] += 1
            result.append(counts)
        return result


def _required(section: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return list((section or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or [])


def _tolerated(taint: Mapping[str, Any], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator", "Equal")
        key = toleration.get("key")
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if (
            operator == "Equal"
            and key == taint.get("key")
            and toleration.get("value", "") == taint.get("value", "")
        ):
            return True
    return False


def _matches_node(pod: PodView, node: NodeInfo) -> bool:
    if not matches(node.labels, pod.node_selector):
        return False
    required = (pod.affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    terms = required.get("nodeSelectorTerms") or []
    return any(_node_term_matches(term, node) for term in terms)


def _node_term_matches(term: Mapping[str, Any], node: NodeInfo) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches nothing, as in Kubernetes
    ok = all(_expression_matches(e, node.labels) for e in expressions)
    return ok and all(_expression_matches(f, {"metadata.name": node.name}) for f in fields)


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key = expression.get("key", "")
    operator = expression.get("operator")
    values = [str(v) for v in expression.get("values") or []]
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            number, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return False  # a nil selector selects nothing
    if not matches(labels, selector.get("matchLabels")):
        return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])
