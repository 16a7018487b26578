"""Planner benchmark.

1. Plan 10,000 VMs over 500 nodes (pure code): median of 5 runs, target <= 1 s. The cost curve: the same
   plan at 1,000, 10,000 and 100,000 VMs (20 VMs per node), target <= 2 s at 100,000 VMs x 5,000 nodes.
2. Execute a plan in the twin (simulated KubeVirt) with the real operator process and the real control
   plane: drain 3 nodes of 100 VMs with maxParallel 5 (KubeVirt's own limit is 5 per cluster, 2 per
   source node, so maxParallel binds). Mean concurrency / maxParallel is measured from the migrations'
   own phase timestamps, from the first start to the last start (while work remained to be started),
   target >= 0.95; the whole window including the final drain-down is reported too.

Run with `make bench-planner` (builds or reuses the control plane) or `.venv/bin/python bench/planner.py
[--no-execute]`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results
from plan_execution import execute

from virtfleet.core.capacity import NodeFacts, VMLoad
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.migration_planner import Limits, PlanRequest, PlanVM, plan_migrations

GIB = 2**30


def build(vms: int, nodes: int, drain: int, seed: int, goal: str) -> PlanRequest:
    rng = random.Random(seed)
    facts = [NodeFacts(f"node-{i}", {"zone": f"z{i % 3}"}, 96_000, 768 * GIB) for i in range(nodes)]
    shapes = []
    for cores, memory in ((1, "2Gi"), (2, "4Gi"), (4, "8Gi"), (8, "16Gi")):
        spec = {"domain": {"cpu": {"cores": cores}, "memory": {"guest": memory},
                           "resources": {"requests": {"cpu": f"{cores * 250}m"}}}}  # fmt: skip
        shapes.append(launcher_requests(spec))
    selection = [
        PlanVM(
            f"ns/vm-{i}",
            f"pool-{i % 40}",
            f"node-{i % nodes}",
            rng.choice(shapes),
            cpu_ratio=4.0,
            priority=rng.randint(0, 3),
            dirty_rate_bps=rng.choice([10, 50, 200]) * 2**20,
        )
        for i in range(vms)
    ]
    placed = [VMLoad(vm.requests, vm.node) for vm in selection]
    limits = Limits(max_parallel=20, max_outbound_per_node=2, max_inbound_per_node=2)
    if goal == "move":
        # Every VM outside zone z0 moves into it: two thirds of the 10,000 VMs, the heaviest case.
        return PlanRequest("move", selection, facts, placed, target_selector={"zone": "z0"}, limits=limits)
    drained = frozenset(f"node-{i}" for i in range(drain))
    return PlanRequest("drain", selection, facts, placed, drain_nodes=drained, limits=limits)  # fmt: skip


def planner_curve(sizes: str, goal: str) -> dict[str, dict[str, object]]:
    """Planner seconds (median of 3) per fleet size, 20 VMs per node, a tenth of the nodes drained."""
    figures: dict[str, dict[str, object]] = {}
    for vms in (int(size) for size in sizes.split(",") if size):
        nodes = max(vms // 20, 1)
        request = build(vms, nodes, max(nodes // 10, 1), seed=7, goal=goal)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            plan_migrations(request)
            timings.append(time.perf_counter() - started)
        seconds = sorted(timings)[1]
        print(f"planner cost curve: {vms} VMs over {nodes} nodes in {seconds:.3f}s (median of 3)")
        target = "<= 2" if vms >= 100_000 else "reported"
        figures[f"planner_seconds_{vms}_vms"] = {"value": round(seconds, 3), "unit": "s", "target": target}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--drain", type=int, default=50, help="nodes drained (their VMs all move)")
    parser.add_argument("--goal", choices=["move", "drain"], default="move")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-execute", action="store_true", help="skip the execution in the twin")
    parser.add_argument("--execute-vms", type=int, default=100)
    parser.add_argument(
        "--curve", default="1000,10000,100000", help="fleet sizes (VMs, 20 per node) for the cost curve"
    )
    args = parser.parse_args()
    request = build(args.vms, args.nodes, args.drain, seed=7, goal=args.goal)
    timings = []
    plan = None
    for _ in range(args.repeat):
        started = time.perf_counter()
        plan = plan_migrations(request)
        timings.append(time.perf_counter() - started)
    assert plan is not None
    best, median = min(timings), sorted(timings)[len(timings) // 2]
    busy = sum(m.estimate.duration_s for m in plan.moves)
    mean_concurrency = busy / plan.makespan_s if plan.makespan_s else 0.0
    nodes = {n.name: n for n in request.nodes}
    if request.goal == "move":
        moving = sum(1 for vm in request.vms if nodes[vm.node].labels.get("zone") != "z0")
    else:
        moving = sum(1 for vm in request.vms if vm.node in request.drain_nodes)
    print(f"{args.vms} VMs over {args.nodes} nodes, goal {args.goal}: {moving} to move, {len(plan.moves)} planned, "
          f"{len(plan.unplaceable)} unplaceable, {plan.waves} start rounds, makespan {plan.makespan_s:.0f}s")  # fmt: skip
    curve = planner_curve(args.curve, args.goal)
    executed = {} if args.no_execute else execute(args.execute_vms)
    write_results(
        "planner",
        {
            "planner_seconds_median": {"value": round(median, 3), "unit": "s", "target": "<= 1"},
            "planner_seconds_best": {"value": round(best, 3), "unit": "s", "target": "reported"},
            "planned_vms": {
                "value": len(plan.moves),
                "unit": "VMs",
                "target": f"{moving} (all that must move)",
            },
            "planned_schedule_mean_concurrency_over_max_parallel": {
                "value": round(mean_concurrency / request.limits.max_parallel, 3),
                "unit": "ratio",
                "target": "reported (the planner's simulated schedule)",
            },
            "plan_makespan_estimate": {"value": round(plan.makespan_s, 1), "unit": "s", "target": "reported"},
            **curve,
            **executed,
        },
        f"make bench-planner  # bench/planner.py --vms {args.vms} --nodes {args.nodes} --goal {args.goal}"
        f" --execute-vms {args.execute_vms}",
    )


if __name__ == "__main__":
    main()
