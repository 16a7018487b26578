"""Render a pool member: VMTemplate revision + pool + ordinal -> a kubevirt.io/v1 VirtualMachine (pure).

Oversubscription (docs/oversubscription.md):
- shared CPUs: requests.cpu = vCPUs x 1000 / cpuRatio millicores, limits.cpu = vCPUs (static allocation);
- memory: guest = the template's memory, requests.memory = guest / memoryRatio (KubeVirt lets the guest
  see more memory than the pod requests: that is its overcommit mechanism);
- dedicated CPUs: requests = limits = whole cores, memory requests = limits = guest (Guaranteed QoS),
  never oversubscribed; the pod lands only on cpumanager nodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from virtfleet import API_VERSION
from virtfleet.api.labels import (
    CPU_RATIO_ANNOTATION,
    CPUMANAGER_LABEL,
    HOSTNAME_LABEL,
    MANAGED_BY_LABEL,
    MEMORY_RATIO_ANNOTATION,
    ORDINAL_LABEL,
    POOL_HASH_ANNOTATION,
    POOL_LABEL,
    REVISION_LABEL,
    TEMPLATE_LABEL,
)
from virtfleet.api.pool import VirtualMachinePoolSpec
from virtfleet.api.quantity import parse_bytes
from virtfleet.api.vmtemplate import CLOUD_INIT_DISK, Disk, Interface, VMTemplateSpec
from virtfleet.core.revisions import revision_hash


class RenderError(ValueError):
    """The template and pool cannot make a valid VM; the message names the field."""


@dataclass(frozen=True)
class PoolContext:
    """Everything about the pool that rendering needs."""

    name: str
    namespace: str
    uid: str
    spec: VirtualMachinePoolSpec
    cpu_ratio: float
    memory_ratio: float


def pool_hash(pool: PoolContext) -> str:
    """Hash of everything but the template revision that shapes the pool's VMs."""
    inputs = pool.spec.model_dump(
        mode="json", by_alias=True, include={"allocation", "placement", "run_strategy", "overrides"}
    )
    inputs.update(cpuRatio=pool.cpu_ratio, memoryRatio=pool.memory_ratio)
    return revision_hash(inputs)


def pool_selector(pool: str) -> str:
    return f"{POOL_LABEL}={pool}"


def vm_name(pool: str, ordinal: int) -> str:
    return f"{pool}-{ordinal}"


def check_compatible(template: VMTemplateSpec, cpu_ratio: float, memory_ratio: float) -> list[str]:
    """Problems that only template + pool together reveal (admission sees them one at a time)."""
    problems = []
    if template.cpu.policy == "dedicated" and cpu_ratio != 1:
        problems.append(
            f"spec.cpuRatio: {cpu_ratio:g} with a dedicated-CPU template; pinned cores cannot be "
            "oversubscribed, use 1"
        )
    if template.memory.hugepages and memory_ratio != 1:
        problems.append(
            f"spec.memoryRatio: {memory_ratio:g} with a hugepage-backed template; hugepages cannot be "
            "oversubscribed, use 1"
        )
    return problems


def _millicores(vcpus: int, ratio: float) -> str:
    return f"{math.ceil(vcpus * 1000 / ratio)}m"


def _memory_request(guest: str, ratio: float) -> str:
    if ratio == 1:
        return guest
    return str(math.ceil(parse_bytes(guest) / ratio))


