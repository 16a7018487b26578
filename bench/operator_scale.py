"""Operator scale benchmark, in the real control plane (no KubeVirt runtime: no twin runs).

1. Peak RSS of the operator process with 5,000 managed VMs: 10 pools x 500 replicas in one namespace,
   100 Node objects from `virtfleet twin nodes` (capacity for all of them, no VMIs). "Managed" means:
   all 5,000 VirtualMachines exist (seen ADDED by a watch), each pool's status.replicas is 500 and its
   status.observedGeneration is current, i.e. the operator created them and holds them in its indexes.
   They never become ready (nothing runs them), which costs the operator nothing extra. After that the
   operator is left idle for 10 s and its VmHWM (high-water RSS over its whole life, the create burst
   included) is read from /proc. Target <= 200 MiB.
2. Replicas change -> first VM create: patch spec.replicas up by one, 50 times, and time from the
   patch response to the moment a VirtualMachine watch (started before) sees the new VM ADDED. Measured
   with the 5,000 VMs present, on one of the 500-replica pools (500 -> 550, the target figure: the
   realistic case, a reconcile walks all 500 members) and on a small pool in its own namespace (0 -> 50,
   reported). Target p50 <= 100 ms; p90 and max reported.

Run with `make bench-operator` or `VIRTFLEET_BIN_DIR=... .venv/bin/python bench/operator_scale.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import peak_rss_mib, write_results

from virtfleet.kube.client import (
    CONTROLLER_REVISIONS,
    NAMESPACES,
    VIRTUAL_MACHINE_POOLS,
    VIRTUAL_MACHINES,
    VM_TEMPLATES,
    Kube,
    ResourceRef,
)
from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.cluster import free_port
from virtfleet.localcluster.testing import CRDS, KUBEVIRT_CRDS, stop

FLEET_NS = "bench-fleet"
SMALL_NS = "bench-small"
TEMPLATE = {
    "cpu": {"cores": 1},
    "memory": {"guest": "1Gi"},
    "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
    "interfaces": [{"name": "default", "type": "nat"}],
}
# 100 nodes x 64 cores x 512 GiB: room for 5,000 1-vCPU 1-GiB VMs at cpuRatio 4 many times over.
FLEET = {"nodes": [{"name": "node", "count": 100, "cpu": 64, "memory": "512Gi"}]}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_quiet(pid: int, timeout: float, window: float = 1.0, busy: float = 0.05) -> float:
    """Wait until the process uses under `busy` of a CPU over `window` seconds: it has worked through
    the watch events of what it just did. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        if cpu_seconds(pid) - before < busy * window:
            return time.monotonic() - started
    raise TimeoutError(f"the operator was still busy after {timeout:.0f}s")


