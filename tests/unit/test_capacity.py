"""Capacity accounting and its properties: ratios hold on every node whatever the scale operations."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from virtfleet.api.pool import VirtualMachinePoolSpec
from virtfleet.api.quantity import parse_bytes, parse_millicores
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core.capacity import (
    Capacity,
    NodeFacts,
    VMLoad,
    effective_cpu_ratio,
    effective_memory_ratio,
    plan_capacity,
    with_other_pods,
)
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.render import PoolContext, render_vm
from virtfleet.kube.facts import other_pod_of, pod_requests

GIB = 2**30


def node(name: str, cores: int, memory_gib: int, **labels: str) -> NodeFacts:
    return NodeFacts(name, labels, cores * 1000, memory_gib * GIB)


def vm_requests(cores: int, memory: str, cpu_ratio: float, memory_ratio: float, policy: str = "shared"):  # type: ignore[no-untyped-def]
    template = VMTemplateSpec.model_validate(
        {"cpu": {"cores": cores, "policy": policy}, "memory": {"guest": memory},
         "disks": [{"name": "root", "source": {"containerImage": "x"}}]}
    )  # fmt: skip
    pool = VirtualMachinePoolSpec.model_validate({"templateRef": {"name": "t"}})
    vm = render_vm(
        PoolContext("p", "ns", "uid", pool, cpu_ratio, memory_ratio), "t", "0123456789", template, 0
    )
    return vm, launcher_requests(vm["spec"]["template"]["spec"])


def test_node_facts_from_a_twin_node() -> None:
    body = {
        "metadata": {"name": "n", "labels": {"kubevirt.io/cpumanager": "true"},
                     "annotations": {"virtfleet.io/numa-topology": json.dumps(
                         {"cells": [{"id": 0, "cpus": "0-3,8", "memory": "8Gi", "hugepages1Gi": "4Gi"}]})}},
        "spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "7500m", "memory": "30Gi", "hugepages-1Gi": "4Gi"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip
    facts = NodeFacts.from_node(body)
    assert facts.cores == 7 and facts.cpumanager and facts.ready and facts.tainted
    assert facts.cells[0].cpus == 5 and facts.cells[0].hugepages_1gi == 4 * GIB


def test_four_to_one_fits_four_times_the_vcpus() -> None:
    _, requests = vm_requests(4, "4Gi", cpu_ratio=4, memory_ratio=1)
    result = plan_capacity([node("a", 16, 1024)], [], unplaced=0, wanted=100, per_vm=requests,
                           node_selector={}, cpu_ratio=4, memory_ratio=1)  # fmt: skip
    # 4 vCPUs at 4:1 request 1000m, and each launcher pod 6m more for guest-console-log and the
    # containerDisk container: 16 would need 16,096m of 16,000m, so the real scheduler places 15.
    assert result.creatable == 15
    assert "85 of 100 new VMs do not fit" in result.message


def test_unplaced_vms_count_before_new_ones() -> None:
    _, requests = vm_requests(2, "2Gi", 1, 1)
    # 2,006m per VM (2 cores at 1:1, plus the launcher's support containers): 8 cores hold 3.
    result = plan_capacity([node("a", 8, 64)], [], unplaced=2, wanted=2, per_vm=requests,
                           node_selector={}, cpu_ratio=1, memory_ratio=1)  # fmt: skip
    assert result.creatable == 1


def test_a_spread_constraint_rules_out_nodes_without_its_key() -> None:
    # Found on kind with real KubeVirt: workers without topology.kubernetes.io/zone left example 02's
    # spread pool ErrorUnschedulable ("missing required label") while the pool counted every VM placeable.
    _, requests = vm_requests(2, "2Gi", 1, 1)
    zone = "topology.kubernetes.io/zone"
    nodes = [node("a", 8, 64), node("b", 8, 64, **{zone: "z1"})]
    result = plan_capacity(nodes, [], 0, 10, requests, {}, 1, 1, spread_keys=[zone])
    assert result.eligible_nodes == 1 and result.creatable == 3  # 2,006m each on 8,000m
    bare = plan_capacity([node("a", 8, 64)], [], 0, 2, requests, {}, 1, 1, spread_keys=[zone])
    assert bare.creatable == 0 and zone in bare.message


def _pod(node_name: str | None, *containers: dict[str, str], **extra: object) -> dict[str, object]:
    return {
        "metadata": {"name": "p", "labels": extra.pop("labels", {})},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"requests": c}} for c in containers],
                 **extra},
        "status": {"phase": "Running"},
    }  # fmt: skip


def test_pods_that_are_not_vms_take_room_the_scheduler_counts() -> None:
    # On kind with real KubeVirt each worker runs kindnet (100m) and virt-handler (10m), and one of them the
    # operator: the scheduler counts them, so must the pool. 1 vCPU at 2:1 is 506m a VM with its launcher's
    # support containers: 3 fit a bare 2-core worker, 2 beside 600m of other pods.
    _, requests = vm_requests(1, "1Gi", 2, 1)
    workers = [node("w1", 2, 16), node("w2", 2, 16)]
    kindnet = _pod("w1", {"cpu": "100m", "memory": "50Mi"}, {"cpu": "500m", "memory": "256Mi"})
    handler = _pod("w2", {"cpu": "10m", "memory": "325Mi"})
    launcher = _pod("w1", {"cpu": "1", "memory": "1Gi"}, labels={"kubevirt.io": "virt-launcher"})
    index: dict[str, list[tuple[int, int]]] = {}
    for pod in (kindnet, handler, launcher, _pod(None, {"cpu": "1"})):
        found = other_pod_of(pod)
        if found is not None:
            index.setdefault(found[0], []).append(found[1])
    assert index == {"w1": [(600, 306 * 2**20)], "w2": [(10, 325 * 2**20)]}  # the launcher is the VM itself
    counted = with_other_pods(workers, index)
    assert plan_capacity(workers, [], 0, 8, requests, {}, 2, 1).creatable == 6
    assert plan_capacity(counted, [], 0, 8, requests, {}, 2, 1).creatable == 5
    assert counted[0].cores == 2  # the ratio still counts physical cores


def test_pod_requests_follow_the_scheduler() -> None:
    # Containers add up; an init container counts only if it is larger; sidecars run alongside; overhead adds.
    spec = {
        "containers": [{"resources": {"requests": {"cpu": "200m", "memory": "100Mi"}}}, {"name": "bare"}],
        "initContainers": [
            {"restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
            {"resources": {"requests": {"cpu": "1", "memory": "10Mi"}}},
        ],
        "overhead": {"cpu": "10m", "memory": "1Mi"},
    }
    assert pod_requests(spec) == (1060, 101 * 2**20)
    assert pod_requests({**spec, "resources": {"requests": {"cpu": "3"}}}) == (3010, 101 * 2**20)
    assert other_pod_of({**_pod("w", {"cpu": "1"}), "status": {"phase": "Succeeded"}}) is None
    assert other_pod_of(_pod("w", {})) is None


def test_dedicated_vms_need_cpumanager_nodes() -> None:
    _, requests = vm_requests(2, "2Gi", 1, 1, policy="dedicated")
    plain = plan_capacity([node("a", 8, 64)], [], 0, 1, requests, {"kubevirt.io/cpumanager": "true"}, 1, 1)
    pinned = plan_capacity([node("b", 8, 64, **{"kubevirt.io/cpumanager": "true"})], [], 0, 10, requests,
                           {"kubevirt.io/cpumanager": "true"}, 1, 1)  # fmt: skip
    assert plain.creatable == 0 and plain.eligible_nodes == 0
    # 2 pinned cores each, plus 25m of support containers at their limits (Guaranteed QoS): 3 on 8 cores.
    assert pinned.creatable == 3


ratios = st.sampled_from([1.0, 1.5, 2.0, 4.0, 8.0])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(2, 64), st.integers(8, 512)), min_size=1, max_size=5),
    st.lists(
        st.tuples(st.integers(1, 8), st.sampled_from(["1Gi", "2Gi", "4Gi", "8Gi"])), min_size=1, max_size=3
    ),
    ratios,
    ratios,
    st.lists(st.integers(0, 40), min_size=1, max_size=6),
)
def test_effective_ratios_never_exceed_the_configured_ones(
    node_shapes: list[tuple[int, int]],
    vm_shapes: list[tuple[int, str]],
    cpu_ratio: float,
    memory_ratio: float,
    replica_steps: list[int],
) -> None:
    """Any sequence of scale operations of pools sharing one set of ratios keeps every node within them."""
    nodes = [node(f"n{i}", cores, mem) for i, (cores, mem) in enumerate(node_shapes)]
    placed: list[VMLoad] = []
    per_shape = [vm_requests(c, m, cpu_ratio, memory_ratio)[1] for c, m in vm_shapes]
    counts = [0] * len(per_shape)
    for step, wanted in enumerate(replica_steps):
        index = step % len(per_shape)
        requests = per_shape[index]
        if wanted < counts[index]:  # scale in: drop the newest of this shape
            for _ in range(counts[index] - wanted):
                victim = max(i for i, load in enumerate(placed) if load.requests == requests)
                placed.pop(victim)
            counts[index] = wanted
            continue
        result = plan_capacity(
            nodes, placed, 0, wanted - counts[index], requests, {}, cpu_ratio, memory_ratio
        )
        capacity = Capacity(nodes, placed)
        before = len(placed)
        assert (
            capacity.fill(VMLoad(requests), nodes, cpu_ratio, memory_ratio, result.creatable)
            == result.creatable
        )
        for name, usage in capacity.usage.items():
            facts = capacity.nodes[name]
            assert effective_cpu_ratio(facts, usage) <= cpu_ratio + 1e-9
            assert effective_memory_ratio(facts, usage) <= memory_ratio + 1e-9
            assert usage.cpu_millis <= facts.cpu_millis and usage.memory <= facts.memory
        # Record where the new VMs went, as the scheduler would place them.
        shadow = Capacity(nodes, placed)
        for _ in range(result.creatable):
            for facts in sorted(
                nodes, key=lambda n: (-(n.memory - shadow.usage[n.name].memory) / n.memory, n.name)
            ):
                if shadow.fits(facts, VMLoad(requests), cpu_ratio, memory_ratio) is not None:
                    load = VMLoad(requests, facts.name)
                    shadow.usage[facts.name].add(load)
                    placed.append(load)
                    break
        counts[index] += len(placed) - before


@given(st.integers(1, 32), st.sampled_from(["512Mi", "1Gi", "3Gi", "16Gi"]), ratios, ratios,
       st.sampled_from(["shared", "dedicated"]))  # fmt: skip
def test_requests_never_exceed_limits(
    cores: int, memory: str, cpu_ratio: float, memory_ratio: float, policy: str
) -> None:
    if policy == "dedicated":
        cpu_ratio = 1.0
    vm, _ = vm_requests(cores, memory, cpu_ratio, memory_ratio, policy)
    resources = vm["spec"]["template"]["spec"]["domain"]["resources"]
    requests, limits = resources["requests"], resources.get("limits", {})
    assert parse_millicores(requests["cpu"]) <= parse_millicores(limits["cpu"])
    assert parse_millicores(limits["cpu"]) == cores * 1000
    if "memory" in limits:
        assert parse_bytes(requests["memory"]) <= parse_bytes(limits["memory"])
    assert parse_bytes(requests["memory"]) <= parse_bytes(memory)


def test_numa_passthrough_vms_must_fit_one_cell() -> None:
    from virtfleet.core.capacity import Cell

    template = VMTemplateSpec.model_validate(
        {"cpu": {"cores": 3, "policy": "dedicated"}, "memory": {"guest": "5Gi", "hugepages": "1Gi"},
         "numa": {"guestMappingPassthrough": True}, "disks": [{"name": "root", "source": {"containerImage": "x"}}]}
    )  # fmt: skip
    pool = VirtualMachinePoolSpec.model_validate({"templateRef": {"name": "t"}})
    vm = render_vm(PoolContext("p", "ns", "uid", pool, 1, 1), "t", "0123456789", template, 0)
    requests = launcher_requests(vm["spec"]["template"]["spec"])
    two_cells = NodeFacts("n", {"kubevirt.io/cpumanager": "true"}, 8000, 64 * GIB, hugepages_1gi=16 * GIB,
                          cells=(Cell(4, 8 * GIB), Cell(4, 8 * GIB)))  # fmt: skip
    result = plan_capacity([two_cells], [], 0, 5, requests, {"kubevirt.io/cpumanager": "true"}, 1, 1)
    # The node has 8 cores and 16Gi of hugepages for 2 VMs of 3 cores / 5Gi, but each cell fits only one.
    assert result.creatable == 2


def place_one_by_one(
    capacity: Capacity, load: VMLoad, nodes: list[NodeFacts], ratios: tuple[float, float], limit: int
) -> int:
    """The straightforward greedy `Capacity.fill` must agree with: every copy tries every node and takes
    the one with the most free memory."""
    placed = 0
    while placed < limit:
        fitting = [(n, c) for n in nodes if (c := capacity.fits(n, load, *ratios)) is not None]
        if not fitting:
            break
        target, cell = max(
            fitting,
            key=lambda nc: ((nc[0].memory - capacity.usage[nc[0].name].memory) / nc[0].memory, nc[0].name),
        )
        capacity.usage[target.name].add(load, cell if load.requests.numa_passthrough else None)
        placed += 1
    return placed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 64), st.integers(1, 256), st.integers(0, 3), st.booleans(), st.integers(0, 2)
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 16),
    st.integers(0, 32 * GIB),
    st.integers(0, 4),
    st.sampled_from([0, GIB, 2 * GIB]),
    st.booleans(),
    ratios,
    ratios,
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 8), st.integers(1, 16)), max_size=12),
    st.integers(0, 40),
    st.integers(0, 200),
)
def test_filling_node_by_node_counts_what_one_by_one_placement_does(
    node_shapes: list[tuple[int, int, int, bool, int]],
    vcpus: int,
    memory: int,
    dedicated_cores: int,
    hugepages: int,
    numa: bool,
    cpu_ratio: float,
    memory_ratio: float,
    existing: list[tuple[int, int, int]],
    unplaced: int,
    wanted: int,
) -> None:
    """Same count, NUMA cells, dedicated cores, hugepages and existing VMs included, for the pool's two
    steps (its unplaced VMs first, then the new ones)."""
    from virtfleet.core.capacity import Cell
    from virtfleet.core.kubevirt import LauncherRequests

    nodes = []
    for i, (cores, mem_gib, cells, cpumanager, taken) in enumerate(node_shapes):
        labels = {"kubevirt.io/cpumanager": "true"} if cpumanager else {}
        numa_cells = tuple(Cell(max(cores // max(cells, 1), 1), 4 * GIB, 0) for _ in range(cells))
        nodes.append(NodeFacts(f"n{i}", labels, cores * 1000 + taken * 250, mem_gib * GIB,
                               hugepages_1gi=4 * GIB * cells, cells=numa_cells))  # fmt: skip
    per_vm = LauncherRequests(
        cpu_millis=dedicated_cores * 1000 or vcpus * 100,
        memory_bytes=memory + GIB // 4,
        hugepages_1gi_bytes=hugepages,
        dedicated_cores=dedicated_cores,
        vcpus=dedicated_cores or vcpus,
        guest_memory_bytes=memory,
        numa_passthrough=numa,
    )
    placed = [
        VMLoad(LauncherRequests(cpu_millis=c * 100, memory_bytes=m * GIB, vcpus=c, guest_memory_bytes=m * GIB),
               f"n{n % len(nodes)}")
        for n, c, m in existing
    ]  # fmt: skip
    load, both = VMLoad(per_vm), (cpu_ratio, memory_ratio)
    eligible = Capacity(nodes, placed).eligible({}, per_vm.dedicated)
    fast, slow = Capacity(nodes, placed), Capacity(nodes, placed)
    assert fast.fill(load, eligible, *both, unplaced) == place_one_by_one(
        slow, load, eligible, both, unplaced
    )
    assert fast.fill(load, eligible, *both, wanted) == place_one_by_one(slow, load, eligible, both, wanted)
