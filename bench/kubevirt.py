"""Real-KubeVirt benchmark: kind + KubeVirt v1.7 (`make kubevirt-up`), real guests, the operator in-cluster.

1. VM create -> Running, p50/p95 over N VMs: through a virtfleet pool, and the same VMs (the pool's own
   rendered VirtualMachines, ownership stripped) created directly with kubectl, interleaved in pairs.
2. KubeVirt's own VirtualMachinePool (pool.kubevirt.io) and a virtfleet pool, same VM spec, same run: time
   until N VMs exist and until N VMIs are Running; then a template change (guest memory) rolled out by each:
   how many VMs were down (no Running VMI) at once, and how long until all ran the new spec.
3. Live migrations of guests that dirty memory at a set rate (hack/kubevirt/images/guest), under a
   bandwidth cap so the rate matters: per VM, the plan's estimated duration against the actual one (VMIM
   phase timestamps, second resolution) and the plan's makespan estimate against its real run. A first plan
   gathers the guests on one worker (a fresh cluster's first plan: the default start-up assumed), the
   measured plan drains it (the start-up learned from the first). Actual
   downtime is not measured: KubeVirt v1.7 reports no pause time for a live migration, and a guest's own
   clock stops with it under emulation.

Everything runs in namespace `bench-kv`, deleted at the end. Run: make bench-kubevirt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, write_results

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench-kv"
POOL_LABEL = "virtfleet.io/pool"
TIMEOUT = 900.0
T = TypeVar("T")


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def apply(*objects: dict[str, Any]) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump_all(objects))


def listed(kind: str, *selector: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(kubectl("-n", NAMESPACE, "get", kind, *selector, "-o", "json"))[
        "items"
    ]
    return found


def wait(probe: Callable[[], T | None], what: str, timeout: float = TIMEOUT, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def template(
    image: str, guest: str = "256Mi", dirty_mib_s: int | None = None, name: str = "bench"
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cpu": {"sockets": 1, "cores": 1, "threads": 1},
        "memory": {"guest": guest},
        "disks": [{"name": "root", "source": {"containerImage": image}}],
        "interfaces": [{"name": "default", "type": "nat"}],
    }
    if dirty_mib_s is not None:
        # The guest's writer (hack/kubevirt/images/guest) and the planner's estimate read the same rate.
        spec["annotations"] = {"virtfleet.io/dirty-rate": f"{dirty_mib_s}Mi"}
    if dirty_mib_s:
        spec["cloudInit"] = {
            "userData": f"#cloud-config\n# virtfleet-guest-dirty-mib-per-second: {dirty_mib_s}\n"
        }
    return {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VMTemplate",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}  # fmt: skip


def vf_pool(replicas: int, name: str = "bench", template_name: str = "bench", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VirtualMachinePool",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"replicas": replicas, "templateRef": {"name": template_name}, "cpuRatio": 8, **spec}}  # fmt: skip


def running_since(start: float, names: Callable[[], list[dict[str, Any]]], count: int) -> dict[str, float]:
    """Seconds from `start` until each of `count` VMIs was first seen Running (polled every 0.5 s)."""
    seen: dict[str, float] = {}

    def probe() -> dict[str, float] | None:
        for vmi in names():
            if vmi.get("status", {}).get("phase") == "Running":
                seen.setdefault(vmi["metadata"]["name"], time.monotonic() - start)
        return dict(seen) if len(seen) >= count else None

    return wait(probe, f"{count} VMIs Running")


def delete_all(*kinds: str) -> None:
    for kind in kinds:
        kubectl("-n", NAMESPACE, "delete", kind, "--all", "--wait=true", "--timeout=600s", check=False)
    wait(lambda: None if listed("vmi") else True, "VMIs gone", 600)


# -- 1. create -> Running, pool vs direct -----------------------------------------------------------------


def create_to_running(image: str, count: int, pairs: int) -> dict[str, dict[str, Any]]:
    pool_times: list[float] = []
    direct_times: list[float] = []
    for _ in range(pairs):
        apply(template(image))
        start = time.monotonic()
        apply(vf_pool(count))
        times = running_since(start, lambda: listed("vmi", "-l", f"{POOL_LABEL}=bench"), count)
        pool_times += times.values()
        rendered = [_unowned(vm) for vm in listed("vm", "-l", f"{POOL_LABEL}=bench")]
        delete_all("virtualmachinepools.virtfleet.io", "vm")
        start = time.monotonic()
        apply(*rendered)
        times = running_since(start, lambda: listed("vmi", "-l", "bench=direct"), count)
        direct_times += times.values()
        delete_all("vm")
    return {
        "create_to_running_pool_p50": {"value": percentile(pool_times, 0.5), "unit": "s", "target": "reported"},
        "create_to_running_pool_p95": {"value": percentile(pool_times, 0.95), "unit": "s", "target": "reported"},
        "create_to_running_direct_p50": {"value": percentile(direct_times, 0.5), "unit": "s", "target": "reported"},
        "create_to_running_direct_p95": {"value": percentile(direct_times, 0.95), "unit": "s", "target": "reported"},
        "create_to_running_pool_over_direct_p50": {
            "value": round(statistics.median(pool_times) / statistics.median(direct_times), 3), "unit": "ratio",
            "target": f"reported ({count} VMs x {pairs} interleaved pairs; emulation on 2 cores)",
        },
    }  # fmt: skip


def _unowned(vm: dict[str, Any]) -> dict[str, Any]:
    """The pool's VM as a user would write it: same spec, a new name, no owner, no pool labels."""
    labels = {"bench": "direct"}
    spec = vm["spec"]
    spec["template"]["metadata"]["labels"] = {
        k: v
        for k, v in spec["template"]["metadata"].get("labels", {}).items()
        if not k.startswith("virtfleet.io/")
    } | labels
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "direct-" + vm["metadata"]["name"], "namespace": NAMESPACE, "labels": labels},
            "spec": spec}  # fmt: skip


