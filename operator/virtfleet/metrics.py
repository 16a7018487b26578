"""Prometheus metrics of the operator (prometheus-client). Labels stay low-cardinality: per pool and
per node at most, never per VM."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from virtfleet.core import plan_executor

POOL_REPLICAS = Gauge("virtfleet_pool_replicas", "VMs of a pool by state.", ["namespace", "pool", "state"])
POOL_CPU_RATIO = Gauge(
    "virtfleet_pool_cpu_ratio", "CPU oversubscription of a pool: configured, or effective on its nodes.",
    ["namespace", "pool", "kind"],
)  # fmt: skip
POOL_MEMORY_RATIO = Gauge(
    "virtfleet_pool_memory_ratio", "Memory oversubscription of a pool: configured, or effective on its nodes.",
    ["namespace", "pool", "kind"],
)  # fmt: skip
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


def forget_pool(namespace: str, pool: str) -> None:
    for gauge, kinds in ((POOL_REPLICAS, ("ready", "updated", "pending", "current", "desired")),
                         (POOL_CPU_RATIO, ("configured", "effective")),
                         (POOL_MEMORY_RATIO, ("configured", "effective"))):  # fmt: skip
        for kind in kinds:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, pool, kind)


def record_plan(
    namespace: str,
    plan: str,
    status: Mapping[str, Any],
    finished: Iterable[plan_executor.VMState],
) -> None:
    counts = {phase: 0 for phase in plan_executor.VM_PHASES}
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
        if vm.phase != plan_executor.SUCCEEDED:
            continue
        method = vm.entry.method
        MIGRATION_SECONDS.labels(method, "estimated").observe(vm.entry.estimated_duration_s)
        MIGRATION_DOWNTIME_SECONDS.labels(method, "estimated").observe(vm.entry.estimated_downtime_s)
        if vm.duration_s is not None:
            MIGRATION_SECONDS.labels(method, "actual").observe(vm.duration_s)
        if vm.downtime_s is not None:
            MIGRATION_DOWNTIME_SECONDS.labels(method, "actual").observe(vm.downtime_s)


def forget_plan(namespace: str, plan: str) -> None:
    for phase in plan_executor.VM_PHASES:
        with contextlib.suppress(KeyError):
            PLAN_VMS.remove(namespace, plan, phase)
    for kind in ("estimated", "actual"):
        with contextlib.suppress(KeyError):
            PLAN_MAKESPAN.remove(namespace, plan, kind)
