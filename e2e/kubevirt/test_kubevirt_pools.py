"""Pools on real KubeVirt: scale out and in, and CPU and memory hot-plug into running guests."""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from kind_helpers import apply, get, items, record, wait_for
from kubevirt_helpers import (
    BOOT_TIMEOUT,
    elastic,
    fixed,
    guest_now,
    guest_reports,
    launcher_pod,
    running_vmis,
    vmis,
)

from virtfleet.localcluster.testing import SessionCluster

GIB_KIB = 2**20


def pool(namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": "elastic", "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "templateRef": {"name": "elastic"},
            "cpuRatio": 4,
            "allocation": "dynamic",
        },
    }


def test_scale_out_and_in(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str
) -> None:
    apply(test_cluster, elastic(namespace, guest_image), pool(namespace, 1))
    running_vmis(test_cluster, namespace, "elastic", 1)
    test_cluster.kubectl("-n", namespace, "scale", "vfpool/elastic", "--replicas=3")
    names = sorted(v["metadata"]["name"] for v in running_vmis(test_cluster, namespace, "elastic", 3))
    assert names == ["elastic-0", "elastic-1", "elastic-2"]
    test_cluster.kubectl("-n", namespace, "scale", "vfpool/elastic", "--replicas=1")

    def scaled_in() -> list[str] | None:
        left = sorted(v["metadata"]["name"] for v in items(test_cluster, "vm", namespace))
        return left if left == ["elastic-0"] and len(vmis(test_cluster, namespace)) == 1 else None

    wait_for(scaled_in, 300, "the pool never scaled in to elastic-0", 2)


def test_cpu_and_memory_hot_plug_reach_the_running_guest(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str, results: Path
) -> None:
    assert guest_image, "hot-plug is read from the guest itself: set VIRTFLEET_E2E_GUEST_IMAGE"
    apply(test_cluster, elastic(namespace, guest_image), pool(namespace, 1))
    (vmi,) = running_vmis(test_cluster, namespace, "elastic", 1)
    name, uid = vmi["metadata"]["name"], vmi["metadata"]["uid"]
    first_pod = launcher_pod(test_cluster, vmi)
    before = guest_now(test_cluster, namespace, name)
    assert before.cpus == 1 and before.mem_kib <= GIB_KIB

    started = time.monotonic()
    apply(test_cluster, elastic(namespace, guest_image, sockets=2, guest="2Gi"))

    def plugged() -> Any:
        guest = guest_now(test_cluster, namespace, name)
        return guest if guest.cpus == 2 and guest.mem_kib > 1.5 * GIB_KIB else None

    after = wait_for(plugged, BOOT_TIMEOUT, f"guest {name} never saw 2 vCPUs and 2Gi", 3)
    record(results, hotplug_cpu_and_memory_seen_by_guest_s=round(time.monotonic() - started, 1))
    # The same guest, never restarted: same VMI, uptime went on.
    assert get(test_cluster, "virtualmachineinstances.kubevirt.io", name, namespace)["metadata"]["uid"] == uid
    # Never rebooted: the guest's uptime only ever grew, on this launcher pod's console and from the last
    # report before the change. (Its clock may lag the wall clock a lot: under emulation it stops while the
    # live migration that carries the hot-plug pauses the guest, 43 s of 74 once.)
    vmi = get(test_cluster, "virtualmachineinstances.kubevirt.io", name, namespace)
    pod = launcher_pod(test_cluster, vmi)
    assert pod is not None and first_pod is not None
    uptimes = [r.uptime_s for r in guest_reports(test_cluster, pod)]
    if pod["metadata"]["uid"] != first_pod["metadata"]["uid"]:
        uptimes.insert(0, before.uptime_s)  # a new pod's console starts where the old one's left off
    assert all(b >= a for a, b in pairwise(uptimes)), uptimes
    assert after.uptime_s > before.uptime_s, (before, after)
    print(
        f"guest clock: {after.uptime_s - before.uptime_s:.1f} s over {time.monotonic() - started:.1f} s of wall time"
    )
    vm = get(test_cluster, "virtualmachines.kubevirt.io", name, namespace)
    conditions = {c["type"]: c["status"] for c in vm.get("status", {}).get("conditions", [])}
    assert conditions.get("RestartRequired") != "True", vm["status"]


def test_a_rolling_update_stays_within_its_budget(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str, results: Path
) -> None:
    replicas, surge = 2, 1  # the default budget: maxSurge 1, maxUnavailable 0
    template = fixed(namespace, guest_image)
    static = {
        **pool(namespace, replicas),
        "spec": {**pool(namespace, replicas)["spec"], "allocation": "static"},
    }
    apply(test_cluster, template, static)
    running_vmis(test_cluster, namespace, "elastic", replicas)
    # (VMs not being deleted, VMIs Ready, VMs including those still shutting down). maxSurge counts VMs as
    # a Deployment counts pods: one being deleted no longer does, though its guest may take a while to stop.
    samples: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1):
            made = items(test_cluster, "vm", namespace, "-l", "virtfleet.io/pool=elastic")
            ready = [
                v for v in vmis(test_cluster, namespace, "-l", "virtfleet.io/pool=elastic")
                if any(c["type"] == "Ready" and c["status"] == "True" for c in v.get("status", {}).get("conditions", []))
            ]  # fmt: skip
            alive = [m for m in made if not m["metadata"].get("deletionTimestamp")]
            samples.append((len(alive), len(ready), len(made)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    template["spec"]["memory"]["guest"] = "320Mi"
    apply(test_cluster, template)

    def rolled() -> list[dict[str, Any]] | None:
        found = vmis(test_cluster, namespace, "-l", "virtfleet.io/pool=elastic")
        new = [v for v in found if v["spec"]["domain"]["memory"]["guest"] == "320Mi"
               and v.get("status", {}).get("phase") == "Running"]  # fmt: skip
        return new if len(new) == len(found) == replicas else None

    wait_for(rolled, 2 * BOOT_TIMEOUT, "the rolling update never finished", 3)
    stop.set()
    watcher.join()
    assert samples, "the watcher saw nothing"
    most, fewest_ready = max(s[0] for s in samples), min(s[1] for s in samples)
    assert most <= replicas + surge, samples  # maxSurge held
    assert fewest_ready >= replicas, samples  # maxUnavailable 0 held: never fewer Ready than replicas
    status = get(test_cluster, "vfpool", "elastic", namespace)["status"]
    assert status.get("updatedReplicas") == replicas, status
    record(results, rolling_update={
        "replicas": replicas, "most_vms_at_once": most, "fewest_ready": fewest_ready,
        "most_vms_with_terminating": max(s[2] for s in samples),
        "took_s": round(time.monotonic() - started, 1),
    })  # fmt: skip