def sockets(pid: int) -> int:
    """Open sockets of a process (its connections to the API server, each with its TLS buffers)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


class VMWatch:
    """One watch on a namespace's VirtualMachines (or `ref`): when each name was first seen ADDED
    (monotonic), and how many events of each type came."""

    def __init__(self, kube: Kube, namespace: str, ref: ResourceRef = VIRTUAL_MACHINES) -> None:
        self.kube, self.namespace, self.ref = kube, namespace, ref
        self.added: dict[str, float] = {}
        self.events: Counter[str] = Counter()
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # limit=1: a consistent resourceVersion without listing thousands of objects.
        listing = await self.kube.request("GET", self.ref.path(self.namespace), query={"limit": 1})
        self._task = asyncio.create_task(self._run(listing["metadata"]["resourceVersion"]))

    async def _run(self, version: str) -> None:
        while True:  # the server ends a watch after timeoutSeconds: resume from the last version seen
            async for event in self.kube.watch(self.ref, version, namespace=self.namespace):
                now = time.monotonic()
                kind, obj = event.get("type"), event.get("object") or {}
                self.events[str(kind)] += 1
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {obj}")
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind == "ADDED":
                    self.added.setdefault(obj["metadata"]["name"], now)
                    self.changed.set()

    async def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError("the watch ended")
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 1.0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


@contextlib.contextmanager
def profiling(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy (if asked for and installed) samples the operator meanwhile; collapsed stacks to `out`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if out is None or not Path(spy).exists():
        if out is not None:
            print("py-spy not found: not profiling (.venv/bin/pip install py-spy)", flush=True)
        yield
        return
    recorder = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--nonblocking",
                                 "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
        print(f"profile: {out}", flush=True)


def pool_body(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VirtualMachinePool", "metadata": {"name": name},
            "spec": {"replicas": replicas, "templateRef": {"name": "bench"}, "cpuRatio": 4}}  # fmt: skip


async def settled(kube: Kube, namespace: str, name: str, replicas: int) -> bool:
    pool = await kube.get(VIRTUAL_MACHINE_POOLS, namespace, name)
    status = pool.get("status") or {}
    return status.get("replicas") == replicas and status.get("observedGeneration") == pool["metadata"].get(
        "generation"
    )


async def wait_settled(
    kube: Kube,
    namespace: str,
    names: list[str],
    replicas: int,
    timeout: float,
    operator: subprocess.Popen[bytes],
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = await asyncio.gather(*(settled(kube, namespace, n, replicas) for n in names))
        if all(states):
            return
        if operator.poll() is not None:
            raise RuntimeError("the operator exited")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"pools not at {replicas} replicas: {[n for n, s in zip(names, states, strict=True) if not s]}"
            )
        await asyncio.sleep(0.5)


def scrape(port: int) -> dict[str, float]:
    """The operator's own pool reconcile counters (diagnostics: --metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = {
        "virtfleet_reconcile_total": "reconciles",
        "virtfleet_reconcile_duration_seconds_sum": "seconds",
    }
    totals = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in wanted and 'kind="VirtualMachinePool"' in line:
            totals[wanted[name]] += float(line.rsplit(" ", 1)[1])
    return totals


