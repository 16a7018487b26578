"""Twin benchmark: 5,000 VMs across 100 simulated nodes to Running.

Prints elapsed time, VMs per second and the twin's peak RSS, and writes bench/results/twin.json.
Run: make bench-twin  (or: VIRTFLEET_BIN_DIR=... .venv/bin/python bench/twin.py --vms 5000 --nodes 100)
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import peak_rss_mib, write_results

from virtfleet.kube.client import NAMESPACES, VIRTUAL_MACHINES, Kube
from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import CRDS, KUBEVIRT_CRDS, twin_process

NAMESPACE = "bench-twin"


def _vm(i: int) -> dict[str, object]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": f"vm-{i:05d}", "namespace": NAMESPACE},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {"domain": {"cpu": {"cores": 2}, "memory": {"guest": "2Gi"}, "devices": {}}},
            },
        },
    }


async def _create_all(kube: Kube, count: int, concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await kube.create(VIRTUAL_MACHINES, NAMESPACE, _vm(i))

    await asyncio.gather(*(one(i) for i in range(count)))


async def _running(kube: Kube) -> int:
    items = (await kube.list(VIRTUAL_MACHINES, NAMESPACE))["items"]
    return sum((vm.get("status") or {}).get("printableStatus") == "Running" for vm in items)


async def measure(cluster: LocalCluster, vms: int, nodes: int, workdir: Path) -> dict[str, dict[str, object]]:
    fleet = {
        "timeScale": 0.001,
        "defaults": {"bootSeconds": 1},
        "nodes": [{"name": "node", "count": nodes, "cpu": 64, "memory": "512Gi"}],
    }
    fleet_file = workdir / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    with twin_process(cluster.kubeconfig, fleet_file, workdir / "twin.log") as twin:
        return await _run(cluster, twin, vms, nodes, workdir)


async def _run(
    cluster: LocalCluster, twin: subprocess.Popen[bytes], vms: int, nodes: int, workdir: Path
) -> dict[str, dict[str, object]]:
    kube = await Kube.connect(field_manager="bench", kubeconfig=str(cluster.kubeconfig), pool_size=64)
    async with kube:
        await kube.create(NAMESPACES, None, {"metadata": {"name": NAMESPACE}})
        while len(cluster.kubectl("get", "nodes", "-o", "name").stdout.split()) < nodes:
            await asyncio.sleep(0.5)
        started = time.monotonic()
        await _create_all(kube, vms, concurrency=32)
        print(f"created {vms} VirtualMachines in {time.monotonic() - started:.1f}s", flush=True)
        done = 0
        while done < vms:
            # Listing thousands of VMs costs the API server too: look rarely.
            await asyncio.sleep(5.0)
            done = await _running(kube)
            print(f"  {done}/{vms} Running after {time.monotonic() - started:.0f}s", flush=True)
            if twin.poll() is not None:
                raise RuntimeError(f"the twin exited: {(workdir / 'twin.log').read_text()[-2000:]}")
        elapsed = time.monotonic() - started
    rss = peak_rss_mib(twin.pid)
    return {
        "twin_vms_to_running_seconds": {"value": round(elapsed, 1), "unit": "s", "target": "reported"},
        "twin_vms_per_second": {"value": round(vms / elapsed, 1), "unit": "VMs/s", "target": "reported"},
        "twin_peak_rss": {"value": round(rss, 1), "unit": "MiB", "target": "reported"},
        "twin_fleet": {"value": f"{vms} VMs / {nodes} nodes", "unit": "", "target": "5000 / 100"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalCluster.start() as cluster:
        cluster.apply([CRDS, KUBEVIRT_CRDS])
        figures = asyncio.run(measure(cluster, args.vms, args.nodes, Path(tmp)))
    write_results("twin", figures, f"make bench-twin  # bench/twin.py --vms {args.vms} --nodes {args.nodes}")


if __name__ == "__main__":
    main()
