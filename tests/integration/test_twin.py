"""The simulated KubeVirt twin, as its own process, in the real control plane."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from twin_helpers import apply, get_json, migration, printable, vm, wait_for

from virtfleet.core import precopy
from virtfleet.core.kubevirt import memory_overhead
from virtfleet.localcluster import LocalCluster
from virtfleet.twin.fleet import Fleet

pytestmark = pytest.mark.integration

GIB = 2**30
# The launcher pod of a 1-vCPU, 1Gi VM (guest size only) with one containerDisk: compute, then the
# guest-console-log (35M) and containerDisk (1M) containers.
PER_SMALL_VM = GIB + memory_overhead(1, 0) + 35_000_000 + 1_000_000
FLEET: dict[str, Any] = {
    "timeScale": 0.02,
    "cluster": {"completionTimeoutPerGiB": 5},
    "defaults": {
        "bootSeconds": 2,
        # Long enough that API latency (about a simulated second per write at this scale) stays small.
        "migrationSetupSeconds": 20,
        "nodeFailureGraceSeconds": 10,
        "dirtyRate": "50Mi",
        "migrationBandwidth": "1250M",
    },
    "nodes": [
        {"name": "exact", "cpu": 16, "memory": str(3 * PER_SMALL_VM), "labels": {"role": "exact"},
         "taints": [{"key": "exact", "effect": "NoSchedule"}]},
        {"name": "big", "count": 3, "cpu": 64, "memory": "512Gi"},
        {"name": "pinned", "cpu": 8, "memory": "64Gi", "hugepages1Gi": "16Gi", "cpuManager": True,
         "numa": [{"cpus": "0-3", "memory": "32Gi", "hugepages1Gi": "8Gi"},
                  {"cpus": "4-7", "memory": "32Gi", "hugepages1Gi": "8Gi"}]},
    ],
}  # fmt: skip
NOT_EXACT = {"nodeSelector": {"kubevirt.io/schedulable": "true"}}


def _vmi(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("-n", namespace, "get", "vmi", name, "-o", "json", check=False)
    if result.returncode:
        return None
    import json

    found: dict[str, Any] = json.loads(result.stdout)
    return found


def _running(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    vmi = _vmi(cluster, namespace, name)
    if (
        vmi
        and vmi.get("status", {}).get("phase") == "Running"
        and printable(cluster, namespace, name) == "Running"
    ):
        return vmi
    return None


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_run_strategies(cluster: LocalCluster, twin: None, namespace: str) -> None:
    for strategy in ("Always", "Halted", "Manual", "RerunOnFailure", "Once"):
        apply(cluster, vm(strategy.lower(), namespace, run_strategy=strategy, spec=NOT_EXACT))
    for name in ("always", "rerunonfailure", "once"):
        wait_for(lambda n=name: _running(cluster, namespace, n), 30, f"{name} never ran")
    for name in ("halted", "manual"):
        wait_for(lambda n=name: printable(cluster, namespace, n) == "Stopped", 30, f"{name} not Stopped")
        assert _vmi(cluster, namespace, name) is None

    # A guest crash: Always and RerunOnFailure start a new VMI, Once does not.
    first_uids = {}
    for name in ("always", "rerunonfailure", "once"):
        first_uids[name] = _vmi(cluster, namespace, name)["metadata"]["uid"]  # type: ignore[index]
        cluster.kubectl("-n", namespace, "annotate", "vmi", name, "twin.virtfleet.io/crash=true")
    for name in ("always", "rerunonfailure"):
        wait_for(
            lambda n=name: (v := _running(cluster, namespace, n)) and v["metadata"]["uid"] != first_uids[n],
            30,
            f"{name} was not restarted after its crash",
        )
    wait_for(lambda: (_vmi(cluster, namespace, "once") or {}).get("status", {}).get("phase") == "Failed", 30,
             "Once's VMI did not fail")  # fmt: skip
    wait_for(lambda: printable(cluster, namespace, "once") == "Stopped", 30, "Once did not stop")

    # Halting a running VM deletes its VMI.
    cluster.kubectl(
        "-n", namespace, "patch", "vm", "always", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}'
    )
    wait_for(lambda: _vmi(cluster, namespace, "always") is None, 30, "Halted VM kept its VMI")
    wait_for(lambda: printable(cluster, namespace, "always") == "Stopped", 30, "Halted VM not Stopped")
    status = get_json(cluster, "-n", namespace, "vm", "always")["status"]
    assert status["observedGeneration"] == 2 and status["created"] is False and status["ready"] is False


def test_fills_a_node_to_allocatable_and_not_one_vm_more(
    cluster: LocalCluster, twin: None, namespace: str
) -> None:
    exact = {"nodeSelector": {"role": "exact"},
             "tolerations": [{"key": "exact", "operator": "Exists", "effect": "NoSchedule"}]}  # fmt: skip
    for i in range(4):
        apply(cluster, vm(f"fill-{i}", namespace, spec=exact))
    wait_for(
        lambda: (
            sorted(printable(cluster, namespace, f"fill-{i}") for i in range(4))
            == ["ErrorUnschedulable", "Running", "Running", "Running"]
        ),
        30,
        "expected exactly three VMs to fit",
    )
    for i in range(4):
        vmi = _vmi(cluster, namespace, f"fill-{i}")
        assert vmi is not None
        if printable(cluster, namespace, f"fill-{i}") == "Running":
            assert vmi["status"]["nodeName"] == "exact"
        else:
            message = next(c["message"] for c in vmi["status"]["conditions"] if c["type"] == "PodScheduled")
            assert "1 Insufficient memory" in message
            assert vmi["status"]["phase"] == "Pending"
            ready = get_json(cluster, "-n", namespace, "vm", f"fill-{i}")["status"]["conditions"][0]
            assert ready["reason"] == "Unschedulable"


def test_dedicated_numa_vms_land_in_one_cell_of_a_cpumanager_node(
    cluster: LocalCluster, twin: None, namespace: str
) -> None:
    numa = {"memory": {"guest": "6Gi", "hugepages": {"pageSize": "1Gi"}}}
    cpu = {"dedicatedCpuPlacement": True, "numa": {"guestMappingPassthrough": {}}}
    for i in range(3):
        apply(cluster, vm(f"numa-{i}", namespace, cores=2, cpu=cpu, domain=numa))
    wait_for(lambda: sum(printable(cluster, namespace, f"numa-{i}") == "Running" for i in range(3)) == 2, 30,
             "two NUMA VMs should run")  # fmt: skip
    states = sorted(printable(cluster, namespace, f"numa-{i}") for i in range(3))
    assert states == ["ErrorUnschedulable", "Running", "Running"]
    for i in range(3):
        vmi = _vmi(cluster, namespace, f"numa-{i}")
        assert vmi is not None
        if vmi["status"]["phase"] == "Running":
            assert vmi["status"]["nodeName"] == "pinned"
            assert vmi["status"]["qosClass"] == "Guaranteed"


def test_migration_phases_and_timing_follow_the_model(
    cluster: LocalCluster, twin: None, namespace: str
) -> None:
    apply(cluster, vm("big-vm", namespace, memory="32Gi", spec=NOT_EXACT,
                      annotations={"twin.virtfleet.io/dirty-rate": "100Mi"}))  # fmt: skip
    source = wait_for(lambda: _running(cluster, namespace, "big-vm"), 30, "never ran")["status"]["nodeName"]
    apply(cluster, migration("move-big", namespace, "big-vm"))
    done = wait_for(
        lambda: (
            (m := get_json(cluster, "-n", namespace, "vmim", "move-big")).get("status", {}).get("phase")
            in ("Succeeded", "Failed")
            and m
        ),
        60,
        "migration never finished",
    )
    status = done["status"]
    phases = [p["phase"] for p in status["phaseTransitionTimestamps"]]
    assert phases == [
        "Pending",
        "Scheduling",
        "Scheduled",
        "PreparingTarget",
        "TargetReady",
        "Running",
        "Succeeded",
    ]
    stamps = [_stamp(p["phaseTransitionTimestamp"]) for p in status["phaseTransitionTimestamps"]]
    assert stamps == sorted(stamps)
    state = status["migrationState"]
    assert state["sourceNode"] == source and state["targetNode"] != source and state["completed"] is True
    fleet = Fleet.model_validate(FLEET)
    expected = precopy.estimate(
        precopy.MigrationInputs(
            32 * GIB, 100 * 2**20, 1.25e9, completion_timeout_per_gib=fleet.cluster.completion_timeout_per_gib
        )
    )
    copy_seconds = (_stamp(state["endTimestamp"]) - _stamp(state["startTimestamp"])).total_seconds()
    assert copy_seconds == pytest.approx(expected.duration_s, rel=0.15)
    setup = (stamps[phases.index("Running")] - stamps[phases.index("Scheduling")]).total_seconds()
    assert setup == pytest.approx(fleet.defaults.migration_setup_seconds, rel=0.15)
    vmi = _vmi(cluster, namespace, "big-vm")
    assert vmi is not None and vmi["status"]["nodeName"] == state["targetNode"]
    assert vmi["status"]["migrationState"]["completed"] is True


def test_cluster_and_per_node_limits_hold(cluster: LocalCluster, twin: None, namespace: str) -> None:
    names = [f"lim-{i}" for i in range(12)]
    for name in names:
        apply(cluster, vm(name, namespace, memory="16Gi", spec=NOT_EXACT))
    for name in names:
        wait_for(lambda n=name: _running(cluster, namespace, n), 30, f"{name} never ran")
    sources = {n: _vmi(cluster, namespace, n)["status"]["nodeName"] for n in names}  # type: ignore[index]
    assert len(set(sources.values())) == 3
    # One request for all twelve, so they queue together (as a drain would create them).
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "List", "items": [migration(f"m-{n}", namespace, n) for n in names]},
    )
    wait_for(
        lambda: all(
            m.get("status", {}).get("phase") in ("Succeeded", "Failed")
            for m in get_json(cluster, "-n", namespace, "vmim")["items"]
        ),
        120,
        "migrations never finished",
    )
    intervals = []
    for item in get_json(cluster, "-n", namespace, "vmim")["items"]:
        stamps = {
            p["phase"]: _stamp(p["phaseTransitionTimestamp"])
            for p in item["status"]["phaseTransitionTimestamps"]
        }
        assert item["status"]["phase"] == "Succeeded"
        intervals.append((stamps["Scheduling"], stamps["Succeeded"], sources[item["spec"]["vmiName"]]))
    events = sorted(
        [(start, 1, node) for start, _, node in intervals] + [(end, -1, node) for _, end, node in intervals]
    )
    running, per_node = 0, defaultdict(int)
    peak, node_peak = 0, 0
    for _, delta, node in events:
        running += delta
        per_node[node] += delta
        peak = max(peak, running)
        node_peak = max(node_peak, per_node[node])
    assert peak == 5  # KubeVirt's parallelMigrationsPerCluster, reached and never exceeded
    assert node_peak == 2  # parallelOutboundMigrationsPerNode


def test_injected_failure_at_a_phase(cluster: LocalCluster, twin: None, namespace: str) -> None:
    apply(cluster, vm("faulty", namespace, spec=NOT_EXACT,
                      annotations={"twin.virtfleet.io/fail-migration-at": "PreparingTarget"}))  # fmt: skip
    source = wait_for(lambda: _running(cluster, namespace, "faulty"), 30, "never ran")["status"]["nodeName"]
    apply(cluster, migration("m-faulty", namespace, "faulty"))
    status = wait_for(
        lambda: (
            (s := get_json(cluster, "-n", namespace, "vmim", "m-faulty").get("status", {})).get("phase")
            == "Failed"
            and s
        ),
        30,
        "the injected failure did not happen",
    )
    assert [p["phase"] for p in status["phaseTransitionTimestamps"]] == [
        "Pending",
        "Scheduling",
        "Scheduled",
        "Failed",
    ]
    assert _vmi(cluster, namespace, "faulty")["status"]["nodeName"] == source  # type: ignore[index]


def test_policy_post_copy_and_non_convergence(cluster: LocalCluster, twin: None, namespace: str) -> None:
    apply(cluster, {
        "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
        "metadata": {"name": f"postcopy-{namespace}"},
        "spec": {"allowPostCopy": True, "selectors": {"virtualMachineInstanceSelector": {"policy": namespace}}},
    })  # fmt: skip
    busy = {"twin.virtfleet.io/dirty-rate": "2Gi"}  # dirties faster than the 10 Gbit/s link sends
    apply(
        cluster,
        vm("pc", namespace, memory="4Gi", labels={"policy": namespace}, annotations=busy, spec=NOT_EXACT),
    )
    apply(cluster, vm("stuck", namespace, memory="4Gi", annotations=busy, spec=NOT_EXACT))
    for name in ("pc", "stuck"):
        wait_for(lambda n=name: _running(cluster, namespace, n), 30, f"{name} never ran")
        apply(cluster, migration(f"m-{name}", namespace, name))
    for name, phase in (("pc", "Succeeded"), ("stuck", "Failed")):
        wait_for(
            lambda n=name, p=phase: (
                get_json(cluster, "-n", namespace, "vmim", f"m-{n}").get("status", {}).get("phase") == p
            ),
            60,
            f"m-{name} did not end {phase}",
        )
    post = get_json(cluster, "-n", namespace, "vmim", "m-pc")["status"]["migrationState"]
    assert post["mode"] == "PostCopy" and post["migrationPolicyName"] == f"postcopy-{namespace}"
    stuck = get_json(cluster, "-n", namespace, "vmim", "m-stuck")["status"]["migrationState"]
    assert stuck["failed"] is True and "completion timeout" in stuck["failureReason"]
    cluster.kubectl("delete", "migrationpolicy", f"postcopy-{namespace}")


def test_deleting_a_running_migration_aborts_it(cluster: LocalCluster, twin: None, namespace: str) -> None:
    apply(cluster, {
        "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
        "metadata": {"name": f"slow-{namespace}"},
        "spec": {"bandwidthPerMigration": "64Mi", "selectors": {"virtualMachineInstanceSelector": {"slow": namespace}}},
    })  # fmt: skip
    apply(cluster, vm("slow", namespace, memory="16Gi", labels={"slow": namespace}, spec=NOT_EXACT))
    source = wait_for(lambda: _running(cluster, namespace, "slow"), 30, "never ran")["status"]["nodeName"]
    apply(cluster, migration("m-slow", namespace, "slow"))
    wait_for(lambda: get_json(cluster, "-n", namespace, "vmim", "m-slow").get("status", {}).get("phase") == "Running",
             30, "never started copying")  # fmt: skip
    cluster.kubectl("-n", namespace, "delete", "vmim", "m-slow")
    state = wait_for(
        lambda: (s := _vmi(cluster, namespace, "slow")["status"]["migrationState"]).get("abortStatus") and s,  # type: ignore[index]
        30,
        "the abort never showed on the VMI",
    )
    assert state["abortRequested"] is True and state["abortStatus"] == "Succeeded" and state["failed"] is True
    assert _vmi(cluster, namespace, "slow")["status"]["nodeName"] == source  # type: ignore[index]
    cluster.kubectl("delete", "migrationpolicy", f"slow-{namespace}")


def test_node_failure_fails_its_vmis_and_always_restarts_elsewhere(
    cluster: LocalCluster, twin: None, namespace: str, tmp_path: Path
) -> None:
    apply(cluster, vm("survivor", namespace, spec=NOT_EXACT))
    first = wait_for(lambda: _running(cluster, namespace, "survivor"), 30, "never ran")
    node = first["status"]["nodeName"]
    not_ready = (
        '{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Test","message":"down"}]}}'
    )
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p", not_ready)
    try:
        second = wait_for(
            lambda: (
                (v := _running(cluster, namespace, "survivor"))
                and v["metadata"]["uid"] != first["metadata"]["uid"]
                and v
            ),
            30,
            "the VM was not restarted on another node",
        )
        assert second["status"]["nodeName"] != node
    finally:
        ready = '{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"ok"}]}}'
        cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p", ready)


def test_added_node_selector_picks_the_target(cluster: LocalCluster, twin: None, namespace: str) -> None:
    apply(cluster, vm("pinned-target", namespace, spec=NOT_EXACT))
    source = wait_for(lambda: _running(cluster, namespace, "pinned-target"), 30, "never ran")["status"][
        "nodeName"
    ]
    target = next(n for n in ("big-0", "big-1", "big-2") if n != source)
    apply(
        cluster,
        migration("m-sel", namespace, "pinned-target", addedNodeSelector={"kubernetes.io/hostname": target}),
    )
    status = wait_for(
        lambda: (
            (s := get_json(cluster, "-n", namespace, "vmim", "m-sel").get("status", {})).get("phase")
            == "Succeeded"
            and s
        ),
        60,
        "migration with addedNodeSelector did not succeed",
    )
    assert status["migrationState"]["targetNode"] == target
