"""Operator scale benchmark, in the real control plane (no KubeVirt runtime: no twin runs), and how the
operator's cost grows with the fleet.

The fleet grows through sizes (default 1,000, 2,500, 5,000, 10,000 VMs) as pools of 500 replicas in one
namespace, on 500 Node objects from `virtfleet twin nodes`. "Managed" means every VirtualMachine exists
(seen ADDED by a watch) and each pool's status.replicas is current: the operator created them and holds
them in its indexes (nothing runs them: no VMIs). At each size:

1. created: the new pools are created at once; how long until their VMs exist, and how long the operator
   stays busy (above 5 % of a CPU over 1 s) after every pool reports them: target <= 5 s at the top.
2. replicas change -> first create: pool-0's spec.replicas goes up by one, 50 times, timed from the patch
   response to a watch seeing the new VM ADDED (target p50 <= 50 ms at the top); then back to 500.
3. idle: write requests to what the operator touches (kube-apiserver's apiserver_request_total) over 60 s
   at the top, 10 s below it (target 0); VmRSS and VmHWM (peak, the create burst included: <= 200 MiB).
4. restart: the operator is stopped and another started with the fleet in place; the time from its
   process start until its metrics report every pool's VMs and it is idle (target <= 30 s at the top),
   and the write requests meanwhile (target 0). The restarted process manages the next size.

Run with `make bench-operator` or `VIRTFLEET_BIN_DIR=... .venv/bin/python bench/operator_scale.py`;
`bench/curves.py` draws the curves from the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import api_writes, peak_rss_mib, write_results

from virtfleet.kube.client import (
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
QUIET_WINDOW = 1.0  # seconds under 5 % of a CPU that make the operator idle


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_quiet(pid: int, timeout: float, window: float = QUIET_WINDOW, busy: float = 0.05) -> float:
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
                elif kind == "DELETED":  # a name made again later is timed again
                    self.added.pop(obj["metadata"]["name"], None)
                    self.changed.set()

    def has(self, name: str) -> Callable[[], bool]:
        return lambda: name in self.added

    def counts(self, count: int, at_least: bool = False) -> Callable[[], bool]:
        """A check for wait_for: the namespace holds `count` VMs (or at least that many)."""
        return lambda: len(self.added) >= count if at_least else len(self.added) == count

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
        await watch.wait_for(watch.has(new), 30, f"{new} ADDED")
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


class Operator:
    """One operator process: `virtfleet run` with its metrics served, so the benchmark can see when it
    has seen every pool's VMs."""

    def __init__(self, env: dict[str, str], log: Path, tracemalloc: Path | None = None) -> None:
        self.metrics_port = free_port()
        command = [sys.executable, "-m", "virtfleet", "run", "--liveness", ""]
        if tracemalloc:
            command = [sys.executable, str(Path(__file__).with_name("traced_operator.py")), str(tracemalloc),
                       *command[4:]]  # fmt: skip
        self.log = log
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, env={**env, "VIRTFLEET_METRICS_PORT": str(self.metrics_port)},
            stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.pid = self.process.pid

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the operator exited: {self.log.read_text()[-3000:]}")

    def pools_seen(self, namespace: str) -> dict[str, float]:
        """Pool -> VMs it counts (virtfleet_pool_replicas{state="current"}), as the operator reports it."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
            ) as response:
                text = response.read().decode()
        except OSError:
            return {}  # not serving yet
        seen = {}
        for line in text.splitlines():
            if line.startswith("virtfleet_pool_replicas{") and 'state="current"' in line:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
                if labels.get("namespace") == namespace:
                    seen[labels["pool"]] = float(line.rsplit(" ", 1)[1])
        return seen

    def stop(self) -> None:
        stop(self.process, grace=30)


@dataclass
class Level:
    """What one fleet size costs."""

    vms: int
    created_s: float = 0.0
    busy_after_settled_s: float = 0.0
    first_create_ms: list[float] = field(default_factory=list)
    idle_s: float = 0.0
    idle_writes: int = 0
    rss_idle_mib: float = 0.0
    peak_rss_mib: float = 0.0  # VmHWM of the process that grew the fleet to this size
    resync_s: float = 0.0
    resync_writes: int = 0
    resync_rss_mib: float = 0.0  # VmRSS of the restarted process once it is idle
    resync_peak_rss_mib: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end


async def restart(
    operator: Operator, cluster: LocalCluster, env: dict[str, str], level: Level, pools: int, workdir: Path,
    profile: Path | None,
) -> Operator:  # fmt: skip
    """Stop the operator and start another with the fleet in place: the time from its process start until
    it reports every pool's VMs and is idle, and the writes it made meanwhile (there should be none)."""
    operator.stop()
    before = api_writes(cluster)
    fresh = Operator(env, workdir / "operator.log")
    with profiling(fresh.pid, profile and profile / f"{level.vms}-resync.txt"):
        deadline = fresh.started + 600
        while True:
            seen = fresh.pools_seen(FLEET_NS)
            if len(seen) == pools and sum(seen.values()) == level.vms:
                break
            fresh.alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the restarted operator never reported {level.vms} VMs: {seen}")
            await asyncio.sleep(0.25)  # a scrape renders 500 nodes: not too often
        await wait_quiet(fresh.pid, 300)
    level.resync_s = time.monotonic() - QUIET_WINDOW - fresh.started
    await asyncio.sleep(2)  # a write that follows the quiet second is still the resync's
    level.resync_writes = api_writes(cluster) - before
    level.resync_rss_mib = rss_mib(fresh.pid)
    level.resync_peak_rss_mib = peak_rss_mib(fresh.pid)
    print(f"  restart: every pool's VMs reported and idle {level.resync_s:.1f}s after the process started; "
          f"{level.resync_writes} writes; RSS {level.resync_rss_mib:.1f} MiB (peak {level.resync_peak_rss_mib:.1f})",
          flush=True)  # fmt: skip
    return fresh