# -- 2. KubeVirt's pool vs virtfleet's ------------------------------------------------------------------


def pools_side_by_side(image: str, count: int) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    apply(template(image))
    apply(vf_pool(1))
    sample = _unowned(wait(lambda: (listed("vm", "-l", f"{POOL_LABEL}=bench") or [None])[0], "a sample VM"))
    delete_all("virtualmachinepools.virtfleet.io", "vm")
    vm_template = {"metadata": {"labels": {"bench": "kubevirt-pool"}}, "spec": sample["spec"]}
    vm_template["spec"]["template"]["metadata"]["labels"] = {"bench": "kubevirt-pool"}
    kubevirt_pool = {
        "apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
        "metadata": {"name": "kv", "namespace": NAMESPACE},
        "spec": {"replicas": count, "selector": {"matchLabels": {"bench": "kubevirt-pool"}},
                 "virtualMachineTemplate": vm_template, "maxUnavailable": 1,
                 "updateStrategy": {"proactive": {}}},
    }  # fmt: skip
    contenders: dict[str, tuple[Callable[[], None], Callable[[], None], str]] = {
        "kubevirt_pool": (
            lambda: apply(kubevirt_pool),
            lambda: kubectl("-n", NAMESPACE, "patch", "virtualmachinepools.pool.kubevirt.io", "kv", "--type=json", "-p",
                            json.dumps([{"op": "replace", "value": "320Mi",
                                         "path": "/spec/virtualMachineTemplate/spec/template/spec/domain/memory/guest"}])),
            "bench=kubevirt-pool",
        ),
        "virtfleet_pool": (
            lambda: apply(vf_pool(count)),
            lambda: apply(template(image, guest="320Mi")),
            f"{POOL_LABEL}=bench",
        ),
    }  # fmt: skip
    for name, (create, change, selector) in contenders.items():
        apply(template(image))
        figures |= _race(name, create, change, selector, count)
        delete_all("virtualmachinepools.pool.kubevirt.io", "virtualmachinepools.virtfleet.io", "vm")
    return figures  # fmt: skip


