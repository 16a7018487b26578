"""Pool benchmark, in the real control plane.

1. Scale one pool 0 -> 1,000 VMs: the operator's create throughput (VMs/s), and in the same run a raw
   concurrent client creating 1,000 equivalent VirtualMachines (same bodies, same concurrency, strict
   validation). Three such pairs, interleaved (the order alternating), each in fresh namespaces with the
   previous pair's VMs gone: target median ratio >= 0.9, so one noisy pair cannot decide it.
2. With 1,000 VMs managed and nothing changing: write requests over 60 s to the resources the operator
   touches, from kube-apiserver's apiserver_request_total: target 0.

Nodes come from `virtfleet twin nodes` (capacity for the pool); no simulated KubeVirt runs, so nothing
changes while the operator idles. Run: make bench-pools
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import api_writes, write_results

from virtfleet.api.pool import VirtualMachinePoolSpec
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core.render import PoolContext, render_vm
from virtfleet.kube.client import NAMESPACES, VIRTUAL_MACHINES, Kube, NotFound, ResourceRef
from virtfleet.kube.pools import WRITE_CONCURRENCY
from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import CRDS, KUBEVIRT_CRDS

POOLS = ResourceRef("virtfleet.io", "v1alpha1", "virtualmachinepools")
TEMPLATES = ResourceRef("virtfleet.io", "v1alpha1", "vmtemplates")
POOL_SPEC = {"replicas": 0, "templateRef": {"name": "bench"}, "cpuRatio": 4}
TEMPLATE = {
    "cpu": {"cores": 1},
    "memory": {"guest": "1Gi"},
    "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
    "interfaces": [{"name": "default", "type": "nat"}],
}


async def count_vms(kube: Kube, namespace: str) -> int:
    return len((await kube.list(VIRTUAL_MACHINES, namespace))["items"])


async def watch_creates(kube: Kube, namespace: str, version: str, count: int) -> float:
    """The moment the watch has seen `count` VirtualMachines created (no polling of large lists)."""
    seen: set[str] = set()
    async for event in kube.watch(VIRTUAL_MACHINES, version, namespace=namespace):
        if event.get("type") == "ADDED":
            seen.add(event["object"]["metadata"]["name"])
            if len(seen) >= count:
                return time.monotonic()
    raise RuntimeError("the watch ended early")


async def operator_run(kube: Kube, namespace: str, replicas: int, operator: subprocess.Popen[bytes],
                       log: Path) -> float:  # fmt: skip
    """A pool `bench` in `namespace`, scaled 0 -> replicas by one patch: VMs/s until a watch saw them all."""
    await kube.create(TEMPLATES, namespace, {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VMTemplate",
                                             "metadata": {"name": "bench"}, "spec": TEMPLATE})  # fmt: skip
    await kube.create(POOLS, namespace, {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VirtualMachinePool",
                                         "metadata": {"name": "bench"}, "spec": POOL_SPEC})  # fmt: skip
    while not (await kube.get(POOLS, namespace, "bench")).get("status", {}).get("updateRevision"):
        if operator.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        await asyncio.sleep(0.2)
    version = (await kube.list(VIRTUAL_MACHINES, namespace))["metadata"]["resourceVersion"]
    watcher = asyncio.create_task(watch_creates(kube, namespace, version, replicas))
    started = time.monotonic()
    await kube.patch(POOLS, namespace, "bench", {"spec": {"replicas": replicas}})
    done = await asyncio.wait_for(watcher, timeout=600)
    return replicas / (done - started)


async def raw_run(kube: Kube, namespace: str, replicas: int) -> float:
    """The same VirtualMachines from a raw client: same bodies, same concurrency, same strict validation."""
    template = VMTemplateSpec.model_validate(TEMPLATE)
    spec = VirtualMachinePoolSpec.model_validate(POOL_SPEC)
    context = PoolContext("raw", namespace, "00000000-0000-4000-8000-000000000000", spec, 4.0, 1.0)
    bodies = []
    for ordinal in range(replicas):
        vm = render_vm(context, "bench", "0123456789", template, ordinal)
        del vm["metadata"]["ownerReferences"]
        bodies.append(vm)
    semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def create(body: dict[str, object]) -> None:
        async with semaphore:
            await kube.create(VIRTUAL_MACHINES, namespace, body)

    started = time.monotonic()
    await asyncio.gather(*(create(b) for b in bodies))
    return replicas / (time.monotonic() - started)


async def emptied(kube: Kube, namespace: str) -> None:
    """Delete the namespace's VMs (and its pool: the operator then has nothing to recreate) and wait until
    they are gone, so the next pair runs on a quiet API server."""
    with contextlib.suppress(NotFound):
        await kube.delete(POOLS, namespace, "bench")
    await kube.request("DELETE", VIRTUAL_MACHINES.path(namespace), body={})  # deletecollection
    while await count_vms(kube, namespace):
        await asyncio.sleep(0.5)


async def measure(
    cluster: LocalCluster, replicas: int, pairs: int, idle_seconds: int, workdir: Path
) -> dict[str, dict[str, object]]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "VIRTFLEET_METRICS_PORT": "0"}
    fleet = workdir / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"nodes": [{"name": "node", "count": 20, "cpu": 64, "memory": "512Gi"}]}))
    subprocess.run([sys.executable, "-m", "virtfleet", "twin", "nodes", "--fleet", str(fleet)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = workdir / "operator.log"
    operator = subprocess.Popen(
        [sys.executable, "-m", "virtfleet", "run", "--standalone", "--liveness", ""],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    ratios, operator_rates, raw_rates = [], [], []
    try:
        kube = await Kube.connect(field_manager="bench", kubeconfig=str(cluster.kubeconfig), pool_size=64)
        async with kube:
            # Interleaved pairs, the order alternating (operator first, then raw first, ...): a drift in
            # the machine's load over the run weighs on both sides alike.
            for pair in range(pairs):
                pool_ns, raw_ns = f"bench-pool-{pair}", f"bench-raw-{pair}"
                for namespace in (pool_ns, raw_ns):
                    await kube.create(NAMESPACES, None, {"metadata": {"name": namespace}})
                sides = ["operator", "raw"] if pair % 2 == 0 else ["raw", "operator"]
                rates = {}
                for side in sides:
                    if side == "operator":
                        rates[side] = await operator_run(kube, pool_ns, replicas, operator, log)
                    else:
                        rates[side] = await raw_run(kube, raw_ns, replicas)
                    print(f"pair {pair + 1}, {side}: {replicas} VMs at {rates[side]:.1f} VMs/s", flush=True)
                operator_rates.append(rates["operator"])
                raw_rates.append(rates["raw"])
                ratios.append(rates["operator"] / rates["raw"])
                print(f"pair {pair + 1}: ratio {ratios[-1]:.3f}", flush=True)
                await emptied(kube, raw_ns)
                if pair < pairs - 1:
                    await emptied(kube, pool_ns)

            # Idle: the last pair's pool keeps its VMs; nothing changes; the operator must write nothing.
            await asyncio.sleep(10)  # let the deletions and their events settle
            before = api_writes(cluster)
            print(
                f"idle: watching write requests for {idle_seconds}s with {replicas} VMs managed", flush=True
            )
            await asyncio.sleep(idle_seconds)
            idle_writes = api_writes(cluster) - before
            assert await count_vms(kube, f"bench-pool-{pairs - 1}") == replicas
            assert operator.poll() is None, "the operator died"
    finally:
        operator.terminate()
        operator.wait()
    middle = statistics.median(ratios)
    pick = ratios.index(middle) if middle in ratios else 0
    return {
        "pool_create_throughput_operator": {
            "value": round(operator_rates[pick], 1), "unit": "VMs/s", "target": "reported (the median pair)",
        },
        "pool_create_throughput_raw_client": {
            "value": round(raw_rates[pick], 1), "unit": "VMs/s", "target": "reported (the median pair)",
        },
        "pool_create_throughput_ratio": {
            "value": round(middle, 3), "unit": "ratio",
            "target": f">= 0.9 (median of {pairs} interleaved pairs: " + ", ".join(f"{r:.3f}" for r in ratios) + ")",
        },
        "idle_write_requests_60s": {"value": idle_writes, "unit": "requests", "target": "0"},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved operator/raw pairs (median ratio)")
    parser.add_argument("--idle-seconds", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalCluster.start() as cluster:
        cluster.apply([CRDS, KUBEVIRT_CRDS])
        figures = asyncio.run(measure(cluster, args.replicas, args.pairs, args.idle_seconds, Path(tmp)))
    write_results(
        "pool_scale",
        figures,
        f"make bench-pools  # bench/pool_scale.py --replicas {args.replicas} --pairs {args.pairs}",
    )
    print(json.dumps({k: v["value"] for k, v in figures.items()}))


if __name__ == "__main__":
    main()
