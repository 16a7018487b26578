"""VirtualMachinePool: N KubeVirt VirtualMachines from one VMTemplate revision, with oversubscription."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from virtfleet.api.base import AnnotationMap, BaseStatus, Conditions, LabelMap, Model, ObjectName, cel
from virtfleet.api.vmtemplate import CPUModel, EvictionStrategy, RunStrategy

RevisionHash = Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{10}$")]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=317)]
IntOrPercent = Annotated[str, StringConstraints(pattern=r"^([0-9]+|[0-9]{1,3}%)$", max_length=8)]


class TemplateRef(Model):
    """Which VMTemplate, and which of its revisions, the pool's VMs are made from."""

    name: ObjectName = Field(description="VMTemplate name in the pool's namespace.")
    revision: RevisionHash | None = Field(
        default=None,
        description="Pin this template revision (a 10-hex-digit hash from the template's status); "
        "unset follows the latest revision.",
    )


class Spread(Model):
    """Spread the pool's VMs over a topology domain."""

    topology_key: LabelKey = Field(
        default="topology.kubernetes.io/zone", description="Node label whose values are the domains."
    )
    max_skew: int = Field(default=1, ge=1, le=1000, description="Largest allowed difference between domains.")


class Placement(Model):
    """Where the pool's VMs may run."""

    node_selector: LabelMap = Field(default_factory=dict, description="Nodes must have all these labels.")
    spread: Spread | None = Field(default=None, description="Spread VMs over a topology key (DoNotSchedule).")
    anti_affinity: Literal["none", "preferred", "required"] = Field(
        default="none",
        description="Keep the pool's VMs on different hosts: not at all, if possible, or always.",
    )


class UpdateStrategy(Model):
    """How VMs follow a new template revision."""

    model_config = cel(
        {
            "rule": "self.type != 'RollingUpdate' || self.maxSurge != '0' || self.maxUnavailable != '0'",
            "message": "maxSurge and maxUnavailable must not both be 0",
            "fieldPath": ".maxUnavailable",
        }
    )

    type: Literal["RollingUpdate", "OnDelete"] = Field(
        default="RollingUpdate",
        description="RollingUpdate: replace or hot-plug VMs within the budgets; OnDelete: only VMs that users delete are recreated at the new revision.",
    )
    max_surge: IntOrPercent = Field(
        default="1", description="Extra VMs (count or % of replicas) allowed above replicas during an update."
    )
    max_unavailable: IntOrPercent = Field(
        default="0", description="VMs (count or % of replicas) that may be not Ready during an update."
    )
    ready_timeout_seconds: int = Field(
        default=600,
        ge=10,
        le=86400,
        description="Halt the rollout (Progressing=False, ProgressDeadlineExceeded) when a new VM is not Ready by then.",
    )


class Overrides(Model):
    """The bounded set of template fields a pool may change."""

    labels: LabelMap = Field(default_factory=dict, description="Extra labels on the pool's VMs.")
    annotations: AnnotationMap = Field(
        default_factory=dict, description="Extra annotations on the pool's VMs."
    )
    cpu_model: CPUModel | None = Field(default=None, description="Replace the template's CPU model.")
    eviction_strategy: EvictionStrategy | None = Field(
        default=None, description="Replace the template's evictionStrategy."
    )


class VirtualMachinePoolSpec(Model):
    """Desired state of a pool."""

    replicas: int = Field(default=1, ge=0, le=10000, description="Number of VMs.")
    template_ref: TemplateRef = Field(description="The VMTemplate to build VMs from.")
    cpu_ratio: float | None = Field(
        default=None,
        ge=1.0,
        le=64.0,
        description="CPU oversubscription for shared-CPU VMs: vCPUs per physical core (pod CPU request = "
        "vCPUs / cpuRatio). Must be 1 for dedicated CPUs. The operator's default when unset.",
    )
    memory_ratio: float | None = Field(
        default=None,
        ge=1.0,
        le=8.0,
        description="Memory oversubscription: guest memory per byte requested (memory request = guest / "
        "memoryRatio). Must be 1 for hugepage-backed VMs. The operator's default when unset.",
    )
    allocation: Literal["static", "dynamic"] = Field(
        default="static",
        description="static: fixed size; dynamic: CPU and memory hot-plug up to the template's maxSockets / maxGuest.",
    )
    placement: Placement = Field(default_factory=Placement, description="Where VMs may run.")
    scale_in_policy: Literal["HighestOrdinal", "Oldest", "Newest", "MostOversubscribedNode"] = Field(
        default="HighestOrdinal", description="Which VMs go first when replicas shrinks."
    )
    update_strategy: UpdateStrategy = Field(
        default_factory=UpdateStrategy, description="How VMs follow a new template revision."
    )
    run_strategy: RunStrategy | None = Field(
        default=None, description="Override the template's runStrategy for this pool's VMs."
    )
    overrides: Overrides = Field(default_factory=Overrides, description="Per-pool changes to the template.")
    paused: bool = Field(default=False, description="Stop creating, deleting and updating VMs while true.")


class OversubscriptionSummary(Model):
    """Requested versus physical capacity of the pool's eligible nodes."""

    committed_vcpus: int = Field(default=0, ge=0, description="vCPUs of all VMs on the eligible nodes.")
    physical_cores: int = Field(default=0, ge=0, description="Allocatable cores of the eligible nodes.")
    effective_cpu_ratio: float = Field(default=0, ge=0, description="committedVCPUs / physicalCores.")
    committed_memory: str = Field(default="0", description="Guest memory of all VMs on the eligible nodes.")
    physical_memory: str = Field(default="0", description="Allocatable memory of the eligible nodes.")
    effective_memory_ratio: float = Field(default=0, ge=0, description="committedMemory / physicalMemory.")
    eligible_nodes: int = Field(default=0, ge=0, description="Ready, schedulable nodes the pool may use.")


class VirtualMachinePoolStatus(BaseStatus):
    """Observed state of a pool."""

    replicas: int = Field(default=0, ge=0, description="VMs that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="VMs that are Ready.")
    updated_replicas: int = Field(default=0, ge=0, description="VMs at the update revision.")
    pending_replicas: int = Field(
        default=0, ge=0, description="Desired VMs not created for lack of capacity (see CapacityExhausted)."
    )
    label_selector: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Label selector of the pool's VMs, for the scale subresource (HPA)."
    )
    current_revision: RevisionHash | None = Field(default=None, description="Revision most VMs run.")
    update_revision: RevisionHash | None = Field(default=None, description="Revision VMs are moving to.")
    cpu_ratio: float | None = Field(default=None, description="CPU ratio in force (spec or default).")
    memory_ratio: float | None = Field(default=None, description="Memory ratio in force (spec or default).")
    oversubscription: OversubscriptionSummary | None = Field(
        default=None, description="Requested versus physical capacity."
    )
    conditions: Conditions


class VirtualMachinePool(Model):
    """A VirtualMachinePool object as stored in the API."""

    spec: VirtualMachinePoolSpec = Field(description="Desired state.")
    status: VirtualMachinePoolStatus = Field(
        default_factory=VirtualMachinePoolStatus, description="Observed state."
    )