def _race(
    name: str, create: Callable[[], None], change: Callable[[], None], selector: str, count: int
) -> dict[str, dict[str, Any]]:
    start = time.monotonic()
    create()
    exist = wait(
        lambda: time.monotonic() - start if len(listed("vm", "-l", selector)) >= count else None,
        f"{name}: VMs",
    )
    running = running_since(start, lambda: listed("vmi", "-l", selector), count)
    down, took = _rollout(change, selector, count)
    return {
        f"{name}_vms_exist_s": {"value": round(exist, 1), "unit": "s", "target": "reported"},
        f"{name}_all_running_s": {
            "value": round(max(running.values()), 1),
            "unit": "s",
            "target": "reported",
        },
        f"{name}_rollout_max_down": {
            "value": down,
            "unit": "VMs",
            "target": f"reported (at once, of {count})",
        },
        f"{name}_rollout_s": {"value": took, "unit": "s", "target": "reported (guest 256Mi -> 320Mi)"},
    }


def _rollout(change: Callable[[], None], selector: str, count: int) -> tuple[int, float]:
    """(most VMs down at once, seconds) until `count` VMIs run with the new guest memory."""
    start = time.monotonic()
    change()
    worst = 0

    def probe() -> float | None:
        nonlocal worst
        vmis = listed("vmi", "-l", selector)
        running = [v for v in vmis if v.get("status", {}).get("phase") == "Running"]
        worst = max(worst, count - len(running))
        new = [v for v in running if v["spec"]["domain"]["memory"]["guest"] == "320Mi"]
        return time.monotonic() - start if len(new) >= count and len(vmis) == count else None

    took = wait(probe, "the rollout")
    return worst, round(took, 1)


# -- 3. dirty-rate migrations ------------------------------------------------------------------------------


def dirty_migrations(image: str, rates: list[int], bandwidth: str) -> dict[str, dict[str, Any]]:
    """Guests writing `rates` MiB/s, live-migrated one at a time. A first plan gathers them on one worker
    (and is what a fresh cluster's first plan looks like: no start-up learned yet); the measured plan then
    drains that worker, so every rate moves, estimated with the start-up the first plan showed."""
    objects: list[dict[str, Any]] = []
    for rate in rates:
        objects += [template(image, dirty_mib_s=rate, name=f"dirty-{rate}"),
                    vf_pool(1, name=f"dirty-{rate}", template_name=f"dirty-{rate}")]  # fmt: skip
    apply(*objects)
    running = running_since(time.monotonic(), lambda: listed("vmi"), len(rates))
    assert len(running) == len(rates)
    time.sleep(20)  # the writers run before the migrations start
    per_node = Counter(v["status"]["nodeName"] for v in listed("vmi"))
    # The worker with fewer guests is emptied first (with one worker in use, that one: all then move back).
    first = (
        min(per_node, key=lambda node: (per_node[node], node)) if len(per_node) > 1 else next(iter(per_node))
    )
    figures = _drain_plan("gather", first, bandwidth, "migration_first_plan")
    gathered = Counter(v["status"]["nodeName"] for v in listed("vmi"))
    assert len(gathered) == 1, f"the first plan left the guests on {dict(gathered)}"
    figures |= _drain_plan("dirty", next(iter(gathered)), bandwidth, "migration")
    delete_all("migrationplans", "virtualmachinepools.virtfleet.io", "vm")
    return figures