def render_vm(
    pool: PoolContext, template_name: str, revision: str, template: VMTemplateSpec, ordinal: int
) -> dict[str, Any]:
    """The VirtualMachine for one pool member (stable name `<pool>-<ordinal>`)."""
    problems = check_compatible(template, pool.cpu_ratio, pool.memory_ratio)
    if problems:
        raise RenderError("; ".join(problems))
    spec = pool.spec
    name = vm_name(pool.name, ordinal)
    identity = {
        POOL_LABEL: pool.name,
        TEMPLATE_LABEL: template_name,
        REVISION_LABEL: revision,
        ORDINAL_LABEL: str(ordinal),
        MANAGED_BY_LABEL: "virtfleet",
    }
    labels = {**template.labels, **spec.overrides.labels, **identity}
    annotations = {
        **template.annotations,
        **spec.overrides.annotations,
        CPU_RATIO_ANNOTATION: f"{pool.cpu_ratio:g}",
        MEMORY_RATIO_ANNOTATION: f"{pool.memory_ratio:g}",
        POOL_HASH_ANNOTATION: pool_hash(pool),
    }
    dynamic = spec.allocation == "dynamic"
    cpu = template.cpu
    dedicated = cpu.policy == "dedicated"
    domain_cpu: dict[str, Any] = {"sockets": cpu.sockets, "cores": cpu.cores, "threads": cpu.threads}
    model = spec.overrides.cpu_model or cpu.model
    if model:
        domain_cpu["model"] = model
    if dedicated:
        domain_cpu["dedicatedCpuPlacement"] = True
        if cpu.isolate_emulator_thread:
            domain_cpu["isolateEmulatorThread"] = True
    if template.numa and template.numa.guest_mapping_passthrough:
        domain_cpu["numa"] = {"guestMappingPassthrough": {}}
    if dynamic and cpu.max_sockets:
        domain_cpu["maxSockets"] = cpu.max_sockets
    memory: dict[str, Any] = {"guest": template.memory.guest}
    if template.memory.hugepages:
        memory["hugepages"] = {"pageSize": template.memory.hugepages}
    if dynamic and template.memory.max_guest:
        memory["maxGuest"] = template.memory.max_guest

    vcpus = cpu.vcpus
    resources: dict[str, Any]
    if dedicated:
        cores = str(vcpus)
        resources = {"requests": {"cpu": cores}, "limits": {"cpu": cores}}
        if not template.memory.hugepages:
            resources["requests"]["memory"] = template.memory.guest
            resources["limits"]["memory"] = template.memory.guest
    else:
        resources = {"requests": {"cpu": _millicores(vcpus, pool.cpu_ratio)}}
        if not dynamic:
            # A CPU limit would cap hot-plugged vCPUs at the boot-time count, so only static VMs get one.
            resources["limits"] = {"cpu": str(vcpus)}
        if not template.memory.hugepages:
            resources["requests"]["memory"] = _memory_request(template.memory.guest, pool.memory_ratio)

    disks, volumes, data_volumes = _storage(name, pool.namespace, template.disks)
    interfaces, networks = _network(template.interfaces)
    devices: dict[str, Any] = {"disks": disks, "interfaces": interfaces}
    if not template.interfaces:
        devices["autoattachPodInterface"] = False
    if template.host_devices:
        devices["hostDevices"] = [
            {"name": d.name, "deviceName": d.device_name} for d in template.host_devices
        ]
    if template.cloud_init:
        devices["disks"].append({"name": CLOUD_INIT_DISK, "disk": {"bus": "virtio"}})
        no_cloud: dict[str, Any] = (
            {"userData": template.cloud_init.user_data}
            if template.cloud_init.user_data is not None
            else {"secretRef": {"name": template.cloud_init.user_data_secret_ref.name}}  # type: ignore[union-attr]
        )
        volumes.append({"name": CLOUD_INIT_DISK, "cloudInitNoCloud": no_cloud})

    vmi_spec: dict[str, Any] = {
        "domain": {"cpu": domain_cpu, "memory": memory, "resources": resources, "devices": devices},
        "networks": networks,
        "volumes": volumes,
        "evictionStrategy": spec.overrides.eviction_strategy or template.eviction_strategy,
    }
    node_selector = dict(spec.placement.node_selector)
    if dedicated:
        node_selector[CPUMANAGER_LABEL] = "true"
    if node_selector:
        vmi_spec["nodeSelector"] = node_selector
    pool_match = {"matchLabels": {POOL_LABEL: pool.name}}
    if spec.placement.spread:
        vmi_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": spec.placement.spread.max_skew,
                "topologyKey": spec.placement.spread.topology_key,
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": pool_match,
            }
        ]
    if spec.placement.anti_affinity == "required":
        vmi_spec["affinity"] = {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": pool_match, "topologyKey": HOSTNAME_LABEL}
                ]
            }
        }
    elif spec.placement.anti_affinity == "preferred":
        vmi_spec["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": pool_match,
                            "topologyKey": HOSTNAME_LABEL,
                        },
                    }
                ]
            }
        }

    vm: dict[str, Any] = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": pool.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "VirtualMachinePool",
                    "name": pool.name,
                    "uid": pool.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "runStrategy": spec.run_strategy or template.run_strategy,
            "template": {
                "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                "spec": vmi_spec,
            },
        },
    }
    if data_volumes:
        vm["spec"]["dataVolumeTemplates"] = data_volumes
    return vm


