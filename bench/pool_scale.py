"""Pool benchmark, in the real control plane.

1. Scale one pool 0 -> 1,000 VMs: the operator's create throughput (VMs/s), and in the same run a raw
   concurrent client creating 1,000 equivalent VirtualMachines (same bodies, same concurrency, strict
   validation): target ratio >= 0.8.
2. With 1,000 VMs managed and nothing changing: write requests over 60 s to the resources the operator
   touches, from kube-apiserver's apiserver_request_total: target 0.

Nodes come from `virtfleet twin nodes` (capacity for the pool); no simulated KubeVirt runs, so nothing
changes while the operator idles. Run: make bench-pools
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results

from virtfleet.api.pool import VirtualMachinePoolSpec
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core.render import PoolContext, render_vm
from virtfleet.kube.client import NAMESPACES, VIRTUAL_MACHINES, Kube, ResourceRef
from virtfleet.kube.pools import WRITE_CONCURRENCY
from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import CRDS, KUBEVIRT_CRDS

POOLS = ResourceRef("virtfleet.io", "v1alpha1", "virtualmachinepools")
TEMPLATES = ResourceRef("virtfleet.io", "v1alpha1", "vmtemplates")
TEMPLATE = {
    "cpu": {"cores": 1},
    "memory": {"guest": "1Gi"},
    "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
    "interfaces": [{"name": "default", "type": "nat"}],
}
WATCHED = {"virtualmachines", "virtualmachinepools", "vmtemplates", "controllerrevisions", "events",
           "virtualmachineinstances"}  # fmt: skip
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}


def writes(cluster: LocalCluster) -> int:
    """Write requests so far to the resources virtfleet touches, from kube-apiserver's own counter."""
    ssl = cluster._ssl_context()  # admin client certificate
    import urllib.request

    with urllib.request.urlopen(f"{cluster.server}/metrics", context=ssl) as response:
        text = response.read().decode()
    total = 0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in WATCHED:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


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


async def measure(
    cluster: LocalCluster, replicas: int, idle_seconds: int, workdir: Path
) -> dict[str, dict[str, object]]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "VIRTFLEET_METRICS_PORT": "0"}
    fleet = workdir / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"nodes": [{"name": "node", "count": 20, "cpu": 64, "memory": "512Gi"}]}))
    subprocess.run([sys.executable, "-m", "virtfleet", "twin", "nodes", "--fleet", str(fleet)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    operator = subprocess.Popen(
        [sys.executable, "-m", "virtfleet", "run", "--standalone", "--liveness", ""],
        env=env, stdout=(workdir / "operator.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        kube = await Kube.connect(field_manager="bench", kubeconfig=str(cluster.kubeconfig), pool_size=64)
        async with kube:
            for namespace in ("bench-pool", "bench-raw"):
                await kube.create(NAMESPACES, None, {"metadata": {"name": namespace}})
            await kube.create(TEMPLATES, "bench-pool", {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VMTemplate",
                                                         "metadata": {"name": "bench"}, "spec": TEMPLATE})  # fmt: skip
            pool_spec = {"replicas": 0, "templateRef": {"name": "bench"}, "cpuRatio": 4}
            await kube.create(POOLS, "bench-pool", {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VirtualMachinePool",
                                                     "metadata": {"name": "bench"}, "spec": pool_spec})  # fmt: skip
            while not (await kube.get(POOLS, "bench-pool", "bench")).get("status", {}).get("updateRevision"):
                if operator.poll() is not None:
                    raise RuntimeError((workdir / "operator.log").read_text()[-3000:])
                await asyncio.sleep(0.2)

            # 1a. The operator: replicas 0 -> N.
            version = (await kube.list(VIRTUAL_MACHINES, "bench-pool"))["metadata"]["resourceVersion"]
            watcher = asyncio.create_task(watch_creates(kube, "bench-pool", version, replicas))
            started = time.monotonic()
            await kube.patch(POOLS, "bench-pool", "bench", {"spec": {"replicas": replicas}})
            done = await asyncio.wait_for(watcher, timeout=600)
            operator_rate = replicas / (done - started)
            print(
                f"operator: {replicas} VMs in {done - started:.1f}s = {operator_rate:.1f} VMs/s", flush=True
            )

            # 1b. A raw client: the same VirtualMachines, same concurrency, same strict validation.
            template = VMTemplateSpec.model_validate(TEMPLATE)
            spec = VirtualMachinePoolSpec.model_validate(pool_spec)
            context = PoolContext("raw", "bench-raw", "00000000-0000-4000-8000-000000000000", spec, 4.0, 1.0)
            bodies = []
            for ordinal in range(replicas):
                vm = render_vm(context, "bench", "0123456789", template, ordinal)
                del vm["metadata"]["ownerReferences"]
                bodies.append(vm)
            semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)

            async def create(body: dict[str, object]) -> None:
                async with semaphore:
                    await kube.create(VIRTUAL_MACHINES, "bench-raw", body)

            started = time.monotonic()
            await asyncio.gather(*(create(b) for b in bodies))
            raw_elapsed = time.monotonic() - started
            raw_rate = replicas / raw_elapsed
            print(f"raw client: {replicas} VMs in {raw_elapsed:.1f}s = {raw_rate:.1f} VMs/s", flush=True)
            await kube.request("DELETE", VIRTUAL_MACHINES.path("bench-raw"), body={})  # deletecollection

            # 2. Idle: nothing changes; the operator must write nothing.
            await asyncio.sleep(10)  # let the deletecollection and its events settle
            before = writes(cluster)
            print(
                f"idle: watching write requests for {idle_seconds}s with {replicas} VMs managed", flush=True
            )
            await asyncio.sleep(idle_seconds)
            idle_writes = writes(cluster) - before
            assert await count_vms(kube, "bench-pool") == replicas
            assert operator.poll() is None, "the operator died"
    finally:
        operator.terminate()
        operator.wait()
    return {
        "pool_create_throughput_operator": {
            "value": round(operator_rate, 1),
            "unit": "VMs/s",
            "target": "reported",
        },
        "pool_create_throughput_raw_client": {
            "value": round(raw_rate, 1),
            "unit": "VMs/s",
            "target": "reported",
        },
        "pool_create_throughput_ratio": {
            "value": round(operator_rate / raw_rate, 3),
            "unit": "ratio",
            "target": ">= 0.8",
        },
        "idle_write_requests_60s": {"value": idle_writes, "unit": "requests", "target": "0"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalCluster.start() as cluster:
        cluster.apply([CRDS, KUBEVIRT_CRDS])
        figures = asyncio.run(measure(cluster, args.replicas, args.idle_seconds, Path(tmp)))
    write_results(
        "pool_scale", figures, f"make bench-pools  # bench/pool_scale.py --replicas {args.replicas}"
    )
    print(json.dumps({k: v["value"] for k, v in figures.items()}))


if __name__ == "__main__":
    main()