def _drain_plan(name: str, node: str, bandwidth: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Drain `node` with one live migration at a time; each VM's estimated vs actual duration, the makespan."""
    plan = {
        "apiVersion": "virtfleet.io/v1alpha1", "kind": "MigrationPlan",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"goal": "drain", "nodes": [node], "method": "live", "uncordonWhenDone": True,
                 "limits": {"maxParallel": 1}, "migration": {"bandwidthPerMigration": bandwidth,
                 "allowAutoConverge": True}},
    }  # fmt: skip
    start = time.monotonic()
    apply(plan)
    status = wait(
        lambda: (s if (s := json.loads(kubectl("-n", NAMESPACE, "get", "migrationplan", name, "-o", "json"))
                       .get("status", {})).get("phase") in ("Succeeded", "Failed") else None), f"plan {name}")  # fmt: skip
    actual_makespan = time.monotonic() - start
    if status["phase"] != "Succeeded":
        print("plan status:", json.dumps(status, indent=1)[:4000])
    # The node is uncordoned once the plan is done; the next plan may target it again.
    wait(lambda: None if json.loads(kubectl("get", "node", node, "-o", "json"))["spec"].get("unschedulable")
         else True, f"{node} uncordoned", 60)  # fmt: skip
    setup = status.get("estimatedSetupSeconds")
    figures: dict[str, dict[str, Any]] = {}
    errors = []
    for vm in status["vms"]:
        rate = vm["pool"].removeprefix("dirty-")
        estimated, actual = vm["estimatedDurationSeconds"], vm.get("actualDurationSeconds")
        figures[f"{prefix}_dirty_{rate}mib_s_estimated"] = {
            "value": estimated,
            "unit": "s",
            "target": "reported",
        }
        figures[f"{prefix}_dirty_{rate}mib_s_actual"] = {"value": actual, "unit": "s", "target": "reported"}
        figures[f"{prefix}_dirty_{rate}mib_s_downtime_estimated"] = {
            "value": vm["estimatedDowntimeSeconds"],
            "unit": "s",
            "target": "reported (actual not observable)",
        }
        if actual:
            errors.append(abs(estimated - actual) / actual)
    figures[f"{prefix}_plan_phase"] = {"value": status["phase"], "unit": "", "target": "Succeeded"}
    figures[f"{prefix}_estimated_setup"] = {
        "value": setup,
        "unit": "s",
        "target": "reported (learned start-up)",
    }
    figures[f"{prefix}_makespan_estimated"] = {
        "value": status.get("estimatedMakespanSeconds"),
        "unit": "s",
        "target": "reported",
    }
    figures[f"{prefix}_makespan_actual"] = {
        "value": round(actual_makespan, 1),
        "unit": "s",
        "target": "reported",
    }
    figures[f"{prefix}_estimate_error_max"] = {
        "value": round(max(errors), 3) if errors else None,
        "unit": "ratio",
        "target": f"reported (per VM; bandwidth {bandwidth}/s, {len(status['vms'])} VMs, setup {setup}s assumed)",
    }
    return figures  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, default=4, help="VMs per measurement (emulation: keep it small)")
    parser.add_argument("--pairs", type=int, default=2, help="interleaved pool/direct pairs")
    parser.add_argument("--only", choices=["create", "pools", "migrations"], action="append")
    args = parser.parse_args()
    image = os.environ.get("VIRTFLEET_E2E_GUEST_IMAGE", "")
    if not image:
        parser.error("VIRTFLEET_E2E_GUEST_IMAGE is not set (make bench-kubevirt sets it)")
    kubectl("create", "namespace", NAMESPACE, check=False)
    wait(
        lambda: True if kubectl("-n", NAMESPACE, "get", "serviceaccount", "default", check=False) else None,
        "namespace",
    )
    # Parts run separately (--only) add to the results file; a part run again replaces its own figures.
    previous = RESULTS / "kubevirt.json"
    figures: dict[str, dict[str, Any]] = json.loads(previous.read_text()) if previous.is_file() else {}
    started = time.monotonic()
    parts = args.only or ["create", "pools", "migrations"]
    measures: dict[str, Callable[[], dict[str, dict[str, Any]]]] = {
        "create": lambda: create_to_running(image, args.vms, args.pairs),
        "pools": lambda: pools_side_by_side(image, args.vms),
        "migrations": lambda: dirty_migrations(image, [0, 8, 32], "64Mi"),
    }
    try:
        for part in parts:
            figures |= measures[part]()
            # Written after each part, so a long run stopped part-way keeps what it measured.
            figures["bench_wall_s"] = {
                "value": round(time.monotonic() - started, 1),
                "unit": "s",
                "target": "reported",
            }
            write_results("kubevirt", figures, "make bench-kubevirt")
    finally:
        kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=600s", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
