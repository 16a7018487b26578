"""The twin's scheduler: kube-scheduler's filters and KubeVirt's rendering of launcher pods."""

from __future__ import annotations

from typing import Any

import pytest

from virtfleet.core.kubevirt import MIB, launcher_requests, memory_overhead
from virtfleet.twin.fleet import Fleet, node_manifests
from virtfleet.twin.scheduling import ClusterState, NodeInfo, Placement, PodView

GIB = 2**30


def _cluster(**group: Any) -> ClusterState:
    fleet = Fleet.model_validate({"nodes": [{"name": "n", "cpu": 8, "memory": "32Gi", **group}]})
    state = ClusterState()
    for manifest in node_manifests(fleet):
        state.set_node(NodeInfo.from_node(manifest))
    return state


def _spec(cpu: dict[str, Any] | None = None, memory: str = "2Gi", **extra: Any) -> dict[str, Any]:
    domain: dict[str, Any] = {"cpu": cpu or {"cores": 2}, "memory": {"guest": memory}}
    domain.update(extra.pop("domain", {}))
    return {"domain": domain, **extra}


def _pod(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None, ratio: float = 10) -> PodView:
    return PodView.from_vmi(f"ns/{name}", "ns", labels or {}, spec, launcher_requests(spec, ratio))


def _fill(state: ClusterState, spec: dict[str, Any], limit: int = 1000, **kw: Any) -> list[str]:
    placed = []
    for i in range(limit):
        pod = _pod(f"vm-{i}", spec, **kw)
        decision = state.schedule(pod)
        if decision.node is None:
            break
        state.place(Placement(pod, decision.node, decision.cpuset, decision.cell))
        placed.append(decision.node)
    return placed


def test_shared_cpu_requests_follow_the_allocation_ratio() -> None:
    requests = launcher_requests(_spec({"sockets": 2, "cores": 2}, "4Gi"), 10)
    assert requests.cpu_millis == 400 and requests.vcpus == 4
    assert requests.memory_bytes == 4 * GIB + memory_overhead(4, 0)
    explicit = launcher_requests(_spec(domain={"resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}))
    assert explicit.cpu_millis == 1500 and explicit.memory_bytes == GIB + memory_overhead(2, GIB)


def test_overhead_is_kubevirt_1_7s_formula() -> None:
    # A 1-vCPU, 1Gi VM: page tables ceil(1 GiB in kB) x 1000 / 512 = 2,097,152 bytes, then 220 MiB fixed,
    # 8 MiB per vCPU, 8 MiB IOThread and 32 MiB graphics: 270 MiB, as virt-controller v1.7.0 renders it.
    assert memory_overhead(1, GIB) == 270 * MIB
    assert memory_overhead(1, GIB, graphics=False) == 238 * MIB
    assert memory_overhead(1, GIB, guaranteed=True) == 370 * MIB
    # Page tables follow the memory request, not the guest: overcommitted memory costs less.
    assert memory_overhead(4, 8 * GIB) - memory_overhead(4, 2 * GIB) == (8 * GIB - 2 * GIB) // 512


@pytest.mark.parametrize(
    ("domain", "cpu_millis", "memory_bytes"),
    [
        # Read off real virt-launcher pods of KubeVirt v1.7.0 (the kind cluster, hack/kubevirt): the compute
        # container's requests for each VMI spec.
        ({"cpu": {"sockets": 1, "cores": 2, "threads": 1}, "memory": {"guest": "1Gi"}}, 200, 1300 * MIB),
        (
            {
                "cpu": {"sockets": 1, "cores": 2, "threads": 1},
                "memory": {"guest": "1Gi"},
                "resources": {"requests": {"memory": "700Mi", "cpu": "250m"}},
            },
            250,
            1_024_843_777,
        ),
        (
            {
                "cpu": {"sockets": 1, "cores": 1, "threads": 1, "maxSockets": 2},
                "memory": {"guest": "1Gi", "maxGuest": "2Gi"},
            },
            100,
            1292 * MIB,
        ),
    ],
)
def test_requests_match_real_launcher_pods(
    domain: dict[str, Any], cpu_millis: int, memory_bytes: int
) -> None:
    requests = launcher_requests({"domain": domain}, 10)
    assert (requests.cpu_millis, requests.memory_bytes) == (cpu_millis, memory_bytes)


def test_guaranteed_qos_adds_kubevirts_extra_overhead() -> None:
    resources = {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    guaranteed = launcher_requests(_spec(domain={"resources": resources}))
    burstable = launcher_requests(_spec(domain={"resources": {"requests": resources["requests"]}}))
    assert guaranteed.memory_bytes - burstable.memory_bytes == 100 * MIB


def test_dedicated_cpus_are_whole_cores_plus_the_emulator_thread() -> None:
    requests = launcher_requests(
        _spec({"cores": 4, "dedicatedCpuPlacement": True, "isolateEmulatorThread": True})
    )
    assert requests.dedicated_cores == 5 and requests.cpu_millis == 5000


def test_hugepages_move_guest_memory_out_of_the_memory_request() -> None:
    requests = launcher_requests(
        _spec(memory="4Gi", domain={"memory": {"guest": "4Gi", "hugepages": {"pageSize": "1Gi"}}})
    )
    assert requests.hugepages_1gi_bytes == 4 * GIB
    assert requests.memory_bytes == memory_overhead(2, 0)


def test_fills_a_node_exactly_to_its_memory_and_not_one_more() -> None:
    per_vm = 2 * GIB + memory_overhead(2, 0) + 35_000_000  # compute, and guest-console-log's 35M
    assert per_vm == launcher_requests(_spec()).pod_memory_bytes
    state = _cluster(memory=f"{per_vm * 7}", cpu=64)
    placed = _fill(state, _spec())
    assert len(placed) == 7
    assert state.used("n-0" if "n-0" in state.nodes else "n")[1] == per_vm * 7
    reason = state.schedule(_pod("extra", _spec())).reason
    assert "1 Insufficient memory" in reason and reason.startswith("0/1 nodes are available")


def test_fills_cpu_by_the_allocation_ratio() -> None:
    state = _cluster(cpu=2, memory="1Ti")  # 2000m; 200m per 2-vCPU VM at ratio 10, +5m guest-console-log
    assert len(_fill(state, _spec())) == 9


@pytest.mark.parametrize(
    ("group", "spec", "reason"),
    [
        ({"unschedulable": True}, _spec(), "unschedulable"),
        ({"ready": False}, _spec(), "not ready"),
        ({"taints": [{"key": "gpu", "effect": "NoSchedule"}]}, _spec(), "untolerated taint"),
        ({}, _spec(nodeSelector={"disk": "ssd"}), "node affinity/selector"),
        ({}, _spec({"cores": 2, "dedicatedCpuPlacement": True}), "node affinity/selector"),
    ],
)
def test_filters(group: dict[str, Any], spec: dict[str, Any], reason: str) -> None:
    assert reason in _cluster(**group).schedule(_pod("x", spec)).reason


def test_tolerations_and_selectors_admit() -> None:
    state = _cluster(taints=[{"key": "gpu", "value": "a", "effect": "NoSchedule"}], labels={"disk": "ssd"})
    spec = _spec(
        nodeSelector={"disk": "ssd"},
        tolerations=[{"key": "gpu", "operator": "Equal", "value": "a", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}]}
        ]}}},
    )  # fmt: skip
    assert state.schedule(_pod("x", spec)).node is not None