def _storage(
    vm: str, namespace: str, disks: list[Disk]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    devices: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    data_volumes: list[dict[str, Any]] = []
    for disk in disks:
        device: dict[str, Any] = {"name": disk.name, "disk": {"bus": disk.bus}}
        if disk.boot_order is not None:
            device["bootOrder"] = disk.boot_order
        devices.append(device)
        source = disk.source
        if source.container_image:
            volumes.append({"name": disk.name, "containerDisk": {"image": source.container_image}})
            continue
        dv_name = f"{vm}-{disk.name}"
        dv_source: dict[str, Any]
        if source.http:
            dv_source = {"http": {"url": source.http}}
        elif source.clone_pvc:
            # CDI requires the source namespace; a template without one means its own namespace.
            pvc = source.clone_pvc
            dv_source = {"pvc": {"name": pvc.name, "namespace": pvc.namespace or namespace}}
        elif source.clone_snapshot:
            snap = source.clone_snapshot
            dv_source = {"snapshot": {"name": snap.name, "namespace": snap.namespace or namespace}}
        else:
            dv_source = {"blank": {}}
        storage: dict[str, Any] = {"resources": {"requests": {"storage": disk.size}}}
        if disk.storage_class:
            storage["storageClassName"] = disk.storage_class
        dv_spec: dict[str, Any] = {"source": dv_source, "storage": storage}
        if disk.provisioning == "thick":
            dv_spec["preallocation"] = True
        data_volumes.append({"metadata": {"name": dv_name}, "spec": dv_spec})
        volumes.append({"name": disk.name, "dataVolume": {"name": dv_name}})
    return devices, volumes, data_volumes


def _network(interfaces: list[Interface]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    devices: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for iface in interfaces:
        binding = {"nat": "masquerade", "bridge": "bridge", "isolated": "bridge", "sriov": "sriov"}[
            iface.type
        ]
        device: dict[str, Any] = {"name": iface.name, binding: {}}
        if iface.type != "sriov":
            device["model"] = iface.model
        if iface.mac_address:
            device["macAddress"] = iface.mac_address
        devices.append(device)
        if iface.type == "nat":
            networks.append({"name": iface.name, "pod": {}})
        else:
            networks.append({"name": iface.name, "multus": {"networkName": iface.network}})
    return devices, networks


def hotplug_only(old: VMTemplateSpec, new: VMTemplateSpec) -> bool:
    """True when the revisions differ only in what KubeVirt hot-plugs into a running VM (LiveUpdate):
    more CPU sockets within maxSockets, more guest memory within maxGuest (both bounds unchanged). Fewer
    sockets or less memory than the VM booted with need a restart in KubeVirt (RestartRequired)."""
    if old == new:
        return True
    if new.cpu.max_sockets is None and new.memory.max_guest is None:
        return False
    same_rest = old.model_copy(
        update={
            "cpu": old.cpu.model_copy(update={"sockets": new.cpu.sockets}),
            "memory": old.memory.model_copy(update={"guest": new.memory.guest}),
        }
    )
    if same_rest != new:
        return False
    if new.cpu.sockets != old.cpu.sockets and (
        new.cpu.max_sockets is None
        or new.cpu.sockets > new.cpu.max_sockets
        or new.cpu.sockets < old.cpu.sockets
    ):
        return False
    return new.memory.guest == old.memory.guest or (
        new.memory.max_guest is not None
        and parse_bytes(old.memory.guest) < parse_bytes(new.memory.guest) <= parse_bytes(new.memory.max_guest)
    )


def live_update_patch(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that moves a running member to a hot-pluggable revision (see hotplug_only), from its
    rendering at that revision: the VM's and its VMI template's labels and annotations, and of the spec
    only what KubeVirt live-updates, CPU sockets and guest memory. Resources stay as created: a changed
    request is not live-updatable in KubeVirt (the VM would get RestartRequired), and KubeVirt adds the
    hot-plugged vCPUs' and memory's requests to the VMI itself."""
    domain = vm["spec"]["template"]["spec"]["domain"]
    return {
        "metadata": {
            "labels": dict(vm["metadata"].get("labels") or {}),
            "annotations": dict(vm["metadata"].get("annotations") or {}),
        },
        "spec": {
            "template": {
                "metadata": dict(vm["spec"]["template"].get("metadata") or {}),
                "spec": {
                    "domain": {
                        "cpu": {"sockets": domain["cpu"]["sockets"]},
                        "memory": {"guest": domain["memory"]["guest"]},
                    }
                },
            }
        },
    }
