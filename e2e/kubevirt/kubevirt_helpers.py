"""Helpers of the e2e suite on real KubeVirt (e2e/kubevirt): VMIs, their virt-launcher pods, and what the
guest itself reports on its serial console."""

from __future__ import annotations

import copy
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kind_helpers import apply, get, items, wait_for

from virtfleet.localcluster.testing import SessionCluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
# The guest image (hack/kubevirt/images/guest) prints this every 2 s on its serial console.
GUEST_LINE = re.compile(r"virtfleet-guest uptime=([\d.]+) cpus=(\d+) mem_kib=(\d+) ip=(\S+)")
BOOT_TIMEOUT = 600  # software emulation on two shared cores: minutes, not seconds, when many boot at once


@dataclass(frozen=True)
class GuestReport:
    """One line the guest printed: its own view of itself."""

    uptime_s: float
    cpus: int
    mem_kib: int
    ip: str


def example(path: str, namespace: str, guest_image: str) -> list[dict[str, Any]]:
    """An example's objects as they are, moved into the test's namespace, with the guest image swapped in
    when the suite has one (VIRTFLEET_E2E_GUEST_IMAGE)."""
    objects = [o for o in yaml.safe_load_all((EXAMPLES / path).read_text()) if o]
    return [with_guest_image(o, guest_image, namespace) for o in objects]


def with_guest_image(obj: dict[str, Any], image: str, namespace: str) -> dict[str, Any]:
    moved = copy.deepcopy(obj)
    moved["metadata"]["namespace"] = namespace
    if image and moved["kind"] == "VMTemplate":
        for disk in moved["spec"].get("disks", []):
            if "containerImage" in disk.get("source", {}):
                disk["source"]["containerImage"] = image
    return moved


def elastic(namespace: str, image: str, sockets: int = 1, guest: str = "1Gi") -> dict[str, Any]:
    """A hot-pluggable template: vCPU sockets up to 2, guest memory up to 2Gi."""
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VMTemplate",
        "metadata": {"name": "elastic", "namespace": namespace},
        "spec": {
            "cpu": {"sockets": sockets, "cores": 1, "threads": 1, "policy": "shared", "maxSockets": 2},
            "memory": {"guest": guest, "maxGuest": "2Gi"},
            "disks": [
                {"name": "root", "source": {"containerImage": image or "quay.io/containerdisks/fedora:40"}}
            ],
            "interfaces": [{"name": "default", "type": "nat"}],
        },
    }


def fixed(namespace: str, image: str, guest: str = "256Mi") -> dict[str, Any]:
    """The same template without hot-plug maxima: 1 vCPU and `guest` of memory, for its whole life."""
    template = elastic(namespace, image, guest=guest)
    template["spec"]["cpu"].pop("maxSockets")
    template["spec"]["memory"].pop("maxGuest")
    return template


def small_fleet(cluster: SessionCluster, namespace: str, image: str, replicas: int) -> list[dict[str, Any]]:
    """A pool `elastic` of small fixed guests at cpuRatio 8, once all of them run."""
    pool = {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": "elastic", "namespace": namespace},
        "spec": {"replicas": replicas, "templateRef": {"name": "elastic"}, "cpuRatio": 8},
    }
    apply(cluster, fixed(namespace, image), pool)
    return running_vmis(cluster, namespace, "elastic", replicas)


def vmis(cluster: SessionCluster, namespace: str, *selector: str) -> list[dict[str, Any]]:
    return items(cluster, "virtualmachineinstances.kubevirt.io", namespace, *selector)


def running_vmis(cluster: SessionCluster, namespace: str, pool: str, count: int) -> list[dict[str, Any]]:
    """The pool's VMIs once `count` of them run in a Running virt-launcher pod."""

    def probe() -> list[dict[str, Any]] | None:
        found = vmis(cluster, namespace, "-l", f"virtfleet.io/pool={pool}")
        running = [v for v in found if v.get("status", {}).get("phase") == "Running"]
        if len(running) == count == len(found) and all(launcher_pod(cluster, v) for v in running):
            return running
        return None

    running = wait_for(probe, BOOT_TIMEOUT, f"pool {namespace}/{pool} never had {count} Running VMIs", 2)
    restarted = [booted(cluster, namespace, v["metadata"]["name"]) for v in running]  # every one of them
    if not any(restarted):
        return running
    return wait_for(probe, BOOT_TIMEOUT, f"pool {namespace}/{pool} never had {count} Running VMIs again", 2)