async def measure(
    cluster: LocalCluster, args: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, Any]]:
    replicas, changes = args.replicas, args.changes
    levels = [Level(vms) for vms in args.levels]
    if any(level.vms % replicas for level in levels):
        raise SystemExit(f"--levels must be multiples of --replicas {replicas}")
    profile: Path | None = args.profile
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    fleet = workdir / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump({"nodes": [{"name": "node", "count": args.nodes, "cpu": 64, "memory": "512Gi"}]})
    )
    subprocess.run([sys.executable, "-m", "virtfleet", "twin", "nodes", "--fleet", str(fleet)], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    operator = Operator(env, workdir / "operator.log", args.tracemalloc)
    names: list[str] = []
    try:
        kube = await Kube.connect(field_manager="bench", kubeconfig=str(cluster.kubeconfig), pool_size=32)
        async with kube:
            for namespace in (FLEET_NS, SMALL_NS):
                await kube.create(NAMESPACES, None, {"metadata": {"name": namespace}})
                await kube.create(VM_TEMPLATES, namespace, {"apiVersion": "virtfleet.io/v1alpha1", "kind": "VMTemplate",
                                                            "metadata": {"name": "bench"}, "spec": TEMPLATE})  # fmt: skip
            fleet_watch, small_watch = VMWatch(kube, FLEET_NS), VMWatch(kube, SMALL_NS)
            for w in (fleet_watch, small_watch):
                await w.start()
            await kube.create(VIRTUAL_MACHINE_POOLS, SMALL_NS, pool_body("small", 0))
            await wait_settled(kube, SMALL_NS, ["small"], 0, 120, operator.process)
            rss_before = rss_mib(operator.pid)
            print(f"operator RSS with no VMs: {rss_before:.1f} MiB", flush=True)

            for level in levels:
                level.load = (os.getloadavg()[0], 0.0)
                print(f"{level.vms} VMs ({level.vms // replicas} pools x {replicas}) on {args.nodes} nodes, "
                      f"load average {level.load[0]:.2f}:", flush=True)  # fmt: skip
                # Grow the fleet to this size: the new pools are created at once.
                new = [f"pool-{i}" for i in range(len(names), level.vms // replicas)]
                names += new
                started = time.monotonic()
                with profiling(operator.pid, profile and profile / f"{level.vms}-create.txt"):
                    for name in new:
                        await kube.create(VIRTUAL_MACHINE_POOLS, FLEET_NS, pool_body(name, replicas))
                    await fleet_watch.wait_for(
                        fleet_watch.counts(level.vms, at_least=True), 900, f"{level.vms} VMs"
                    )
                    level.created_s = time.monotonic() - started
                    await wait_settled(
                        kube, FLEET_NS, names, replicas, 1800 if args.tracemalloc else 300, operator.process
                    )
                with profiling(operator.pid, profile and profile / f"{level.vms}-settled.txt"):
                    # The pools' status counts creates in flight; the operator may still be working through
                    # the watch events of its creates. Idle means idle: wait for that first.
                    level.busy_after_settled_s = await wait_quiet(
                        operator.pid, 1800 if args.tracemalloc else 300
                    )
                print(f"  {len(new) * replicas} VMs created in {level.created_s:.1f}s; operator quiet "
                      f"{level.busy_after_settled_s:.1f}s after every pool reported them", flush=True)  # fmt: skip

                # A replicas change on one pool -> its first create, while the fleet is managed; then back.
                with profiling(operator.pid, profile and profile / f"{level.vms}-latency.txt"):
                    latencies, _ = await replica_latencies(
                        kube, fleet_watch, FLEET_NS, names[0], replicas, changes, operator.process
                    )
                level.first_create_ms = [x * 1000 for x in latencies]
                await kube.patch(VIRTUAL_MACHINE_POOLS, FLEET_NS, names[0], {"spec": {"replicas": replicas}})
                await wait_settled(kube, FLEET_NS, [names[0]], replicas, 120, operator.process)
                await fleet_watch.wait_for(fleet_watch.counts(level.vms), 120, "the scale-in")
                await wait_quiet(operator.pid, 300)
                print(f"  {names[0]} {replicas} -> {replicas + changes}: first create p50 "
                      f"{percentile(level.first_create_ms, 50):.1f} ms, p90 {percentile(level.first_create_ms, 90):.1f} ms",
                      flush=True)  # fmt: skip

                # Idle: nothing changes, nothing may be written.
                level.idle_s = args.idle_seconds if level is levels[-1] else min(args.idle_seconds, 10.0)
                before = api_writes(cluster)
                with profiling(operator.pid, profile and profile / f"{level.vms}-idle.txt"):
                    await asyncio.sleep(level.idle_s)
                level.idle_writes = api_writes(cluster) - before
                operator.alive()
                level.rss_idle_mib = rss_mib(operator.pid)
                level.peak_rss_mib = peak_rss_mib(operator.pid)
                print(f"  idle {level.idle_s:.0f}s: {level.idle_writes} writes; RSS {level.rss_idle_mib:.1f} MiB, "
                      f"peak {level.peak_rss_mib:.1f} MiB (VmHWM); {sockets(operator.pid)} open sockets", flush=True)  # fmt: skip
                if args.tracemalloc and level is levels[-1]:
                    operator.process.send_signal(signal.SIGUSR1)
                    await asyncio.sleep(5)
                    print(f"tracemalloc: {args.tracemalloc}", flush=True)
                    break

                # Restart with the fleet in place.
                operator = await restart(operator, cluster, env, level, len(names), workdir, profile)
                level.load = (level.load[0], os.getloadavg()[0])

            # A pool of its own beside the fleet: the latency without a big pool's members to walk.
            small, _ = await replica_latencies(
                kube, small_watch, SMALL_NS, "small", 0, changes, operator.process
            )
            for w in (fleet_watch, small_watch):
                await w.stop()
            operator.alive()
    finally:
        operator.stop()
    return figures(levels, rss_before, [x * 1000 for x in small], args)


def figures(
    levels: list[Level], rss_before: float, small_ms: list[float], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    top = levels[-1]
    total, pools, nodes = top.vms, top.vms // args.replicas, args.nodes
    where = f"{total} VMs, {pools} pools x {args.replicas}, {nodes} nodes"
    result: dict[str, dict[str, Any]] = {
        "operator_peak_rss": {
            "value": round(max(top.peak_rss_mib, top.resync_peak_rss_mib), 1),
            "unit": "MiB",
            "target": f"<= 200 (VmHWM, {where}: the process that grew the fleet and the restarted one)",
        },
        "operator_rss_idle": {
            "value": round(top.rss_idle_mib, 1),
            "unit": "MiB",
            "target": f"reported (VmRSS, {where}, idle)",
        },
        "operator_rss_no_vms": {
            "value": round(rss_before, 1),
            "unit": "MiB",
            "target": "reported (VmRSS, started, no VMs)",
        },
        "operator_resync_seconds": {
            "value": round(top.resync_s, 1),
            "unit": "s",
            "target": f"<= 30 (restart with {where}: process start -> every pool's VMs reported and idle)",
        },
        "operator_resync_write_requests": {"value": top.resync_writes, "unit": "requests", "target": "0"},
        "operator_idle_write_requests": {
            "value": top.idle_writes,
            "unit": "requests",
            "target": f"0 (in {top.idle_s:.0f} s idle, {where})",
        },
        "replicas_change_first_create_p50": {
            "value": round(percentile(top.first_create_ms, 50), 1),
            "unit": "ms",
            "target": f"<= 50 (p50 of {args.changes}, a {args.replicas}-VM pool, {where})",
        },
        "replicas_change_first_create_p90": {
            "value": round(percentile(top.first_create_ms, 90), 1),
            "unit": "ms",
            "target": "reported",
        },
        "replicas_change_first_create_small_pool_p50": {
            "value": round(percentile(small_ms, 50), 1),
            "unit": "ms",
            "target": f"reported (p50 of {args.changes}, a pool 0 -> {args.changes} beside the fleet)",
        },
        "operator_busy_after_settled_seconds": {
            "value": round(top.busy_after_settled_s, 1),
            "unit": "s",
            "target": "<= 5 (every pool reports its VMs -> operator under 5% CPU over 1 s)",
        },
        "operator_vms_created_seconds": {
            "value": round(top.created_s, 1),
            "unit": "s",
            "target": f"reported ({top.vms - (levels[-2].vms if len(levels) > 1 else 0)} VMs, their pools created at once)",
        },
    }
    # The cost curves: how each figure grows with the fleet.
    for level in levels:
        n = level.vms
        result[f"curve_{n}_vms_rss_mib"] = {"value": round(level.resync_rss_mib or level.rss_idle_mib, 1),
                                            "unit": "MiB", "target": "reported (VmRSS after a restart, idle)"}  # fmt: skip
        result[f"curve_{n}_vms_peak_rss_mib"] = {"value": round(level.peak_rss_mib, 1), "unit": "MiB",
                                                 "target": "reported (VmHWM of the process that grew the fleet)"}  # fmt: skip
        result[f"curve_{n}_vms_resync_seconds"] = {
            "value": round(level.resync_s, 1),
            "unit": "s",
            "target": "reported",
        }
        result[f"curve_{n}_vms_first_create_p50_ms"] = {"value": round(percentile(level.first_create_ms, 50), 1),
                                                        "unit": "ms", "target": "reported"}  # fmt: skip
        result[f"curve_{n}_vms_busy_after_settled_seconds"] = {"value": round(level.busy_after_settled_s, 1),
                                                               "unit": "s", "target": "reported"}  # fmt: skip
        result[f"curve_{n}_vms_load_average"] = {"value": f"{level.load[0]:.2f} -> {level.load[1]:.2f}",
                                                 "unit": "1-min", "target": "reported (start -> end of the level)"}  # fmt: skip
    return result  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1000, 2500, 5000, 10000], help="fleet sizes, growing (default 1000,2500,5000,10000)")  # fmt: skip
    parser.add_argument("--replicas", type=int, default=500, help="VMs per pool")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument(
        "--idle-seconds", type=float, default=60.0, help="at the largest size (10 s at the others)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the operator: DIR/<vms>-{create,settled,latency,idle,resync}.txt"
    )
    parser.add_argument("--tracemalloc", type=Path, help="run the operator under tracemalloc, write its top "
                        "allocations here after the last idle wait; results are then not written")  # fmt: skip
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster.start() as cluster:
        cluster.apply([CRDS, KUBEVIRT_CRDS])
        results = asyncio.run(measure(cluster, args, Path(tmp)))
    if args.tracemalloc or args.profile:
        print("profiling run: bench/results/operator_scale.json not written (the profiler skews the figures)")
        return
    write_results(
        "operator_scale",
        results,
        f"make bench-operator  # bench/operator_scale.py --levels {','.join(map(str, args.levels))} "
        f"--replicas {args.replicas} --nodes {args.nodes} --changes {args.changes} --idle-seconds {args.idle_seconds:g}",
    )


if __name__ == "__main__":
    main()
