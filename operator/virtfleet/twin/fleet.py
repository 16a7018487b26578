"""The fleet file: simulated nodes and the simulated cluster's KubeVirt settings.
The scheme's name and cpu-list syntax live in the core (virtfleet.core.capacity, virtfleet.core.cpulist),
where the operator reads them.

NUMA topology scheme (read by the operator too): each node carries the annotation
`virtfleet.io/numa-topology` with JSON `{"cells": [{"id": 0, "cpus": "0-15", "memory": "64Gi",
"hugepages2Mi": "0", "hugepages1Gi": "32Gi"}, ...]}` — cpus as a Linux cpu list, sizes as quantities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, StringConstraints, field_validator, model_validator

from virtfleet.api.base import AnyQuantity, Model
from virtfleet.api.labels import CPUMANAGER_LABEL, HOSTNAME_LABEL, NUMA_ANNOTATION
from virtfleet.api.quantity import parse_bytes
from virtfleet.core.cpulist import format_cpu_list, parse_cpu_list

ZONE_LABEL = "topology.kubernetes.io/zone"
SCHEDULABLE_LABEL = "kubevirt.io/schedulable"
FLEET_LABEL = "twin.virtfleet.io/fleet"
# Per-node link speed for migrations, bytes per second.
BANDWIDTH_ANNOTATION = "twin.virtfleet.io/migration-bandwidth"


class NumaCell(Model):
    """One NUMA cell of a node."""

    cpus: Annotated[str, StringConstraints(pattern=r"^[0-9,\- ]+$")] = Field(description="Linux cpu list.")
    memory: AnyQuantity = Field(description="Memory in this cell.")
    hugepages_2mi: AnyQuantity = Field(default="0", alias="hugepages2Mi", description="2Mi hugepages here.")
    hugepages_1gi: AnyQuantity = Field(default="0", alias="hugepages1Gi", description="1Gi hugepages here.")


class Taint(Model):
    """A node taint."""

    key: str = Field(description="Taint key.")
    value: str = Field(default="", description="Taint value.")
    effect: str = Field(default="NoSchedule", description="NoSchedule, PreferNoSchedule or NoExecute.")


class NodeGroup(Model):
    """One node, or `count` identical nodes named `<name>-<i>`."""

    name: str = Field(description="Node name, or the prefix when count is set.")
    count: int | None = Field(default=None, ge=1, le=10000, description="Make this many nodes.")
    zone: str = Field(default="zone-a", description="topology.kubernetes.io/zone.")
    cpu: int = Field(ge=1, le=4096, description="Physical CPUs (cores x threads the kernel sees).")
    memory: AnyQuantity = Field(description="Memory capacity.")
    hugepages_2mi: AnyQuantity = Field(default="0", alias="hugepages2Mi", description="2Mi hugepages total.")
    hugepages_1gi: AnyQuantity = Field(default="0", alias="hugepages1Gi", description="1Gi hugepages total.")
    reserved_cpu: int = Field(default=0, ge=0, description="CPUs reserved for the system (not allocatable).")
    reserved_memory: AnyQuantity = Field(default="0", description="Memory reserved for the system.")
    cpu_manager: bool = Field(default=False, description="Static CPU manager: can host dedicated CPUs.")
    numa: list[NumaCell] = Field(default_factory=list, description="NUMA cells; one cell when empty.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels.")
    taints: list[Taint] = Field(default_factory=list, description="Taints.")
    unschedulable: bool = Field(default=False, description="Cordoned.")
    ready: bool = Field(default=True, description="Ready condition.")
    migration_bandwidth: AnyQuantity | None = Field(
        default=None, description="Migration link speed, bytes/s; the fleet default when unset."
    )

    @model_validator(mode="after")
    def _numa_adds_up(self) -> NodeGroup:
        if self.numa:
            cpus = [c for cell in self.numa for c in parse_cpu_list(cell.cpus)]
            if len(cpus) != len(set(cpus)):
                raise ValueError(f"node {self.name}: a cpu is listed in two NUMA cells")
            if len(cpus) != self.cpu:
                raise ValueError(f"node {self.name}: NUMA cells list {len(cpus)} cpus, cpu is {self.cpu}")
        return self


class ClusterSettings(Model):
    """KubeVirt's cluster-wide settings that the twin honours."""

    cpu_allocation_ratio: float = Field(default=10, gt=0, description="KubeVirt cpuAllocationRatio.")
    parallel_migrations_per_cluster: int = Field(default=5, ge=1, description="KubeVirt default 5.")
    parallel_outbound_migrations_per_node: int = Field(default=2, ge=1, description="KubeVirt default 2.")
    bandwidth_per_migration: AnyQuantity = Field(default="0", description="0 = unlimited (the link).")
    completion_timeout_per_gib: int = Field(
        default=150, ge=1, alias="completionTimeoutPerGiB", description="KubeVirt default 150 s/GiB."
    )
    max_downtime_ms: int = Field(default=300, ge=1, description="Allowed stop-and-copy downtime.")
    allow_post_copy: bool = Field(default=False, description="Cluster default.")
    allow_auto_converge: bool = Field(default=False, description="Cluster default.")
    unschedulable_timeout_seconds: float = Field(
        default=300, gt=0, description="A migration target that cannot be scheduled fails after this."
    )