def booted(cluster: SessionCluster, namespace: str, name: str) -> bool:
    """Wait until the guest reports; True if it had to be restarted first.

    QEMU's software emulation here sometimes leaves a 2-vCPU guest hung in early boot: a timer vector stays
    in service in a vCPU's local APIC (no EOI), so no timer interrupt reaches that vCPU again and the
    guest waits forever, VMI Running (seen as "info lapic": ISR 48, IRR 41 48, both vCPUs halted). That
    is the emulator's, not the operator's: a guest whose console stopped changing before its first report
    is restarted once (its VMI deleted; the VM's run strategy starts a new one), loudly; a second hang
    fails the test with the console of both boots.
    """
    first = _first_report(cluster, namespace, name)
    if first is None:
        return False
    warnings.warn(
        f"guest {namespace}/{name} hung in boot under emulation; restarting it once:\n{first}", stacklevel=2
    )
    old = get(cluster, "virtualmachineinstances.kubevirt.io", name, namespace)["metadata"]["uid"]
    cluster.kubectl("-n", namespace, "delete", "vmi", name, "--wait=false")

    def restarted() -> bool:
        vmi = cluster.kubectl("-n", namespace, "get", "vmi", name, "-o", "json", check=False)
        if vmi.returncode != 0:
            return False
        found = json.loads(vmi.stdout)
        return bool(
            found["metadata"]["uid"] != old
            and found.get("status", {}).get("phase") == "Running"
            and launcher_pod(cluster, found)
        )

    wait_for(restarted, BOOT_TIMEOUT, f"guest {namespace}/{name} never ran again after its restart", 2)
    second = _first_report(cluster, namespace, name)
    assert second is None, f"guest {namespace}/{name} hung in boot twice:\n{first}\n--- and again:\n{second}"
    return True


BOOT_SILENCE_S = 120  # a booting guest prints kernel messages; this long without a line, it is hung


def _first_report(cluster: SessionCluster, namespace: str, name: str) -> str | None:
    """None once the guest reports; its console tail if the console went silent before that."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    length, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        vmi = get(cluster, "virtualmachineinstances.kubevirt.io", name, namespace)
        pod = launcher_pod(cluster, vmi)
        output = console_log(cluster, pod)[0] if pod else ""
        if GUEST_LINE.search(output):
            return None
        if pod and "detected stalls on CPUs" in output:  # one vCPU hung, the other still prints
            return console_tail(cluster, namespace, name)
        if len(output) != length:
            length, changed = len(output), time.monotonic()
        elif pod and time.monotonic() - changed > BOOT_SILENCE_S:
            return console_tail(cluster, namespace, name)
        time.sleep(5)
    raise AssertionError(f"guest {namespace}/{name} printed no report in {BOOT_TIMEOUT} s\n"
                         f"{console_tail(cluster, namespace, name)}")  # fmt: skip


PLAN_DONE = ("Succeeded", "Failed", "Cancelled")
MIGRATIONS = "virtualmachineinstancemigrations.kubevirt.io"


def plan_finished(
    cluster: SessionCluster, namespace: str, name: str, timeout: float = 2 * BOOT_TIMEOUT,
    done: tuple[str, ...] = PLAN_DONE,
) -> dict[str, Any]:  # fmt: skip
    """The plan's status once its phase is one of `done`; if it never is, a failure that tells where the
    plan, its migrations and their launcher pods stand."""

    def probe() -> dict[str, Any] | None:
        status = get(cluster, "migrationplan", name, namespace).get("status", {})
        return status if status.get("phase") in done else None

    try:
        return wait_for(probe, timeout, f"plan {namespace}/{name} never finished", 2)
    except AssertionError as stuck:
        raise AssertionError(f"{stuck}\n{plan_story(cluster, namespace, name)}") from None


def plan_story(cluster: SessionCluster, namespace: str, name: str) -> str:
    """The plan's phase, conditions and VM lines, every migration's KubeVirt status, the launcher pods
    and the namespace's latest events: what a stuck plan waits for."""
    status = get(cluster, "migrationplan", name, namespace).get("status", {})
    lines = [f"plan phase {status.get('phase')}: {status.get('message', '')}"]
    lines += [f"  condition {c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"
              for c in status.get("conditions", [])]  # fmt: skip
    lines += [f"  vm {json.dumps(vm, sort_keys=True)}" for vm in status.get("vms", [])]
    for migration in items(cluster, MIGRATIONS, namespace):
        lines.append(f"migration {migration['metadata']['name']}: "
                     f"{json.dumps(migration.get('status', {}), sort_keys=True)}")  # fmt: skip
    for pod in items(cluster, "pods", namespace, "-l", "kubevirt.io=virt-launcher"):
        conditions = [f"{c['type']}={c['status']}" for c in pod["status"].get("conditions", [])]
        lines.append(f"pod {pod['metadata']['name']} node={pod['spec'].get('nodeName')} "
                     f"phase={pod['status'].get('phase')} {' '.join(conditions)}")  # fmt: skip
    events = cluster.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False)
    lines += ["events (latest 30):", *events.stdout.splitlines()[-30:]]
    return "\n".join(lines)


