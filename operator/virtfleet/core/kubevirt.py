"""What KubeVirt asks of a node for a VirtualMachineInstance: its virt-launcher pod's requests.

Shared by the simulated KubeVirt (which schedules with it) and the operator's capacity accounting (which
must predict the same numbers), so both agree on what fits. Mirrors KubeVirt's rendering:

- CPU, shared: `resources.requests.cpu` if set, else vCPUs / the cluster's cpuAllocationRatio (default 10).
- CPU, dedicatedCpuPlacement: whole cores, requests = limits = vCPUs (+1 for isolateEmulatorThread),
  Guaranteed QoS, and the pod only lands on nodes labelled kubevirt.io/cpumanager=true.
- Memory: `resources.requests.memory` if set, else the guest memory; plus the launcher overhead, unless
  `overcommitGuestOverhead`. With hugepages, the guest memory is requested as hugepages-<size> instead
  and only the overhead as memory.

The overhead approximates KubeVirt's GetMemoryOverhead: guest page tables (guest / 512), a fixed part for
virt-launcher, its monitor, virtqemud, virtlogd and QEMU (210 MiB), 8 MiB per vCPU and 16 MiB for the
graphics device. Real clusters differ by a few MiB; the simplification is documented in docs/twin.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from virtfleet.api.quantity import QuantityError, parse_bytes, parse_millicores

MIB = 2**20
DEFAULT_CPU_ALLOCATION_RATIO = 10
FIXED_OVERHEAD = 210 * MIB
PER_VCPU_OVERHEAD = 8 * MIB
GRAPHICS_OVERHEAD = 16 * MIB


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

    @property
    def dedicated(self) -> bool:
        return self.dedicated_cores > 0


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


def memory_overhead(vcpus: int, guest_bytes: int, graphics: bool = True) -> int:
    return (
        math.ceil(guest_bytes / 512)
        + FIXED_OVERHEAD
        + PER_VCPU_OVERHEAD * vcpus
        + (GRAPHICS_OVERHEAD if graphics else 0)
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
    overhead = 0 if resources.get("overcommitGuestOverhead") else memory_overhead(vcpus, guest, graphics)
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
        memory = (
            _bytes(str(requests["memory"]), "spec.domain.resources.requests.memory")
            if "memory" in requests
            else guest
        ) + overhead
    return LauncherRequests(
        cpu_millis=cpu_millis,
        memory_bytes=memory,
        hugepages_2mi_bytes=huge_2mi,
        hugepages_1gi_bytes=huge_1gi,
        dedicated_cores=cores,
        vcpus=vcpus,
        guest_memory_bytes=guest,
        numa_passthrough=bool((cpu.get("numa") or {}).get("guestMappingPassthrough") is not None),
    )


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
