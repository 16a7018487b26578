"""Helpers for the fault-injection tests (test_fault_injection.py): the operator as a process that can
be killed and restarted, Node objects without the simulation, object builders, and waits against the
API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import yaml

from virtfleet.kube.client import (
    MIGRATION_PLANS,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINE_POOLS,
    VIRTUAL_MACHINES,
    VM_TEMPLATES,
    ApiError,
    Kube,
    ResourceRef,
)
from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import stop

T = TypeVar("T")

# Trials per randomised test: 5 in `make test`, 20 for the full run.
TRIALS = int(os.environ.get("VIRTFLEET_RELIABILITY_TRIALS", "5"))
# One seed per run, printed with every trial; set it to replay a run's kill points.
SEED = int(os.environ.get("VIRTFLEET_RELIABILITY_SEED") or secrets.randbelow(2**31))
# Every node of the module's fleet carries this label, so the module removes exactly its own nodes.
NODE_LABEL = "reliability.virtfleet.io/suite"
# What a request against an API server that is down (or just came back) may raise.
TRANSIENT = (ApiError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def trial_random(test: str, trial: int) -> random.Random:
    """The random source of one trial: the run's seed, the test and the trial number."""
    return random.Random(f"{SEED}/{test}/{trial}")


def report(line: str) -> None:
    """One line of a trial's record (shown with `pytest -s` or `-rP`, and in failures)."""
    print(f"[faults seed={SEED}] {line}", flush=True)


class OperatorProcess:
    """`python -m virtfleet run` as its own process, every start appending to one log.

    It watches only the test's namespace: other tests of the session leave namespaces behind that are
    still terminating, and what an operator does there (or logs) is not this test's business.
    """

    def __init__(self, cluster: LocalCluster, namespace: str, log: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "VIRTFLEET_METRICS_PORT": "0"}
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "virtfleet", "run", "-n", self.namespace, "--liveness", ""],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, characters: int = 3000) -> str:
        return self.output()[-characters:]


def create_fleet_nodes(cluster: LocalCluster, fleet: dict[str, Any], directory: Path) -> None:
    """The fleet's Node objects (Ready, untainted), without running the simulation."""
    fleet_file = directory / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    result = subprocess.run(
        [sys.executable, "-m", "virtfleet", "twin", "nodes", "--fleet", str(fleet_file)],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"virtfleet twin nodes failed:\n{result.stdout}\n{result.stderr}"


def template_body(name: str, *, cores: int = 1, memory: str = "1Gi") -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VMTemplate",
        "metadata": {"name": name},
        "spec": {
            "cpu": {"cores": cores},
            "memory": {"guest": memory},
            "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
            "interfaces": [{"name": "default", "type": "nat"}],
        },
    }


def pool_body(
    name: str, template: str, replicas: int, node_selector: dict[str, str], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "templateRef": {"name": template},
            "placement": {"nodeSelector": node_selector},
            **spec,
        },
    }


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float, message: Callable[[], str] | str
) -> T:
    """Poll `check` until it returns something truthy; API errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = await check()
        except TRANSIENT as error:
            value, last_error = None, error
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text}\n(last API error: {last_error!r})")
        await asyncio.sleep(0.2)


async def items(kube: Kube, ref: ResourceRef, namespace: str | None = None) -> list[dict[str, Any]]:
    listing: list[dict[str, Any]] = (await kube.list(ref, namespace))["items"]
    return listing


class Creations:
    """Watch one kind in a namespace from a resourceVersion on, and note every object added; `reached(n)`
    returns as soon as n have been added (a watch, so it reacts within milliseconds)."""

    def __init__(self, kube: Kube, ref: ResourceRef, namespace: str, version: str) -> None:
        self.kube, self.ref, self.namespace, self.version = kube, ref, namespace, version
        self.names: list[str] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Creations:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        # A cancelled watch, or one whose API server went away underneath it (what some tests do).
        with contextlib.suppress(asyncio.CancelledError, *TRANSIENT):
            await self._task

    async def _watch(self) -> None:
        async for event in self.kube.watch(self.ref, self.version, namespace=self.namespace):
            if event.get("type") == "ADDED":
                self.names.append(event["object"]["metadata"]["name"])
                self._changed.set()

    async def reached(self, count: int, timeout: float) -> float:
        """Wait until `count` objects were added; the monotonic time when that was seen."""
        deadline = time.monotonic() + timeout
        while len(self.names) < count:
            assert self._task is not None
            if self._task.done():
                self._task.result()
                raise AssertionError(f"the watch of {self.ref.plural} ended after {len(self.names)} added")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(self.names)} of {count} {self.ref.plural} were created")
            self._changed.clear()  # no await since the count was read: no addition can be missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))
        return time.monotonic()


async def remove_workloads(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    """Delete the namespace's plans, pools and templates while the operator still runs (so finalizers
    are removed the normal way, force-removed if it cannot), then every VM in one deletecollection."""
    for ref in (MIGRATION_PLANS, VIRTUAL_MACHINE_POOLS, VM_TEMPLATES):
        for obj in await items(kube, ref, namespace):
            try:
                await kube.delete(ref, namespace, obj["metadata"]["name"])
            except ApiError as error:
                if error.status != 404:
                    raise

    async def gone() -> bool:
        return not any([await items(kube, r, namespace) for r in (MIGRATION_PLANS, VIRTUAL_MACHINE_POOLS)])

    try:
        if not operator.alive:
            raise AssertionError("no operator to remove the finalizers")
        await eventually(gone, 30, "plans and pools still there")
    except AssertionError:
        for ref in (MIGRATION_PLANS, VIRTUAL_MACHINE_POOLS):
            for obj in await items(kube, ref, namespace):
                await kube.patch(ref, namespace, obj["metadata"]["name"], {"metadata": {"finalizers": None}})
    await kube.request("DELETE", VIRTUAL_MACHINES.path(namespace), body={})
    # The garbage collector would remove the VMIs their VMs own, but after 40 trials of 500 VMs it can
    # lag by more than a minute on 2 cores; this is clean-up, not a check of the operator, so say it.
    await kube.request("DELETE", VIRTUAL_MACHINE_INSTANCES.path(namespace), body={})

    async def no_vmis() -> bool:  # the twin stops them; they weigh on the nodes' capacity until then
        return not await items(kube, VIRTUAL_MACHINE_INSTANCES, namespace)

    await eventually(no_vmis, 60, "the VMs' instances were never removed")