def test_pinned_cpus_come_from_cpumanager_nodes_and_never_overlap() -> None:
    state = _cluster(cpu=8, cpuManager=True)
    spec = _spec({"cores": 3, "dedicatedCpuPlacement": True})
    placed = _fill(state, spec)
    assert len(placed) == 2  # 6 of 8 cores; a third VM needs 3
    cpusets = [p.cpuset for p in state.placements.values()]
    assert len({c for s in cpusets for c in s}) == 6


def test_numa_passthrough_uses_a_single_cell() -> None:
    state = _cluster(
        cpu=8, memory="64Gi", hugepages1Gi="16Gi", cpuManager=True,
        numa=[{"cpus": "0-3", "memory": "32Gi", "hugepages1Gi": "8Gi"},
              {"cpus": "4-7", "memory": "32Gi", "hugepages1Gi": "8Gi"}],
    )  # fmt: skip
    # Two VMs take 2 cores and 5Gi of one cell's 8Gi each; the node keeps 4 cores and 6Gi free,
    # but no single cell has 5Gi left, so a third passthrough VM does not fit.
    spec = _spec(
        {"cores": 2, "dedicatedCpuPlacement": True, "numa": {"guestMappingPassthrough": {}}},
        domain={"memory": {"guest": "5Gi", "hugepages": {"pageSize": "1Gi"}}},
    )
    placed = _fill(state, spec)
    assert len(placed) == 2
    cells = sorted((p.cell, p.cpuset) for p in state.placements.values())
    assert cells[0][0] == 0 and set(cells[0][1]) <= {0, 1, 2, 3}
    assert cells[1][0] == 1 and set(cells[1][1]) <= {4, 5, 6, 7}
    assert "NUMA" in state.schedule(_pod("third", spec)).reason


def test_required_anti_affinity_spreads_one_per_host() -> None:
    fleet = Fleet.model_validate({"nodes": [{"name": "h", "count": 3, "cpu": 64, "memory": "256Gi"}]})
    state = ClusterState()
    for manifest in node_manifests(fleet):
        state.set_node(NodeInfo.from_node(manifest))
    spec = _spec(affinity={"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}
    ]}})  # fmt: skip
    placed = _fill(state, spec, labels={"app": "db"})
    assert sorted(placed) == ["h-0", "h-1", "h-2"]


def test_topology_spread_keeps_zones_within_max_skew() -> None:
    fleet = Fleet.model_validate({"nodes": [
        {"name": "a", "count": 2, "zone": "za", "cpu": 64, "memory": "512Gi"},
        {"name": "b", "count": 1, "zone": "zb", "cpu": 64, "memory": "512Gi"},
    ]})  # fmt: skip
    state = ClusterState()
    for manifest in node_manifests(fleet):
        state.set_node(NodeInfo.from_node(manifest))
    spec = _spec(topologySpreadConstraints=[{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}},
    }])  # fmt: skip
    placed = _fill(state, spec, limit=10, labels={"app": "web"})
    zones = [state.nodes[n].labels["topology.kubernetes.io/zone"] for n in placed]
    assert abs(zones.count("za") - zones.count("zb")) <= 1


def test_removal_frees_capacity() -> None:
    state = _cluster(cpu=2, memory="1Ti")
    _fill(state, _spec())
    assert state.schedule(_pod("more", _spec())).node is None
    state.remove("ns/vm-0")
    assert state.schedule(_pod("more", _spec())).node is not None
    assert MIB  # the constant is shared with the operator's accounting
