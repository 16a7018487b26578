"""VirtualMachinePools end to end: the operator in-process, the simulated KubeVirt twin as a process."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from kopf.testing import KopfRunner
from twin_helpers import apply, get_json, wait_for

from virtfleet.localcluster import LocalCluster
from virtfleet.twin.fleet import Fleet, node_manifests

pytestmark = pytest.mark.integration

FLEET: dict[str, Any] = {
    "timeScale": 0.02,
    "defaults": {"bootSeconds": 2},
    "nodes": [
        {"name": "gen", "count": 3, "cpu": 64, "memory": "256Gi", "labels": {"role": "general"}},
        {"name": "cap", "cpu": 8, "memory": "32Gi", "labels": {"capacity": "small"}},
    ],
}
GENERAL = {"nodeSelector": {"role": "general"}}


def template(namespace: str, name: str = "small", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cpu": {"cores": 2},
        "memory": {"guest": "4Gi"},
        "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
        "interfaces": [{"name": "default", "type": "nat"}],
    }
    body.update(spec)
    return {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VMTemplate",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}  # fmt: skip


def pool(namespace: str, name: str = "pool", replicas: int = 3, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"replicas": replicas, "templateRef": {"name": "small"}, "placement": GENERAL}
    body.update(spec)
    return {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VirtualMachinePool",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}  # fmt: skip


def vms(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    return {v["metadata"]["name"]: v for v in get_json(cluster, "-n", namespace, "vm")["items"]}


def pool_status(cluster: LocalCluster, namespace: str, name: str = "pool") -> dict[str, Any]:
    status: dict[str, Any] = get_json(cluster, "-n", namespace, "vfpool", name).get("status", {})
    return status


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def settled(cluster: LocalCluster, namespace: str, ready: int, name: str = "pool") -> dict[str, Any] | None:
    status = pool_status(cluster, namespace, name)
    generation = get_json(cluster, "-n", namespace, "vfpool", name)["metadata"]["generation"]
    if (
        status.get("observedGeneration") == generation
        and status.get("readyReplicas") == ready
        and status.get("replicas") == ready
        and condition(status, "Ready").get("status") == "True"
        and condition(status, "Progressing").get("reason") == "RolloutComplete"
    ):
        return status
    return None


@pytest.fixture(autouse=True)
def _stack(twin: None, operator: KopfRunner) -> None:
    """Every test here needs the twin and the operator running."""


def test_scale_out_scale_in_and_the_scale_subresource(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace))
    apply(cluster, pool(namespace, replicas=5))
    status = wait_for(lambda: settled(cluster, namespace, 5), 60, "pool never reached 5 ready VMs")
    assert sorted(vms(cluster, namespace)) == [f"pool-{i}" for i in range(5)]
    assert status["labelSelector"] == "virtfleet.io/pool=pool"
    assert status["updatedReplicas"] == 5 and status["updateRevision"] == status["currentRevision"]
    assert condition(status, "CapacityExhausted")["status"] == "False"

    cluster.kubectl("-n", namespace, "scale", "vfpool", "pool", "--replicas=2")
    wait_for(lambda: settled(cluster, namespace, 2), 60, "pool never scaled in to 2")
    wait_for(lambda: sorted(vms(cluster, namespace)) == ["pool-0", "pool-1"], 30, "highest ordinals go first")
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/virtfleet.io/v1alpha1/namespaces/{namespace}/virtualmachinepools/pool/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 2 and scale["status"]["selector"] == "virtfleet.io/pool=pool"

    # An HPA writes the scale subresource the same way.
    cluster.kubectl("-n", namespace, "patch", "vfpool", "pool", "--subresource=scale", "--type=merge",
                    "-p", '{"spec":{"replicas":3}}')  # fmt: skip
    wait_for(lambda: settled(cluster, namespace, 3), 60, "pool never scaled back out to 3")
    assert sorted(vms(cluster, namespace)) == ["pool-0", "pool-1", "pool-2"]

    # Converged: the operator writes nothing more, to the pool or its VMs.
    before = {n: v["metadata"]["resourceVersion"] for n, v in vms(cluster, namespace).items()}
    pool_version = get_json(cluster, "-n", namespace, "vfpool", "pool")["metadata"]["resourceVersion"]
    time.sleep(3)
    assert {n: v["metadata"]["resourceVersion"] for n, v in vms(cluster, namespace).items()} == before
    assert get_json(cluster, "-n", namespace, "vfpool", "pool")["metadata"]["resourceVersion"] == pool_version


def test_capacity_exhausted_then_recovered_when_a_node_arrives(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace))
    apply(cluster, pool(namespace, replicas=6, cpuRatio=1, placement={"nodeSelector": {"capacity": "small"}}))

    def exhausted() -> dict[str, Any] | None:
        status = pool_status(cluster, namespace)
        ok = (
            condition(status, "CapacityExhausted").get("status") == "True"
            and status.get("readyReplicas") == 3
        )
        return status if ok else None

    # 2 vCPUs at 1:1 plus the launcher's support containers is 2,006m: an 8-core node holds 3, not 4.
    status = wait_for(exhausted, 60, "expected 3 VMs and CapacityExhausted")
    assert status["pendingReplicas"] == 3
    message = condition(status, "CapacityExhausted")["message"]
    assert "3 of 3 new VMs do not fit" in message and "cpuRatio 1" in message
    assert len(vms(cluster, namespace)) == 3  # nothing unschedulable was created
    assert (
        status["oversubscription"]["committedVcpus"] == 6 and status["oversubscription"]["physicalCores"] == 8
    )
    assert condition(status, "Degraded")["status"] == "True"

    extra = copy.deepcopy(node_manifests(Fleet.model_validate(
        {"nodes": [{"name": f"cap-extra-{namespace}", "cpu": 8, "memory": "32Gi", "labels": {"capacity": "small"}}]}
    ))[0])  # fmt: skip
    node_status = extra.pop("status")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(extra))
    cluster.kubectl("patch", "node", extra["metadata"]["name"], "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": node_status}))  # fmt: skip
    cluster.kubectl(
        "patch", "node", extra["metadata"]["name"], "--type=merge", "-p", '{"spec":{"taints":null}}'
    )
    try:
        status = wait_for(lambda: settled(cluster, namespace, 6), 60, "the pool did not use the new node")
        assert condition(status, "CapacityExhausted")["status"] == "False"
        assert status["pendingReplicas"] == 0
    finally:
        cluster.kubectl("delete", "-n", namespace, "vfpool", "pool", "--wait=true")
        cluster.kubectl("delete", "node", extra["metadata"]["name"], "--wait=false")


def test_rolling_update_with_surge_keeps_every_vm_available(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace))
    apply(cluster, pool(namespace, replicas=3, updateStrategy={"maxSurge": "1", "maxUnavailable": "0"}))
    first = wait_for(lambda: settled(cluster, namespace, 3), 60, "pool never ready")
    old_uids = {n: v["metadata"]["uid"] for n, v in vms(cluster, namespace).items()}
    apply(cluster, template(namespace, cpu={"cores": 4}))  # not hot-pluggable: VMs are replaced
    most, least_ready = 0, 3
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        current = vms(cluster, namespace)
        alive = [v for v in current.values() if not v["metadata"].get("deletionTimestamp")]
        most = max(most, len(alive))
        least_ready = min(least_ready, sum(bool(v.get("status", {}).get("ready")) for v in alive))
        status = settled(cluster, namespace, 3)
        if status and status["updateRevision"] != first["updateRevision"] and status["updatedReplicas"] == 3:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"rollout did not finish: {pool_status(cluster, namespace)}")
    assert most <= 4  # replicas + maxSurge
    assert least_ready >= 3  # maxUnavailable 0: never fewer than 3 ready
    assert not set(old_uids.values()) & {v["metadata"]["uid"] for v in vms(cluster, namespace).values()}
    for vm in vms(cluster, namespace).values():
        assert vm["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] == 4
    revisions = get_json(cluster, "-n", namespace, "vmtemplate", "small")["status"]["revisions"]
    # The old revision is dropped once no VM uses it.
    wait_for(
        lambda: len(get_json(cluster, "-n", namespace, "controllerrevisions")["items"]) == 1,
        30,
        f"old revision kept: {revisions}",
    )


def test_a_bad_revision_halts_the_rollout(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace))
    apply(cluster, pool(namespace, replicas=2,
                        updateStrategy={"maxSurge": "1", "maxUnavailable": "0", "readyTimeoutSeconds": 10}))  # fmt: skip
    wait_for(lambda: settled(cluster, namespace, 2), 60, "pool never ready")
    # The new revision's guests crash on boot (a twin fault), so its VMs never become Ready.
    apply(cluster, template(namespace, annotations={"twin.virtfleet.io/crash": "true"}))

    def halted() -> dict[str, Any] | None:
        status = pool_status(cluster, namespace)
        return (
            status if condition(status, "Progressing").get("reason") == "ProgressDeadlineExceeded" else None
        )

    status = wait_for(halted, 60, "the rollout did not halt")
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Stalled")["status"] == "True"
    assert status["readyReplicas"] >= 2  # the old VMs stay
    time.sleep(2)
    alive = [v for v in vms(cluster, namespace).values() if not v["metadata"].get("deletionTimestamp")]
    assert len(alive) == 3  # 2 old + 1 surge, no further replacement
    events = cluster.kubectl("-n", namespace, "get", "events", "-o", "json").stdout
    assert "ProgressDeadlineExceeded" in events


def test_cpu_hot_plug_needs_no_restart(cluster: LocalCluster, namespace: str) -> None:
    apply(
        cluster, template(namespace, cpu={"sockets": 1, "cores": 2, "maxSockets": 4}, memory={"guest": "4Gi"})
    )
    apply(cluster, pool(namespace, replicas=2, allocation="dynamic"))
    wait_for(lambda: settled(cluster, namespace, 2), 60, "pool never ready")
    before = {n: v["metadata"]["uid"] for n, v in vms(cluster, namespace).items()}
    vmi_before = {
        v["metadata"]["name"]: v["metadata"]["uid"]
        for v in get_json(cluster, "-n", namespace, "vmi")["items"]
    }
    apply(
        cluster, template(namespace, cpu={"sockets": 3, "cores": 2, "maxSockets": 4}, memory={"guest": "4Gi"})
    )

    def hot_plugged() -> bool:
        current = vms(cluster, namespace)
        return all(v["spec"]["template"]["spec"]["domain"]["cpu"]["sockets"] == 3 for v in current.values())

    wait_for(hot_plugged, 60, "sockets were not raised")
    status = wait_for(lambda: settled(cluster, namespace, 2), 60, "pool did not settle")
    assert status["updatedReplicas"] == 2
    assert {n: v["metadata"]["uid"] for n, v in vms(cluster, namespace).items()} == before
    vmi_after = {
        v["metadata"]["name"]: v["metadata"]["uid"]
        for v in get_json(cluster, "-n", namespace, "vmi")["items"]
    }
    assert vmi_after == vmi_before  # the VMIs (the running guests) were never restarted
    assert "HotPlugged" in cluster.kubectl("-n", namespace, "get", "events", "-o", "json").stdout


def test_incompatible_template_and_missing_template(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace, cpu={"cores": 2, "policy": "dedicated"}))
    apply(cluster, pool(namespace, name="bad-ratio", replicas=2, cpuRatio=4))
    apply(cluster, pool(namespace, name="orphan", replicas=1, templateRef={"name": "nope"}))
    for name, reason, field in (
        ("bad-ratio", "IncompatibleTemplate", "spec.cpuRatio"),
        ("orphan", "TemplateNotFound", "nope"),
    ):
        status = wait_for(
            lambda n=name, r=reason: (
                (s := pool_status(cluster, namespace, n)) and condition(s, "Ready").get("reason") == r and s
            ),
            30,
            f"{name} should report {reason}",
        )
        assert field in condition(status, "Ready")["message"]
        assert condition(status, "Stalled")["status"] == "True"
    assert vms(cluster, namespace) == {}


def test_deleting_a_pool_deletes_its_vms(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace))
    apply(cluster, pool(namespace, replicas=2))
    wait_for(lambda: settled(cluster, namespace, 2), 60, "pool never ready")
    cluster.kubectl("-n", namespace, "delete", "vfpool", "pool")
    wait_for(lambda: not vms(cluster, namespace), 60, "the garbage collector left VMs behind")
    wait_for(lambda: not get_json(cluster, "-n", namespace, "vmi")["items"], 60, "VMIs left behind")


def test_a_pinned_revision_holds_while_the_template_moves_on(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, template(namespace))
    first = wait_for(
        lambda: (
            get_json(cluster, "-n", namespace, "vmtemplate", "small").get("status", {}).get("currentRevision")
        ),
        30,
        "template never got a revision",
    )
    apply(cluster, pool(namespace, replicas=2, templateRef={"name": "small", "revision": first}))
    wait_for(lambda: settled(cluster, namespace, 2), 60, "pool never ready")
    apply(cluster, template(namespace, cpu={"cores": 4}))
    second = wait_for(
        lambda: (
            (r := get_json(cluster, "-n", namespace, "vmtemplate", "small")["status"].get("currentRevision"))
            != first
            and r
        ),
        30,
        "template never moved on",
    )
    time.sleep(2)
    status = pool_status(cluster, namespace)
    assert status["updateRevision"] == first and status["currentRevision"] == first
    assert {
        v["metadata"]["labels"]["virtfleet.io/template-revision"] for v in vms(cluster, namespace).values()
    } == {first}
    listed = {
        r["name"] for r in get_json(cluster, "-n", namespace, "vmtemplate", "small")["status"]["revisions"]
    }
    assert {first, second} <= listed  # the pinned revision is kept


def test_a_template_set_back_to_an_earlier_spec_keeps_its_current_revision(
    cluster: LocalCluster, namespace: str
) -> None:
    """Setting a template back reuses the earlier spec's older, lower-numbered revision. Clean-up must
    keep that revision although a higher-numbered one exists: a pool following the template needs it."""

    def current() -> str | None:
        status = get_json(cluster, "-n", namespace, "vmtemplate", "small").get("status", {})
        revision: str | None = status.get("currentRevision")
        return revision

    def stored() -> set[str]:
        return {
            r["metadata"]["name"] for r in get_json(cluster, "-n", namespace, "controllerrevisions")["items"]
        }

    apply(cluster, template(namespace))
    first = wait_for(current, 30, "template never got a revision")
    apply(
        cluster, pool(namespace, "pinned-first", replicas=0, templateRef={"name": "small", "revision": first})
    )
    apply(cluster, template(namespace, memory={"guest": "8Gi"}))
    second = wait_for(lambda: (r := current()) != first and r, 30, "template never moved on")
    apply(
        cluster,
        pool(namespace, "pinned-second", replicas=0, templateRef={"name": "small", "revision": second}),
    )
    wait_for(lambda: pool_status(cluster, namespace, "pinned-second").get("currentRevision") == second, 30,
             "pinned-second never reported its revision")  # fmt: skip
    apply(cluster, template(namespace))  # back to the first spec
    wait_for(lambda: current() == first, 30, "template never went back to its first revision")

    # The only pool pinning the first revision goes; the second pool's reconcile then runs clean-up.
    cluster.kubectl("-n", namespace, "delete", "vfpool", "pinned-first", "--wait=true")
    cluster.kubectl("-n", namespace, "annotate", "vfpool", "pinned-second", "poke=1")
    apply(cluster, pool(namespace, "follower", replicas=1))
    wait_for(lambda: settled(cluster, namespace, 1, "follower"), 60, "a pool following the template stalled")
    time.sleep(2)
    assert current() == first
    assert {f"small-{first}", f"small-{second}"} <= stored()
    assert pool_status(cluster, namespace, "follower")["currentRevision"] == first
