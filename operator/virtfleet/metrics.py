"""Prometheus metrics of the operator (prometheus-client). Labels stay low-cardinality: per pool and
per node at most, never per VM."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
