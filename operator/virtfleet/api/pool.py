"""VirtualMachinePool: N KubeVirt VirtualMachines from one VMTemplate revision, with oversubscription."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from virtfleet.api.base import BaseStatus, Model, ObjectName, cel
from virtfleet.api.vmtemplate import RunStrategy


class TemplateRef(Model):
    """Which VMTemplate, and which of its revisions, the pool's VMs are made from."""

    name: ObjectName = Field(description="VMTemplate name in the pool's namespace.")
    revision: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = Field(
        default=None, description="Pin this template revision; unset follows the latest revision."
    )


class VirtualMachinePoolSpec(Model):
    """Desired state of a pool."""

    model_config = cel(
        {
            "rule": "self.cpuRatio >= 1.0",
            "message": "cpuRatio must be at least 1 (1 means no CPU oversubscription)",
            "fieldPath": ".cpuRatio",
        },
        {
            "rule": "self.memoryRatio >= 1.0",
            "message": "memoryRatio must be at least 1 (1 means no memory oversubscription)",
            "fieldPath": ".memoryRatio",
        },
    )

    replicas: int = Field(default=1, ge=0, le=10000, description="Number of VMs.")
    template_ref: TemplateRef = Field(description="The VMTemplate to build VMs from.")
    cpu_ratio: float = Field(
        default=1.0,
        ge=1.0,
        le=64.0,
        description="CPU oversubscription: vCPUs committed per physical core for shared-CPU VMs.",
    )
    memory_ratio: float = Field(
        default=1.0,
        ge=1.0,
        le=8.0,
        description="Memory oversubscription: guest memory committed per byte of node memory.",
    )
    run_strategy: RunStrategy | None = Field(
        default=None, description="Override the template's runStrategy for this pool's VMs."
    )
    paused: bool = Field(default=False, description="Stop reconciling the pool's VMs while true.")


class VirtualMachinePoolStatus(BaseStatus):
    """Observed state of a pool."""

    replicas: int = Field(default=0, ge=0, description="VMs that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="VMs that are Ready.")
    label_selector: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Label selector of the pool's VMs, for the scale subresource (HPA)."
    )


class VirtualMachinePool(Model):
    """A VirtualMachinePool object as stored in the API."""

    spec: VirtualMachinePoolSpec = Field(description="Desired state.")
    status: VirtualMachinePoolStatus = Field(
        default_factory=VirtualMachinePoolStatus, description="Observed state."
    )
