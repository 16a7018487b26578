"""What KubeVirt asks of a node for a VirtualMachineInstance: its virt-launcher pod's requests.

Shared by the simulated KubeVirt (which schedules with it) and the operator's capacity accounting (which
must predict the same numbers), so both agree on what fits. Mirrors KubeVirt's rendering:

- CPU, shared: `resources.requests.cpu` if set, else vCPUs / the cluster's cpuAllocationRatio (default 10).
- CPU, dedicatedCpuPlacement: whole cores, requests = limits = vCPUs (+1 for isolateEmulatorThread),
  Guaranteed QoS, and the pod only lands on nodes labelled kubevirt.io/cpumanager=true.
- Memory: `resources.requests.memory` if set, else the guest memory; plus the launcher overhead, unless
  `overcommitGuestOverhead`. With hugepages, the guest memory is requested as hugepages-<size> instead
  and only the overhead as memory.

The overhead is KubeVirt v1.7's GetMemoryOverhead (pkg/virt-controller/services/renderresources.go), checked
against real virt-launcher pods by e2e/kubevirt: page tables (an explicit memory request / 512, in whole
kB; none when only the guest size is set), a
fixed 220 MiB for virt-launcher-monitor, virt-launcher, virtlogd, virtqemud and QEMU, 8 MiB per vCPU, 8 MiB
for the IOThread, 32 MiB for the graphics device, and 100 MiB more for dedicated CPUs or Guaranteed QoS.
Probes, TPM, SEV and VFIO add more in KubeVirt; virtfleet renders none of them. Beside `compute` the pod
runs guest-console-log (5m, 35M) and one container per containerDisk (1m, 1M), which the scheduler counts
too (`pod_cpu_millis`, `pod_memory_bytes`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from virtfleet.api.quantity import QuantityError, parse_bytes, parse_millicores

MIB = 2**20
DEFAULT_CPU_ALLOCATION_RATIO = 10
FIXED_OVERHEAD = (25 + 100 + 25 + 40 + 30) * MIB  # monitor, virt-launcher, virtlogd, virtqemud, QEMU
PER_VCPU_OVERHEAD = 8 * MIB
IOTHREAD_OVERHEAD = 8 * MIB
GRAPHICS_OVERHEAD = 32 * MIB
GUARANTEED_OVERHEAD = 100 * MIB  # dedicated CPUs or Guaranteed QoS
# The launcher pod's support containers (KubeVirt v1.7 defaults; a Guaranteed pod requests their limits):
# guest-console-log, unless the VMI turns the serial console or its log off, and one per containerDisk.
CONSOLE_LOG = (5, 35_000_000)
CONSOLE_LOG_GUARANTEED = (15, 60_000_000)
CONTAINER_DISK = (1, 1_000_000)
CONTAINER_DISK_GUARANTEED = (10, 40_000_000)


class SpecError(ValueError):
    """A VMI spec KubeVirt would not accept; the message names the field."""


@dataclass(frozen=True)
class LauncherRequests:
    """The pod requests the scheduler places, in millicores and bytes."""

    cpu_millis: int
    memory_bytes: int
    hugepages_2mi_bytes: int = 0
    hugepages_1gi_bytes: int = 0
    dedicated_cores: int = 0  # whole cores pinned by the static CPU manager (0 for shared CPUs)
    vcpus: int = 1
    guest_memory_bytes: int = 0
    numa_passthrough: bool = False
    support_cpu_millis: int = 0  # the pod's other containers: the scheduler counts them too
    support_memory_bytes: int = 0

    @property
    def dedicated(self) -> bool:
        return self.dedicated_cores > 0

    @property
    def pod_cpu_millis(self) -> int:
        return self.cpu_millis + self.support_cpu_millis

    @property
    def pod_memory_bytes(self) -> int:
        return self.memory_bytes + self.support_memory_bytes


def vcpus_of(domain: Mapping[str, Any]) -> int:
    cpu = domain.get("cpu") or {}
    return int(cpu.get("sockets") or 1) * int(cpu.get("cores") or 1) * int(cpu.get("threads") or 1)


def guest_memory_of(domain: Mapping[str, Any]) -> int:
    memory = domain.get("memory") or {}
    resources = domain.get("resources") or {}
    text = memory.get("guest") or (resources.get("requests") or {}).get("memory")
    if text is None:
        raise SpecError("spec.domain.memory.guest: neither memory.guest nor resources.requests.memory is set")
    return _bytes(str(text), "spec.domain.memory.guest")


def memory_overhead(vcpus: int, requested_bytes: int, graphics: bool = True, guaranteed: bool = False) -> int:
    """KubeVirt's launcher overhead for a VMI requesting `requested_bytes` of memory."""
    page_tables = math.ceil(requested_bytes / 1000) * 1000 // 512  # KubeVirt scales to kB, then divides
    return (
        page_tables
        + FIXED_OVERHEAD
        + PER_VCPU_OVERHEAD * max(vcpus, 1)
        + IOTHREAD_OVERHEAD
        + (GRAPHICS_OVERHEAD if graphics else 0)
        + (GUARANTEED_OVERHEAD if guaranteed else 0)
    )


