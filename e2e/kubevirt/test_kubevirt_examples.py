"""The examples on real KubeVirt: real virt-launcher pods, sized as the operator predicted, real guests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kind_helpers import apply, condition, get, items, record, wait_for
from kubevirt_helpers import BOOT_TIMEOUT, compute_requests, example, guest_now, launcher_pod, running_vmis

from virtfleet.api.quantity import parse_bytes, parse_millicores
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.kube.facts import pod_requests
from virtfleet.localcluster.testing import SessionCluster

GIB_KIB = 2**20


def _allocation_ratio(kubevirt: dict[str, Any]) -> float:
    developer = kubevirt["spec"].get("configuration", {}).get("developerConfiguration", {})
    return float(developer.get("cpuAllocationRatio", 10))


def test_template_and_oversubscribed_pool_run_real_guests(
    test_cluster: SessionCluster,
    operator: object,
    kubevirt: dict[str, Any],
    namespace: str,
    guest_image: str,
    results: Path,
) -> None:
    objects = example("01-template/vmtemplate.yaml", namespace, guest_image)
    objects += example("02-oversubscribed-pool/pool.yaml", namespace, guest_image)
    started = time.monotonic()
    apply(test_cluster, *objects)
    running = running_vmis(test_cluster, namespace, "web", 6)
    record(results, examples_web_pool_6_vmis_running_s=round(time.monotonic() - started, 1))

    ratio = _allocation_ratio(kubevirt)
    for vmi in running:
        name = vmi["metadata"]["name"]
        pod = launcher_pod(test_cluster, vmi)
        assert pod is not None and pod["metadata"]["labels"]["kubevirt.io"] == "virt-launcher"
        # What the operator counted for this VM is what virt-controller really asked the scheduler for.
        vm = get(test_cluster, "virtualmachines.kubevirt.io", name, namespace)
        predicted = launcher_requests(vm["spec"]["template"]["spec"], ratio)
        cpu, memory = compute_requests(pod)
        assert (parse_millicores(cpu), parse_bytes(memory)) == (
            predicted.cpu_millis,
            predicted.memory_bytes,
        ), name
        # And the whole pod, as kube-scheduler adds it up: compute plus guest-console-log and the
        # containerDisk container (their requests were missing from the operator's count at first).
        assert pod_requests(pod["spec"]) == (predicted.pod_cpu_millis, predicted.pod_memory_bytes), name
        if guest_image:
            # The guest's own view: on the pod network (KubeVirt's masquerade DHCP), 2 vCPUs, 4Gi.
            guest = wait_for(
                lambda: g if (g := guest_now(test_cluster, namespace, name)).ip != "none" else None,  # noqa: B023
                BOOT_TIMEOUT,
                f"guest {name} never took an address on the pod network",
                2,
            )
            assert guest.cpus == 2, guest
            assert 3.5 * GIB_KIB < guest.mem_kib <= 4 * GIB_KIB, guest

    def ready() -> dict[str, Any] | None:
        pool = get(test_cluster, "vfpool", "web", namespace)
        found = condition(pool, "Ready")
        return (
            pool if found and found["status"] == "True" and pool["status"].get("readyReplicas") == 6 else None
        )

    wait_for(ready, 60, "pool web never reported Ready with 6 ready replicas")


def test_pinned_numa_pool_names_why_kind_cannot_hold_it(
    test_cluster: SessionCluster, operator: object, namespace: str, guest_image: str
) -> None:
    """Example 03 needs dedicated cores (kubevirt.io/cpumanager=true nodes: kubelet's static CPU manager)
    and 1Gi hugepages; kind's workers offer neither, so the operator creates nothing and says why."""
    objects = example("03-pinned-numa-pool/template.yaml", namespace, guest_image)
    objects += example("03-pinned-numa-pool/pool.yaml", namespace, guest_image)
    apply(test_cluster, *objects)
    name = objects[-1]["metadata"]["name"]

    def reported() -> dict[str, Any] | None:
        pool = get(test_cluster, "vfpool", name, namespace)
        status = pool.get("status", {})
        return status if status.get("pendingReplicas") else None

    status = wait_for(reported, 120, f"pool {name} never reported its pending replicas")
    assert items(test_cluster, "virtualmachines.kubevirt.io", namespace) == []
    assert status["pendingReplicas"] == objects[-1]["spec"]["replicas"], status
