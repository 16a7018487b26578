"""A MigrationPlan executed in the twin by the real operator process: concurrency from the migrations'
own timestamps, and estimates against the twin's durations. Used by bench/planner.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import CRDS, KUBEVIRT_CRDS, twin_process

MAX_PARALLEL = 5
DRAINED = ["b-0", "b-1", "b-2"]
# Half real speed: the operator's reaction time (tens of ms) stays small next to a migration (~8 s).
FLEET = {
    "timeScale": 0.5,
    "defaults": {"bootSeconds": 1},
    "nodes": [{"name": "b", "count": 8, "cpu": 64, "memory": "512Gi"}],
}
TEMPLATE = {
    "cpu": {"cores": 2},
    "memory": {"guest": "8Gi"},
    "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
    "interfaces": [{"name": "default", "type": "nat"}],
}


def _stamp(vmim: dict[str, Any], phase: str) -> datetime | None:
    for t in vmim.get("status", {}).get("phaseTransitionTimestamps", []):
        if t["phase"] == phase:
            return datetime.fromisoformat(t["phaseTransitionTimestamp"].replace("Z", "+00:00"))
    return None


def mean_concurrency(spans: list[tuple[datetime, datetime]], until: datetime) -> float:
    """Time-weighted mean number of migrations in flight from the first start to `until`."""
    first = min(s for s, _ in spans)
    window = (until - first).total_seconds()
    busy = sum(max(0.0, (min(e, until) - s).total_seconds()) for s, e in spans if s < until)
    return busy / window if window > 0 else 0.0


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}")


def execute(vms: int) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp, LocalCluster.start() as cluster:
        work = Path(tmp)
        cluster.apply([CRDS, KUBEVIRT_CRDS])
        fleet = work / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(FLEET))

        def get(*args: str) -> Any:
            return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)

        with twin_process(cluster.kubeconfig, fleet, work / "twin.log"):
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "VIRTFLEET_METRICS_PORT": "0"}
            operator = subprocess.Popen(
                [sys.executable, "-m", "virtfleet", "run", "--liveness", ""],
                env=env, stdout=(work / "operator.log").open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                _wait(lambda: len(get("nodes")["items"]) == 8, 60, "the twin's nodes")
                others = [f"b-{i}" for i in range(3, 8)]
                for node in others:  # the pool lands on the nodes to drain
                    cluster.kubectl("cordon", node)
                cluster.kubectl("create", "namespace", "bench")
                manifests = [
                    {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VMTemplate",
                     "metadata": {"name": "bench", "namespace": "bench"}, "spec": TEMPLATE},
                    {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VirtualMachinePool",
                     "metadata": {"name": "bench", "namespace": "bench"},
                     "spec": {"replicas": vms, "templateRef": {"name": "bench"}, "cpuRatio": 4}},
                ]  # fmt: skip
                cluster.kubectl(
                    "apply",
                    "--server-side",
                    "-f",
                    "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
                )

                def running() -> bool:
                    items = get("-n", "bench", "vmi")["items"]
                    return len([v for v in items if v.get("status", {}).get("phase") == "Running"]) == vms

                _wait(running, 300, f"{vms} running VMs")
                for node in others:
                    cluster.kubectl("uncordon", node)
                plan = {"apiVersion": "virtfleet.io/v1alpha1", "kind": "MigrationPlan",
                        "metadata": {"name": "drain", "namespace": "bench"},
                        "spec": {"goal": "drain", "nodes": DRAINED,
                                 "limits": {"maxParallel": MAX_PARALLEL, "maxOutboundPerNode": 2,
                                            "maxInboundPerNode": 2}}}  # fmt: skip
                started = time.monotonic()
                cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(plan))

                def finished() -> dict[str, Any] | None:
                    status: dict[str, Any] = get("-n", "bench", "vfplan", "drain").get("status", {})
                    return status if status.get("phase") in ("Succeeded", "Failed") else None

                status = _wait(finished, 1800, "the plan")
                wall = time.monotonic() - started
            finally:
                operator.terminate()
                operator.wait(timeout=30)
            migrations = get("-n", "bench", "vmim")["items"]
    spans = []
    for vmim in migrations:
        start, end = _stamp(vmim, "Pending"), _stamp(vmim, "Succeeded") or _stamp(vmim, "Failed")
        if start and end:
            spans.append((start, end))
    last_start = max(s for s, _ in spans)
    last_end = max(e for _, e in spans)
    while_work = mean_concurrency(spans, last_start) / MAX_PARALLEL
    whole = mean_concurrency(spans, last_end) / MAX_PARALLEL
    starts = sorted(s for s, _ in spans)
    gaps = sorted(
        (min(s for s in starts if s >= end) - end).total_seconds() for _, end in spans if end < last_start
    )
    scale = float(FLEET["timeScale"])  # type: ignore[arg-type]
    print(f"slot refilled after {gaps[len(gaps) // 2] * scale * 1000:.0f} ms median, "
          f"{gaps[int(0.9 * (len(gaps) - 1))] * scale * 1000:.0f} ms p90 (real time)")  # fmt: skip
    errors = [abs(v["actualDurationSeconds"] - v["estimatedDurationSeconds"]) / v["estimatedDurationSeconds"]
              for v in status["vms"] if v.get("actualDurationSeconds") is not None]  # fmt: skip
    simulated = (last_end - min(s for s, _ in spans)).total_seconds()
    print(f"executed: {status['phase']}, {status['done']}/{status['total']} VMs, {len(migrations)} migrations, "
          f"{simulated:.0f} simulated s ({wall:.0f} real s), estimated makespan {status['estimatedMakespanSeconds']} s")  # fmt: skip
    return {
        "execution_mean_concurrency_over_max_parallel": {
            "value": round(while_work, 3), "unit": "ratio",
            "target": ">= 0.95 (twin, from VMIM timestamps, first to last start)",
        },
        "execution_mean_concurrency_over_max_parallel_whole_plan": {
            "value": round(whole, 3), "unit": "ratio", "target": "reported (includes the final drain-down)",
        },
        "execution_slot_refill_median": {
            "value": round(gaps[len(gaps) // 2] * scale * 1000), "unit": "ms (real)",
            "target": "reported (migration ends -> next one starts, operator + twin)",
        },
        "execution_vms_moved": {"value": status["done"], "unit": "VMs", "target": f"{vms} (all)"},
        "execution_migrations_created": {"value": len(migrations), "unit": "VMIMs", "target": f"{vms} (one per VM)"},
        "execution_makespan_actual": {"value": round(simulated, 1), "unit": "s (simulated)", "target": "reported"},
        "execution_makespan_estimated": {
            "value": status["estimatedMakespanSeconds"], "unit": "s", "target": "within 20% of actual",
        },
        "execution_estimate_error_max": {
            "value": round(max(errors), 3), "unit": "ratio", "target": "<= 0.2 (per VM duration)",
        },
    }  # fmt: skip
