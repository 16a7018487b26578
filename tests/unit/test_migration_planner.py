"""The pure migration planner: targets, limits, order, estimates, and nothing dropped."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtfleet.api.migrationplan import MigrationPlanSpec
from virtfleet.core.capacity import NodeFacts, Placed, VMLoad
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.migration_planner import Limits, PlanRequest, PlanVM, build_plan, plan_migrations, select

GIB = 2**30


def requests(cores: int = 2, memory: str = "4Gi", ratio: float = 4.0):  # type: ignore[no-untyped-def]
    spec = {"domain": {"cpu": {"cores": cores}, "memory": {"guest": memory},
                       "resources": {"requests": {"cpu": f"{int(cores * 1000 / ratio)}m"}}}}  # fmt: skip
    return launcher_requests(spec)


def fleet(count: int, cores: int = 32, memory_gib: int = 256) -> list[NodeFacts]:
    return [
        NodeFacts(f"n{i}", {"zone": "a" if i % 2 else "b"}, cores * 1000, memory_gib * GIB)
        for i in range(count)
    ]


def vms_on(node: str, count: int, pool: str = "p", **kw: object) -> list[PlanVM]:
    return [PlanVM(f"ns/{node}-{i}", pool, node, requests(), cpu_ratio=4.0, **kw) for i in range(count)]  # type: ignore[arg-type]


def loads(vms: list[PlanVM]) -> list[VMLoad]:
    return [VMLoad(vm.requests, vm.node) for vm in vms]


def peak(moves, key):  # type: ignore[no-untyped-def]
    events = sorted([(m.start_s, 1, key(m)) for m in moves] + [(m.end_s, -1, key(m)) for m in moves])
    current: dict[str, int] = defaultdict(int)
    top: dict[str, int] = defaultdict(int)
    for _, delta, k in events:
        current[k] += delta
        top[k] = max(top[k], current[k])
    return top


def test_drain_moves_every_vm_off_the_node_within_limits() -> None:
    nodes = fleet(4)
    selection = vms_on("n0", 20) + vms_on("n1", 3)
    plan = plan_migrations(PlanRequest("drain", selection, nodes, loads(selection), drain_nodes=frozenset({"n0"}),
                                       limits=Limits(max_parallel=5, max_outbound_per_node=2)))  # fmt: skip
    assert sorted(m.vm for m in plan.moves) == sorted(v.key for v in selection if v.node == "n0")
    assert all(m.target not in ("n0",) for m in plan.moves)
    assert peak(plan.moves, lambda m: m.source)["n0"] == 2  # the outbound limit binds
    assert plan.makespan_s > 0 and plan.unplaceable == []
    # 20 moves two at a time: ten rounds of the same estimate.
    assert plan.makespan_s == pytest.approx(10 * plan.moves[0].estimate.duration_s)


def test_cluster_limit_binds_when_many_sources_drain() -> None:
    nodes = fleet(8)
    selection = [vm for n in range(4) for vm in vms_on(f"n{n}", 5)]
    plan = plan_migrations(PlanRequest("drain", selection, nodes, loads(selection),
                                       drain_nodes=frozenset({"n0", "n1", "n2", "n3"}),
                                       limits=Limits(max_parallel=5, max_outbound_per_node=2, max_inbound_per_node=5)))  # fmt: skip
    overall = peak(plan.moves, lambda m: "all")["all"]
    assert overall == 5
    assert max(peak(plan.moves, lambda m: m.source).values()) <= 2
    assert max(peak(plan.moves, lambda m: m.target).values()) <= 5


def test_not_live_migratable_vms_are_listed_with_a_reason_or_moved_cold() -> None:
    nodes = fleet(2)
    selection = [*vms_on("n0", 2), PlanVM("ns/gpu", "p", "n0", requests(), live_migratable=False)]
    live = plan_migrations(
        PlanRequest("drain", selection, nodes, loads(selection), drain_nodes=frozenset({"n0"}))
    )
    assert live.unplaceable == [("ns/gpu", "not live-migratable and the plan's method is live")]
    fallback = plan_migrations(PlanRequest("drain", selection, nodes, loads(selection), drain_nodes=frozenset({"n0"}),
                                           method="liveWithColdFallback"))  # fmt: skip
    cold = next(m for m in fallback.moves if m.vm == "ns/gpu")
    assert cold.method == "cold" and cold.estimate.downtime_s > 1


def test_no_room_is_reported_not_dropped() -> None:
    nodes = fleet(2, cores=2, memory_gib=8)
    selection = [PlanVM(f"ns/big-{i}", "p", "n0", requests(4, "6Gi", 1.0), cpu_ratio=1.0) for i in range(2)]
    plan = plan_migrations(
        PlanRequest("drain", selection, nodes, loads(selection), drain_nodes=frozenset({"n0"}))
    )
    assert plan.moves == [] and len(plan.unplaceable) == 2
    assert "within the pool's ratios" in plan.unplaceable[0][1]


def test_rebalance_moves_the_fewest_largest_vms_until_no_node_is_over() -> None:
    nodes = fleet(3, cores=8)
    hot = [
        PlanVM(f"ns/hot-{i}", "p", "n0", requests(4, "4Gi"), cpu_ratio=4.0) for i in range(10)
    ]  # 40 vCPUs on 8 cores
    plan = plan_migrations(PlanRequest("rebalance", hot, nodes, loads(hot), cpu_threshold=4.0))
    # 40 vCPUs over an 8-core node at threshold 4 (32 vCPUs): exactly two 4-vCPU VMs must go.
    assert len(plan.moves) == 2 and {m.target for m in plan.moves} <= {"n1", "n2"}


def test_explicit_waves_run_in_sequence() -> None:
    nodes = fleet(4)
    selection = vms_on("n0", 4)
    waves = [["ns/n0-3"], ["ns/n0-0", "ns/n0-1"], ["ns/n0-2"]]
    plan = plan_migrations(PlanRequest("drain", selection, nodes, loads(selection), drain_nodes=frozenset({"n0"}),
                                       order="waves", waves=waves))  # fmt: skip
    by_vm = {m.vm: m for m in plan.moves}
    assert by_vm["ns/n0-3"].end_s <= by_vm["ns/n0-0"].start_s
    assert max(by_vm["ns/n0-0"].end_s, by_vm["ns/n0-1"].end_s) <= by_vm["ns/n0-2"].start_s
    assert plan.waves == 3


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 8),
    st.lists(
        st.tuples(
            st.integers(0, 7),
            st.sampled_from([1, 2, 4]),
            st.sampled_from(["2Gi", "4Gi", "8Gi"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 4),
)
def test_limits_hold_and_every_vm_is_accounted_for(
    node_count: int,
    shapes: list[tuple[int, int, str, bool]],
    parallel: int,
    outbound: int,
    inbound: int,
    budget: int,
) -> None:
    nodes = fleet(node_count, cores=16, memory_gib=64)
    selection = [
        PlanVM(
            f"ns/vm-{i}",
            f"pool-{i % 3}",
            f"n{node % node_count}",
            requests(cores, mem, 4.0),
            cpu_ratio=4.0,
            live_migratable=migratable,
        )
        for i, (node, cores, mem, migratable) in enumerate(shapes)
    ]
    limits = Limits(
        max_parallel=parallel,
        max_outbound_per_node=outbound,
        max_inbound_per_node=inbound,
        pool_budget=budget,
    )
    plan = plan_migrations(
        PlanRequest("drain", selection, nodes, loads(selection), drain_nodes=frozenset({"n0"}), limits=limits)
    )
    draining = {v.key for v in selection if v.node == "n0"}
    planned = [m.vm for m in plan.moves]
    listed = [vm for vm, _ in plan.unplaceable]
    assert len(planned) == len(set(planned))
    assert sorted(planned + listed) == sorted(draining)  # each exactly once
    if plan.moves:
        assert peak(plan.moves, lambda m: "all")["all"] <= parallel
        assert max(peak(plan.moves, lambda m: m.source).values()) <= outbound
        assert max(peak(plan.moves, lambda m: m.target).values()) <= inbound
        assert max(peak(plan.moves, lambda m: m.pool).values()) <= budget
        assert all(m.target != "n0" for m in plan.moves)


def test_targets_respect_the_vms_own_selector_anti_affinity_and_spread() -> None:
    nodes = [
        NodeFacts(
            f"n{i}", {"zone": "a" if i < 3 else "b", "disk": "ssd" if i != 2 else "hdd"}, 32_000, 256 * GIB
        )
        for i in range(6)
    ]
    # Four VMs of pool p on n0 (zone a), each wanting ssd nodes, one per node, spread over zones by 1.
    vms = [
        PlanVM(
            f"ns/v{i}",
            "p",
            "n0",
            requests(),
            cpu_ratio=4.0,
            node_selector=(("disk", "ssd"),),
            anti_affinity=True,
            spread=("zone", 1),
        )
        for i in range(4)
    ]
    others = [PlanVM("ns/w0", "p", "n4", requests(), cpu_ratio=4.0)]  # already one in zone b, on n4
    request = PlanRequest(
        "drain", vms, nodes, loads(vms + others), drain_nodes=frozenset({"n0"}),
        pool_nodes={"p": [vm.node for vm in vms + others]}, limits=Limits(max_parallel=4),
    )  # fmt: skip
    plan = plan_migrations(request)
    targets = [m.target for m in plan.moves]
    assert "n2" not in targets  # hdd
    assert "n4" not in targets  # anti-affinity: w0 runs there
    assert len(set(targets)) == len(targets)  # anti-affinity among the moved ones too
    # ssd nodes left: n1 (zone a), n3 and n5 (zone b): three VMs fit; the fourth cannot be placed.
    assert sorted(targets) == ["n1", "n3", "n5"]
    assert [reason for _, reason in plan.unplaceable] == [
        "no target node satisfies its nodeSelector, anti-affinity, topology spread with room within its "
        "capacity or its pool's ratios"
    ]


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.integers(2, 8),
    vms=st.integers(1, 20),
    max_skew=st.integers(1, 3),
    anti=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_spread_and_anti_affinity_hold_on_every_plan(
    nodes: int, vms: int, max_skew: int, anti: bool, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    facts = [NodeFacts(f"n{i}", {"zone": f"z{i % 3}"}, 64_000, 512 * GIB) for i in range(nodes)]
    fleet = [PlanVM(f"ns/v{i:02}", "p", f"n{rng.randrange(nodes)}", requests(), cpu_ratio=4.0, anti_affinity=anti,
                    spread=("zone", max_skew)) for i in range(vms)]  # fmt: skip
    drained = frozenset({"n0"})
    request = PlanRequest("drain", fleet, facts, loads(fleet), drain_nodes=drained,
                          pool_nodes={"p": [vm.node for vm in fleet]})  # fmt: skip
    plan = plan_migrations(request)
    zone_of = {n.name: n.labels["zone"] for n in facts}
    where = {vm.key: vm.node for vm in fleet}
    # Replay the moves in planning order (priority 0: by name) with the scheduler's rules for the target
    # pod, the source VM still counted: every move must pass them.
    for move in sorted(plan.moves, key=lambda m: m.vm):
        zones = dict.fromkeys(zone_of.values(), 0)
        for node in where.values():
            zones[zone_of[node]] += 1
        assert zones[zone_of[move.target]] + 1 - min(zones.values()) <= max_skew
        if anti:
            assert move.target not in where.values()
        where[move.vm] = move.target
    assert len(plan.moves) + len([u for u in plan.unplaceable if not u[0].startswith("node/")]) == sum(
        1 for vm in fleet if vm.node in drained
    )


# -- from a MigrationPlan's spec to the planner's request --------------------------------------------------


def placed(name: str, node: str, pool: str = "web", namespace: str = "ns", **annotations: str) -> Placed:
    return Placed(f"{namespace}/{name}", node, requests(), labels=(("virtfleet.io/pool", pool),),
                  annotations=tuple(annotations.items()))  # fmt: skip


SPEC_FLEET = [placed("web-0", "n0"), placed("web-1", "n0"), placed("db-0", "n0", pool="db"),
              placed("web-2", "n1"), placed("other", "n0", namespace="elsewhere")]  # fmt: skip


def test_selection_is_namespaced_and_combines_fields() -> None:
    spec = MigrationPlanSpec.model_validate(
        {"goal": "drain", "nodes": ["n0"], "selection": {"pools": ["web"]}}
    )
    assert [p.key for p in select(spec, "ns", SPEC_FLEET, {})] == ["ns/web-0", "ns/web-1", "ns/web-2"]
    spec = MigrationPlanSpec.model_validate(
        {"goal": "drain", "nodes": ["n0"], "selection": {"vms": ["db-0"]}}
    )
    assert [p.key for p in select(spec, "ns", SPEC_FLEET, {})] == ["ns/db-0"]


def test_priority_annotation_orders_the_moves() -> None:
    vms = [placed("a", "n0"), placed("b", "n0", **{"virtfleet.io/priority": "10"})]
    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"], "dryRun": True,
                                             "limits": {"maxParallel": 1}})  # fmt: skip
    plan = build_plan(spec, "ns", vms, fleet(3), {})
    assert [m.vm for m in plan.moves] == ["ns/b", "ns/a"]