def launcher_requests(
    vmi_spec: Mapping[str, Any], cpu_allocation_ratio: float = DEFAULT_CPU_ALLOCATION_RATIO
) -> LauncherRequests:
    """The virt-launcher pod's requests for a VMI (or VM template) spec."""
    domain = vmi_spec.get("domain") or {}
    cpu = domain.get("cpu") or {}
    resources = domain.get("resources") or {}
    requests = resources.get("requests") or {}
    vcpus = vcpus_of(domain)
    guest = guest_memory_of(domain)
    dedicated = bool(cpu.get("dedicatedCpuPlacement"))
    if dedicated:
        cores = vcpus + (1 if cpu.get("isolateEmulatorThread") else 0)
        cpu_millis = cores * 1000
    elif "cpu" in requests:
        cores = 0
        cpu_millis = _millis(str(requests["cpu"]), "spec.domain.resources.requests.cpu")
    else:
        cores = 0
        cpu_millis = math.ceil(vcpus * 1000 / cpu_allocation_ratio)
    graphics = (domain.get("devices") or {}).get("autoattachGraphicsDevice", True) is not False
    limits = resources.get("limits") or {}
    explicit = (
        _bytes(str(requests["memory"]), "spec.domain.resources.requests.memory")
        if "memory" in requests
        else None
    )
    requested = guest if explicit is None else explicit
    guaranteed = dedicated or (
        "cpu" in requests
        and "memory" in limits
        and str(requests.get("cpu")) == str(limits.get("cpu"))
        and requested == _bytes(str(limits["memory"]), "spec.domain.resources.limits.memory")
    )
    # KubeVirt sizes page tables by the VMI's requests.memory, which virt-api leaves unset when only the
    # guest size is given: then they count as nothing (checked against real launcher pods, e2e/kubevirt).
    page_table_basis = explicit or 0
    overhead = (
        0
        if resources.get("overcommitGuestOverhead")
        else memory_overhead(vcpus, page_table_basis, graphics, guaranteed)
    )
    page_size = ((domain.get("memory") or {}).get("hugepages") or {}).get("pageSize")
    huge_2mi = huge_1gi = 0
    if page_size:
        if page_size == "2Mi":
            huge_2mi = guest
        elif page_size == "1Gi":
            huge_1gi = guest
        else:
            raise SpecError(f"spec.domain.memory.hugepages.pageSize: {page_size!r} is not 2Mi or 1Gi")
        memory = overhead
    else:
        memory = requested + overhead
    support_cpu, support_memory = support_requests(vmi_spec, guaranteed)
    return LauncherRequests(
        cpu_millis=cpu_millis,
        memory_bytes=memory,
        hugepages_2mi_bytes=huge_2mi,
        hugepages_1gi_bytes=huge_1gi,
        dedicated_cores=cores,
        vcpus=vcpus,
        guest_memory_bytes=guest,
        numa_passthrough=bool((cpu.get("numa") or {}).get("guestMappingPassthrough") is not None),
        support_cpu_millis=support_cpu,
        support_memory_bytes=support_memory,
    )


def support_requests(vmi_spec: Mapping[str, Any], guaranteed: bool) -> tuple[int, int]:
    """(millicores, bytes) of the launcher pod's containers besides `compute`, as virt-controller renders
    them with KubeVirt's default support-container resources. A cluster that disables the console log
    (virtualMachineOptions.disableSerialConsoleLog) requests less than counted here: the safe side."""
    devices = ((vmi_spec.get("domain") or {}).get("devices")) or {}
    cpu = memory = 0
    if devices.get("autoattachSerialConsole") is not False and devices.get("logSerialConsole") is not False:
        cpu, memory = CONSOLE_LOG_GUARANTEED if guaranteed else CONSOLE_LOG
    disks = sum(1 for volume in vmi_spec.get("volumes") or [] if "containerDisk" in volume)
    per_disk = CONTAINER_DISK_GUARANTEED if guaranteed else CONTAINER_DISK
    return cpu + disks * per_disk[0], memory + disks * per_disk[1]


def _bytes(text: str, field: str) -> int:
    try:
        return parse_bytes(text)
    except QuantityError as error:
        raise SpecError(f"{field}: {error}") from error


def _millis(text: str, field: str) -> int:
    try:
        return parse_millicores(text)
    except QuantityError as error:
        raise SpecError(f"{field}: {error}") from error