class Defaults(Model):
    """Simulation defaults, overridable per VM by annotation."""

    dirty_rate: AnyQuantity = Field(default="50Mi", description="Guest memory dirtied per second, bytes.")
    migration_bandwidth: AnyQuantity = Field(default="1250M", description="Link speed, bytes/s (10 Gbit/s).")
    migration_setup_seconds: float = Field(default=2.0, ge=0, description="Target pod start-up.")
    boot_seconds: float = Field(default=1.0, ge=0, description="Scheduled -> Running.")
    node_failure_grace_seconds: float = Field(
        default=40, ge=0, description="How long after NotReady the VMIs on a node fail."
    )


class Faults(Model):
    """Fleet-wide fault injection."""

    migration_failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of migration attempts that fail (deterministic)."
    )
    seed: int = Field(default=0, description="Seed of the deterministic choice.")


class Fleet(Model):
    """A fleet file."""

    cluster: ClusterSettings = Field(default_factory=ClusterSettings, description="KubeVirt settings.")
    defaults: Defaults = Field(default_factory=Defaults, description="Simulation defaults.")
    faults: Faults = Field(default_factory=Faults, description="Fault injection.")
    time_scale: float = Field(
        default=1.0, gt=0, le=1000, description="Real seconds per simulated second (0.01: 100x faster)."
    )
    nodes: list[NodeGroup] = Field(default_factory=list, description="Nodes.")

    @field_validator("nodes")
    @classmethod
    def _unique(cls, groups: list[NodeGroup]) -> list[NodeGroup]:
        names = [n for g in groups for n in _names(g)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate node names: {', '.join(duplicates[:5])}")
        return groups

    @classmethod
    def load(cls, path: Path) -> Fleet:
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})


def _names(group: NodeGroup) -> list[str]:
    return [f"{group.name}-{i}" for i in range(group.count)] if group.count else [group.name]


def numa_topology(group: NodeGroup) -> dict[str, Any]:
    cells = group.numa or [
        NumaCell(
            cpus=f"0-{group.cpu - 1}",
            memory=group.memory,
            hugepages_2mi=group.hugepages_2mi,
            hugepages_1gi=group.hugepages_1gi,
        )
    ]
    return {
        "cells": [
            {
                "id": index,
                "cpus": format_cpu_list(parse_cpu_list(cell.cpus)),
                "memory": cell.memory,
                "hugepages2Mi": cell.hugepages_2mi,
                "hugepages1Gi": cell.hugepages_1gi,
            }
            for index, cell in enumerate(cells)
        ]
    }


def node_manifests(fleet: Fleet, fleet_name: str = "twin") -> list[dict[str, Any]]:
    """Node objects (metadata + spec + status) for every node of the fleet."""
    nodes = []
    for group in fleet.nodes:
        memory = parse_bytes(group.memory)
        huge_2 = parse_bytes(group.hugepages_2mi)
        huge_1 = parse_bytes(group.hugepages_1gi)
        reserved = parse_bytes(group.reserved_memory)
        # Hugepages are carved out of memory, as the kubelet reports them.
        allocatable_memory = memory - huge_2 - huge_1 - reserved
        if allocatable_memory <= 0:
            raise ValueError(f"node {group.name}: hugepages and reservations exceed memory")
        for name in _names(group):
            labels = {
                HOSTNAME_LABEL: name,
                ZONE_LABEL: group.zone,
                SCHEDULABLE_LABEL: "true",
                FLEET_LABEL: fleet_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **({CPUMANAGER_LABEL: "true"} if group.cpu_manager else {CPUMANAGER_LABEL: "false"}),
                **group.labels,
            }
            annotations = {NUMA_ANNOTATION: json.dumps(numa_topology(group), separators=(",", ":"))}
            if group.migration_bandwidth:
                annotations[BANDWIDTH_ANNOTATION] = group.migration_bandwidth
            capacity = {
                "cpu": str(group.cpu),
                "memory": str(memory),
                "hugepages-2Mi": str(huge_2),
                "hugepages-1Gi": str(huge_1),
                "pods": "1100",
            }
            allocatable = {
                **capacity,
                "cpu": str(group.cpu - group.reserved_cpu),
                "memory": str(allocatable_memory),
            }
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": name, "labels": labels, "annotations": annotations},
                    "spec": {
                        "unschedulable": group.unschedulable,
                        "taints": [t.model_dump(by_alias=True) for t in group.taints],
                    },
                    "status": {
                        "capacity": capacity,
                        "allocatable": allocatable,
                        "conditions": [node_ready_condition(group.ready)],
                        "nodeInfo": _node_info(),
                    },
                }
            )
    return nodes


def node_ready_condition(ready: bool, now: str | None = None) -> dict[str, str]:
    condition = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "NodeStatusUnknown",
        "message": "simulated by virtfleet twin" if ready else "simulated node failure (virtfleet twin)",
    }
    if now:
        condition["lastTransitionTime"] = now
        condition["lastHeartbeatTime"] = now
    return condition


def _node_info() -> dict[str, str]:
    return {
        "architecture": "amd64",
        "operatingSystem": "linux",
        "osImage": "virtfleet twin (simulated)",
        "kernelVersion": "simulated",
        "kubeletVersion": "v1.34.4",
        "kubeProxyVersion": "",
        "containerRuntimeVersion": "simulated://0",
        "machineID": "",
        "systemUUID": "",
        "bootID": "",
    }
