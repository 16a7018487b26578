"""Prometheus metrics of the operator (prometheus-client). Labels stay low-cardinality: per pool, plan,
template and node at most, never per VM.

Most series are set by reconciles. Per-node figures (committed vCPUs, effective ratios) and template
revisions are computed at scrape time from the operator's in-memory indexes by FleetCollector: nothing
polls, and a scrape always sees the current fleet."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from virtfleet.api.migrationplan import VMPhase
from virtfleet.core import plan_executor
from virtfleet.core.capacity import Capacity, NodeFacts, VMLoad, effective_cpu_ratio, effective_memory_ratio

# `*_created` series double the exposition for no use on dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]

POOL_REPLICAS = Gauge("virtfleet_pool_replicas", "VMs of a pool by state.", ["namespace", "pool", "state"])
POOL_CPU_RATIO = Gauge(
    "virtfleet_pool_cpu_ratio", "CPU oversubscription of a pool: configured, or effective on its nodes.",
    ["namespace", "pool", "kind"],
)  # fmt: skip
POOL_MEMORY_RATIO = Gauge(
    "virtfleet_pool_memory_ratio", "Memory oversubscription of a pool: configured, or effective on its nodes.",
    ["namespace", "pool", "kind"],
)  # fmt: skip
POOL_PENDING = Gauge(
    "virtfleet_pool_pending_replicas",
    "VMs of a pool not running yet, by reason: capacity (not created: no room within the ratios),"
    " starting (created, not ready).",
    ["namespace", "pool", "reason"],
)
POOL_CONDITION = Gauge(
    "virtfleet_pool_condition",
    "1 while the pool's condition is True, else 0.",
    ["namespace", "pool", "condition"],
)
API_REQUESTS = Counter(
    "virtfleet_kubernetes_api_requests_total",
    "Requests virtfleet's own client made to the Kubernetes API, by verb and HTTP code (kopf's watches"
    " and patches are not included).",
    ["verb", "code"],
)
KUBEVIRT_INFO = Gauge(
    "virtfleet_kubevirt_info",
    "1 for the KubeVirt the operator talks to: its observed version (empty if unreadable) and whether its"
    " MigrationPolicy serves maxDowntimeMs.",
    ["version", "max_downtime_ms"],
)
RECONCILES = Counter("virtfleet_reconcile_total", "Reconciles by kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "virtfleet_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip


PLAN_VMS = Gauge(
    "virtfleet_migration_plan_vms", "VMs of a migration plan by phase.", ["namespace", "plan", "phase"]
)
PLAN_MAKESPAN = Gauge(
    "virtfleet_migration_plan_makespan_seconds",
    "A migration plan's duration: the model's estimate, and the actual once it ended.",
    ["namespace", "plan", "kind"],
)
_DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
_DOWNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MIGRATION_SECONDS = Histogram(
    "virtfleet_migration_duration_seconds",
    "Duration of finished migrations run by plans, actual and as estimated beforehand.",
    ["method", "kind"], buckets=_DURATION_BUCKETS,
)  # fmt: skip
MIGRATION_DOWNTIME_SECONDS = Histogram(
    "virtfleet_migration_downtime_seconds",
    "Downtime of finished migrations run by plans: estimated (all), actual (cold moves; KubeVirt does not"
    " report a live migration's pause).",
    ["method", "kind"], buckets=_DOWNTIME_BUCKETS,
)  # fmt: skip

_serving: set[int] = set()


def serve(port: int) -> None:
    """Expose /metrics on `port` (0: do not serve); once per process, however often the operator starts."""
    if port and port not in _serving:
        start_http_server(port)
        _serving.add(port)


def record_pool(namespace: str, pool: str, status: dict[str, object], spec_replicas: int) -> None:
    for state, key in (("ready", "readyReplicas"), ("updated", "updatedReplicas"), ("pending", "pendingReplicas"),
                       ("current", "replicas")):  # fmt: skip
        POOL_REPLICAS.labels(namespace, pool, state).set(float(status.get(key) or 0))  # type: ignore[arg-type]
    POOL_REPLICAS.labels(namespace, pool, "desired").set(spec_replicas)
    summary = status.get("oversubscription") or {}
    assert isinstance(summary, dict)
    POOL_CPU_RATIO.labels(namespace, pool, "configured").set(float(status.get("cpuRatio") or 0))  # type: ignore[arg-type]
    POOL_CPU_RATIO.labels(namespace, pool, "effective").set(float(summary.get("effectiveCpuRatio") or 0))
    POOL_MEMORY_RATIO.labels(namespace, pool, "configured").set(float(status.get("memoryRatio") or 0))  # type: ignore[arg-type]
    POOL_MEMORY_RATIO.labels(namespace, pool, "effective").set(
        float(summary.get("effectiveMemoryRatio") or 0)
    )
    pending = float(status.get("pendingReplicas") or 0)  # type: ignore[arg-type]
    starting = float(status.get("replicas") or 0) - float(status.get("readyReplicas") or 0)  # type: ignore[arg-type]
    POOL_PENDING.labels(namespace, pool, "capacity").set(pending)
    POOL_PENDING.labels(namespace, pool, "starting").set(max(0.0, starting))
    for condition in status.get("conditions") or []:  # type: ignore[attr-defined]
        POOL_CONDITION.labels(namespace, pool, condition["type"]).set(
            1 if condition.get("status") == "True" else 0
        )


def forget_pool(namespace: str, pool: str) -> None:
    for gauge, kinds in ((POOL_REPLICAS, ("ready", "updated", "pending", "current", "desired")),
                         (POOL_CPU_RATIO, ("configured", "effective")),
                         (POOL_MEMORY_RATIO, ("configured", "effective")),
                         (POOL_PENDING, ("capacity", "starting")),
                         (POOL_CONDITION, ("Ready", "Progressing", "Degraded", "Stalled", "Reconciling",
                                           "CapacityExhausted"))):  # fmt: skip
        for kind in kinds:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, pool, kind)


def record_plan(
    namespace: str,
    plan: str,
    status: Mapping[str, Any],
    finished: Iterable[plan_executor.VMState],
) -> None:
    counts = {phase: 0 for phase in tuple(VMPhase)}
    for vm in status.get("vms") or []:
        if vm.get("phase") in counts:
            counts[vm["phase"]] += 1
    for phase, count in counts.items():
        PLAN_VMS.labels(namespace, plan, phase).set(count)
    if status.get("estimatedMakespanSeconds") is not None:
        PLAN_MAKESPAN.labels(namespace, plan, "estimated").set(float(status["estimatedMakespanSeconds"]))
    if status.get("startedAt") and status.get("finishedAt"):
        start, end = (
            datetime.fromisoformat(str(status[k]).replace("Z", "+00:00")) for k in ("startedAt", "finishedAt")
        )
        PLAN_MAKESPAN.labels(namespace, plan, "actual").set((end - start).total_seconds())
    for vm in finished:
        if vm.phase != VMPhase.SUCCEEDED:
            continue
        method = vm.entry.method
        MIGRATION_SECONDS.labels(method, "estimated").observe(vm.entry.estimated_duration_s)
        MIGRATION_DOWNTIME_SECONDS.labels(method, "estimated").observe(vm.entry.estimated_downtime_s)
        if vm.duration_s is not None:
            MIGRATION_SECONDS.labels(method, "actual").observe(vm.duration_s)
        if vm.downtime_s is not None:
            MIGRATION_DOWNTIME_SECONDS.labels(method, "actual").observe(vm.downtime_s)


def forget_plan(namespace: str, plan: str) -> None:
    for phase in tuple(VMPhase):
        with contextlib.suppress(KeyError):
            PLAN_VMS.remove(namespace, plan, phase)
    for kind in ("estimated", "actual"):
        with contextlib.suppress(KeyError):
            PLAN_MAKESPAN.remove(namespace, plan, kind)


class FleetCollector(Collector):
    """Per-node and per-template series computed on each scrape from the operator's indexes."""

    def __init__(
        self,
        nodes: Callable[[], Iterable[NodeFacts]],
        placements: Callable[[], Iterable[tuple[Any, str | None]]],  # (LauncherRequests, node)
        revisions: Callable[[], Iterable[tuple[str, str, str]]],  # (namespace, template, revision digest)
        revisions_in_use: Callable[[], Iterable[tuple[str, str, str]]],
    ) -> None:
        self.nodes, self.placements = nodes, placements
        self.revisions, self.revisions_in_use = revisions, revisions_in_use

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # computed at scrape time: nothing to check at registration

    def collect(self) -> Iterable[GaugeMetricFamily]:
        nodes = list(self.nodes())
        capacity = Capacity(nodes, [VMLoad(requests, node) for requests, node in self.placements() if node])
        committed = GaugeMetricFamily(
            "virtfleet_node_committed_vcpus",
            "vCPUs of the VMs placed on a node (shared and dedicated).",
            labels=["node"],
        )
        cores = GaugeMetricFamily(
            "virtfleet_node_cpu_cores", "Allocatable CPU cores of a node.", labels=["node"]
        )
        cpu_ratio = GaugeMetricFamily(
            "virtfleet_node_effective_cpu_ratio",
            "Shared vCPUs per shared physical core on a node (its effective CPU oversubscription).",
            labels=["node"],
        )
        memory_ratio = GaugeMetricFamily(
            "virtfleet_node_effective_memory_ratio",
            "Guest memory placed on a node per byte of its allocatable memory.",
            labels=["node"],
        )
        for node in nodes:
            usage = capacity.usage[node.name]
            committed.add_metric([node.name], usage.vcpus)
            cores.add_metric([node.name], node.cores)
            ratio = effective_cpu_ratio(node, usage)
            cpu_ratio.add_metric([node.name], ratio if ratio != float("inf") else 0.0)
            memory_ratio.add_metric([node.name], effective_memory_ratio(node, usage))
        yield from (committed, cores, cpu_ratio, memory_ratio)
        revisions = GaugeMetricFamily(
            "virtfleet_template_revisions", "Revisions a VMTemplate keeps, and those pools use.",
            labels=["namespace", "template", "state"],
        )  # fmt: skip
        totals: dict[tuple[str, str], set[str]] = {}
        for namespace, template, digest in self.revisions():
            totals.setdefault((namespace, template), set()).add(digest)
        used: dict[tuple[str, str], set[str]] = {}
        for namespace, template, digest in self.revisions_in_use():
            used.setdefault((namespace, template), set()).add(digest)
        for key in sorted(totals.keys() | used.keys()):
            revisions.add_metric([*key, "kept"], len(totals.get(key, ())))
            revisions.add_metric([*key, "in_use"], len(used.get(key, set()) & totals.get(key, set())))
        yield revisions


_collector: list[FleetCollector] = []


def register_fleet(collector: FleetCollector) -> None:
    """Install (or replace, when the operator restarts in-process) the fleet collector."""
    for old in _collector:
        REGISTRY.unregister(old)
    _collector[:] = [collector]
    REGISTRY.register(collector)