def launcher_pod(cluster: SessionCluster, vmi: dict[str, Any]) -> dict[str, Any] | None:
    """The Running virt-launcher pod that hosts the VMI now (during a migration there are two)."""
    namespace, node = vmi["metadata"]["namespace"], vmi.get("status", {}).get("nodeName")
    pods = items(cluster, "pods", namespace, "-l", f"kubevirt.io/created-by={vmi['metadata']['uid']}")
    for pod in pods:
        if pod["spec"].get("nodeName") == node and pod["status"].get("phase") == "Running":
            return pod
    return None


def console_log(cluster: SessionCluster, pod: dict[str, Any]) -> tuple[str, str]:
    """(output, error) of the launcher pod's guest-console-log container: the guest's serial console."""
    done = cluster.kubectl(
        "-n",
        pod["metadata"]["namespace"],
        "logs",
        pod["metadata"]["name"],
        "-c",
        "guest-console-log",
        check=False,
    )
    return done.stdout, done.stderr


def guest_reports(cluster: SessionCluster, pod: dict[str, Any]) -> list[GuestReport]:
    """Everything the guest printed on its serial console while this launcher pod hosted it."""
    return [
        GuestReport(float(m[1]), int(m[2]), int(m[3]), m[4])
        for m in (GUEST_LINE.search(line) for line in console_log(cluster, pod)[0].splitlines())
        if m
    ]


def guest_now(
    cluster: SessionCluster, namespace: str, name: str, timeout: float = BOOT_TIMEOUT
) -> GuestReport:
    """The guest's latest report, from whichever launcher pod hosts it now."""

    def probe() -> GuestReport | None:
        vmi = get(cluster, "virtualmachineinstances.kubevirt.io", name, namespace)
        pod = launcher_pod(cluster, vmi)
        reports = guest_reports(cluster, pod) if pod else []
        return reports[-1] if reports else None

    try:
        return wait_for(probe, timeout, f"guest {namespace}/{name} printed nothing on its serial console", 2)
    except AssertionError as silent:
        raise AssertionError(f"{silent}\n{console_tail(cluster, namespace, name)}") from None


def console_tail(cluster: SessionCluster, namespace: str, name: str, lines: int = 40) -> str:
    """What a guest that never reported did print, so a failure says where its boot stopped."""
    vmi = get(cluster, "virtualmachineinstances.kubevirt.io", name, namespace)
    pod = launcher_pod(cluster, vmi)
    if pod is None:
        return f"no Running launcher pod hosts it (VMI phase {vmi.get('status', {}).get('phase')})"
    output, error = console_log(cluster, pod)
    tail = "\n".join(output.splitlines()[-lines:])
    return f"serial console of pod {pod['metadata']['name']} (last {lines} lines):\n{tail}\n{error}".rstrip()


def compute_requests(pod: dict[str, Any]) -> tuple[str, str]:
    """The compute container's (cpu, memory) requests: what virt-controller rendered for the VMI."""
    compute = next(c for c in pod["spec"]["containers"] if c["name"] == "compute")
    requests = compute["resources"]["requests"]
    return str(requests["cpu"]), str(requests["memory"])


def kubevirt_cr(cluster: SessionCluster) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", "kubevirts.kubevirt.io", "-A", "-o", "json").stdout
    )
    assert found["items"], "no KubeVirt CR: install KubeVirt first (make kubevirt-up)"
    cr: dict[str, Any] = found["items"][0]
    return cr
