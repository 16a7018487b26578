"""A live MigrationPlan draining a real worker: real VMIMs, guests that never restart, KubeVirt's limits."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kind_helpers import apply, get, items, record
from kubevirt_helpers import guest_now, plan_finished, small_fleet, vmis

from virtfleet.localcluster.testing import SessionCluster

VMS = 4


def _plan(namespace: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "drain", "namespace": namespace},
        "spec": {
            "goal": "drain",
            "nodes": [node],
            "uncordonWhenDone": True,
            "method": "live",
            "limits": {"maxParallel": 2, "maxOutboundPerNode": 2, "maxInboundPerNode": 2},
            "failurePolicy": {"retries": 1, "backoffSeconds": 5, "maxFailures": 0},
        },
    }


def test_live_drain_keeps_every_guest_running(
    test_cluster: SessionCluster,
    operator: object,
    kubevirt: dict[str, Any],
    namespace: str,
    guest_image: str,
    results: Path,
) -> None:
    assert guest_image, "uptime is read from the guest itself: set VIRTFLEET_E2E_GUEST_IMAGE"
    running = small_fleet(test_cluster, namespace, guest_image, VMS)
    names = [v["metadata"]["name"] for v in running]
    source = Counter(v["status"]["nodeName"] for v in running).most_common(1)[0][0]
    uptime_before = {n: guest_now(test_cluster, namespace, n).uptime_s for n in names}

    # KubeVirt's own limits: never more migrations in flight than its CR allows (default 5 and 2 per node).
    limits = kubevirt["spec"].get("configuration", {}).get("migrations", {})
    per_cluster = int(limits.get("parallelMigrationsPerCluster", 5))
    per_node = int(limits.get("parallelOutboundMigrationsPerNode", 2))
    peak = {"cluster": 0, "outbound": 0}
    stop = threading.Event()

    def watch_in_flight() -> None:
        while not stop.wait(1):
            active = [
                m for m in items(test_cluster, "virtualmachineinstancemigrations.kubevirt.io", namespace)
                if m.get("status", {}).get("phase") not in ("Succeeded", "Failed", None)
            ]  # fmt: skip
            peak["cluster"] = max(peak["cluster"], len(active))
            peak["outbound"] = max(peak["outbound"], len(active))  # one source node drains

    watcher = threading.Thread(target=watch_in_flight, daemon=True)
    watcher.start()
    started = time.monotonic()
    apply(test_cluster, _plan(namespace, source))

    status = plan_finished(test_cluster, namespace, "drain", done=("Succeeded", "Failed", "Paused"))
    stop.set()
    watcher.join()
    elapsed = time.monotonic() - started
    assert status["phase"] == "Succeeded", status
    moved = [vm for vm in status["vms"] if vm["source"] == source]
    assert moved and all(vm["phase"] == "Succeeded" for vm in moved), status["vms"]

    after = {v["metadata"]["name"]: v for v in vmis(test_cluster, namespace)}
    assert sorted(after) == sorted(names)
    assert all(v["status"]["nodeName"] != source for v in after.values()), (
        "a VMI is still on the drained node"
    )
    for name in names:
        guest = guest_now(test_cluster, namespace, name)
        assert guest.uptime_s > uptime_before[name], f"{name} restarted: {uptime_before[name]} -> {guest}"
    assert peak["cluster"] <= min(per_cluster, 2) and peak["outbound"] <= per_node, peak
    node = get(test_cluster, "node", source)
    assert not node["spec"].get("unschedulable"), "uncordonWhenDone left the node cordoned"

    migrations = items(test_cluster, "virtualmachineinstancemigrations.kubevirt.io", namespace)
    assert len(migrations) >= len(moved)
    figures = {
        vm["name"]: {
            "estimated_duration_s": vm["estimatedDurationSeconds"],
            "actual_duration_s": vm.get("actualDurationSeconds"),
            "estimated_downtime_s": vm["estimatedDowntimeSeconds"],
            "actual_downtime_s": vm.get("actualDowntimeSeconds"),
        }
        for vm in moved
    }
    record(
        results,
        drain_vms=len(moved),
        drain_elapsed_s=round(elapsed, 1),
        drain_estimated_makespan_s=status.get("estimatedMakespanSeconds"),
        drain_estimated_setup_s=status.get("estimatedSetupSeconds"),
        drain_per_vm=figures,
    )