async def replica_latencies(
    kube: Kube, watch: VMWatch, namespace: str, pool: str, start: int, changes: int,
    operator: subprocess.Popen[bytes], metrics_port: int | None = None,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """Patch replicas start -> start+1, ... `changes` times; (latency from the response, request time), s."""
    latencies, requests = [], []
    counters = [scrape(metrics_port)] if metrics_port else []
    for replicas in range(start + 1, start + changes + 1):
        new = f"{pool}-{replicas - 1}"  # stable ordinals: the new VM is the next one
        if new in watch.added:
            raise RuntimeError(f"{new} exists before the change")
        sent = time.monotonic()
        await kube.patch(VIRTUAL_MACHINE_POOLS, namespace, pool, {"spec": {"replicas": replicas}})
        answered = time.monotonic()
        await watch.wait_for(lambda: new in watch.added, 30, f"{new} ADDED")  # noqa: B023
        latencies.append(watch.added[new] - answered)
        requests.append(answered - sent)
        # Let the reconcile finish (status written) before the next change: each change stands alone.
        await wait_settled(kube, namespace, [pool], replicas, 30, operator)
        await asyncio.sleep(0.1)
        if metrics_port:
            counters.append(scrape(metrics_port))
    if metrics_port:
        runs = [b["reconciles"] - a["reconciles"] for a, b in itertools.pairwise(counters)]
        spent = counters[-1]["seconds"] - counters[0]["seconds"]
        print(f"{namespace}: pool reconciles per change (all pools, until settled + 100 ms): "
              + " ".join(f"{r:.0f}" for r in runs) + f"; mean reconcile {spent / max(sum(runs), 1) * 1000:.1f} ms",
              flush=True)  # fmt: skip
    print(
        f"{namespace}/{pool} latencies (ms, in order): " + " ".join(f"{x * 1000:.0f}" for x in latencies),
        flush=True,
    )
    return latencies, requests


def latency_figures(prefix: str, latencies: list[float], target: str, what: str) -> dict[str, dict[str, Any]]:
    ms = [x * 1000 for x in latencies]
    return {
        f"{prefix}_p50": {"value": round(percentile(ms, 50), 1), "unit": "ms", "target": target},
        f"{prefix}_p90": {
            "value": round(percentile(ms, 90), 1),
            "unit": "ms",
            "target": f"reported ({what})",
        },
        f"{prefix}_max": {"value": round(max(ms), 1), "unit": "ms", "target": f"reported ({what})"},
    }


async def measure(
    cluster: LocalCluster, args: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, Any]]:
    pools, replicas, changes, idle = args.pools, args.replicas, args.changes, args.idle_seconds
    profile: Path | None = args.profile
    metrics_port = free_port() if args.metrics else None
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "VIRTFLEET_METRICS_PORT": str(metrics_port or 0),
    }
    fleet = workdir / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(FLEET))
    subprocess.run([sys.executable, "-m", "virtfleet", "twin", "nodes", "--fleet", str(fleet)], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = Path(args.operator_log) if args.operator_log else workdir / "operator.log"
    command = [sys.executable, "-m", "virtfleet", "run", "--liveness", ""]
    if args.tracemalloc:
        command = [sys.executable, str(Path(__file__).with_name("traced_operator.py")), str(args.tracemalloc),
                   *command[4:]]  # fmt: skip
    operator = subprocess.Popen(
        command,
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    names = [f"pool-{i}" for i in range(pools)]
    total = pools * replicas
    try:
        kube = await Kube.connect(field_manager="bench", kubeconfig=str(cluster.kubeconfig), pool_size=32)
        async with kube:
            for namespace in (FLEET_NS, SMALL_NS):
                await kube.create(NAMESPACES, None, {"metadata": {"name": namespace}})
                await kube.create(VM_TEMPLATES, namespace, {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VMTemplate",
                                                            "metadata": {"name": "bench"}, "spec": TEMPLATE})  # fmt: skip
            fleet_watch, small_watch = VMWatch(kube, FLEET_NS), VMWatch(kube, SMALL_NS)
            watches = [fleet_watch, small_watch]
            if args.metrics:  # diagnostics: what else changes while nothing should
                watches += [VMWatch(kube, FLEET_NS, VIRTUAL_MACHINE_POOLS), VMWatch(kube, FLEET_NS, CONTROLLER_REVISIONS),
                            VMWatch(kube, FLEET_NS, VM_TEMPLATES)]  # fmt: skip
            for w in watches:
                await w.start()
            await kube.create(VIRTUAL_MACHINE_POOLS, SMALL_NS, pool_body("small", 0))
            await wait_settled(kube, SMALL_NS, ["small"], 0, 120, operator)
            rss_before = rss_mib(operator.pid)

            # 1. 10 pools x 500 replicas, created at once.
            started = time.monotonic()
            with profiling(operator.pid, profile and profile / "create.txt"):
                for name in names:
                    await kube.create(VIRTUAL_MACHINE_POOLS, FLEET_NS, pool_body(name, replicas))
                await fleet_watch.wait_for(lambda: len(fleet_watch.added) >= total, 900, f"{total} VMs")
                created = time.monotonic() - started
                await wait_settled(
                    kube, FLEET_NS, names, replicas, 1800 if args.tracemalloc else 300, operator
                )
                managed = time.monotonic() - started
                # The pools' status counts creates in flight; the operator may still be working through
                # the watch events of its 5,000 creates. Idle means idle: wait for that first.
                busy_after = await wait_quiet(operator.pid, 1800 if args.tracemalloc else 300)
            print(f"{total} VMs created in {created:.1f}s; all {pools} pools at {replicas} replicas after "
                  f"{managed:.1f}s; operator quiet {busy_after:.1f}s later", flush=True)  # fmt: skip
            before = {w: Counter(w.events) for w in watches}
            with profiling(operator.pid, profile and profile / "idle.txt"):
                await asyncio.sleep(idle)
            if args.metrics:
                for w in watches:
                    print(f"events during the idle wait, {w.ref.plural} in {w.namespace}: "
                          f"{dict(w.events - before[w]) or 'none'}", flush=True)  # fmt: skip
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited: {log.read_text()[-3000:]}")
            peak = peak_rss_mib(operator.pid)
            steady = rss_mib(operator.pid)
            connections = sockets(operator.pid)
            if args.tracemalloc:
                operator.send_signal(signal.SIGUSR1)
                await asyncio.sleep(5)
                print(f"tracemalloc: {args.tracemalloc}", flush=True)
            print(f"operator RSS: {rss_before:.1f} MiB with no VMs; with {total} VMs managed, after {idle:.0f}s "
                  f"idle: {steady:.1f} MiB now, {peak:.1f} MiB peak (VmHWM); {connections} open sockets", flush=True)  # fmt: skip

            # 2. Replicas change -> first VM create, with the 5,000 VMs present.
            with profiling(operator.pid, profile and profile / "latency.txt"):
                big, big_requests = await replica_latencies(
                    kube, fleet_watch, FLEET_NS, names[0], replicas, changes, operator, metrics_port
                )
            print(f"{names[0]} ({replicas} -> {replicas + changes}): p50 {percentile(big, 50) * 1000:.1f} ms, "
                  f"p90 {percentile(big, 90) * 1000:.1f} ms, max {max(big) * 1000:.1f} ms; patch request p50 "
                  f"{percentile(big_requests, 50) * 1000:.1f} ms", flush=True)  # fmt: skip
            small, small_requests = await replica_latencies(
                kube, small_watch, SMALL_NS, "small", 0, changes, operator, metrics_port
            )
            print(f"small (0 -> {changes}): p50 {percentile(small, 50) * 1000:.1f} ms, "
                  f"p90 {percentile(small, 90) * 1000:.1f} ms, max {max(small) * 1000:.1f} ms; patch request p50 "
                  f"{percentile(small_requests, 50) * 1000:.1f} ms", flush=True)  # fmt: skip
            peak_end = peak_rss_mib(operator.pid)
            for w in watches:
                await w.stop()
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited: {log.read_text()[-3000:]}")
    finally:
        stop(operator, grace=30)
    return {
        "operator_peak_rss": {
            "value": round(peak, 1), "unit": "MiB",
            "target": f"<= 200 (VmHWM, {pools} pools x {replicas} VMs managed, after {idle:.0f} s idle)",
        },
        "operator_rss_idle": {"value": round(steady, 1), "unit": "MiB", "target": f"reported (VmRSS, {total} VMs, after {idle:.0f} s idle)"},
        "operator_open_sockets_idle": {
            "value": connections, "unit": "sockets", "target": "reported (connections held at the RSS reading)",
        },
        "operator_rss_no_vms": {"value": round(rss_before, 1), "unit": "MiB", "target": "reported (VmRSS, started, no VMs)"},
        "operator_busy_after_settled_seconds": {
            "value": round(busy_after, 1), "unit": "s",
            "target": "reported (pools at full status -> operator under 5% CPU over 1 s)",
        },
        "operator_vms_created_seconds": {
            "value": round(created, 1), "unit": "s", "target": f"reported ({total} VMs, {pools} pools created at once)",
        },
        **latency_figures(
            "replicas_change_first_create", big, f"<= 100 (p50 of {changes}, a {replicas}-VM pool, {total} VMs)",
            f"{replicas} -> {replicas + changes}",
        ),
        **latency_figures(
            "replicas_change_first_create_small_pool", small, f"reported (p50 of {changes}, a pool 0 -> {changes} beside them)",
            f"0 -> {changes}",
        ),
        "replicas_patch_request_p50": {
            "value": round(percentile(big_requests + small_requests, 50) * 1000, 1), "unit": "ms",
            "target": "reported (the patch itself, not in the latency)",
        },
        "operator_peak_rss_end": {
            "value": round(peak_end, 1), "unit": "MiB", "target": "reported (VmHWM after the latency runs)",
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=500)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--operator-log", help="keep the operator's log here")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the operator: DIR/create.txt, idle.txt, latency.txt"
    )
    parser.add_argument("--metrics", action="store_true", help="serve the operator's metrics and print its "
                        "pool reconciles per change; results are then not written")  # fmt: skip
    parser.add_argument("--tracemalloc", type=Path, help="run the operator under tracemalloc, write its top "
                        "allocations here after the idle wait; results are then not written")  # fmt: skip
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster.start() as cluster:
        cluster.apply([CRDS, KUBEVIRT_CRDS])
        figures = asyncio.run(measure(cluster, args, Path(tmp)))
    if args.tracemalloc or args.profile or args.metrics:
        print("profiling run: bench/results/operator_scale.json not written (the profiler skews the figures)")
        return
    write_results(
        "operator_scale",
        figures,
        f"make bench-operator  # bench/operator_scale.py --pools {args.pools} --replicas {args.replicas} "
        f"--changes {args.changes}",
    )


if __name__ == "__main__":
    main()
