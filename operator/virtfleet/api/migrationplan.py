"""MigrationPlan: move many VMs (drain, move, rebalance) in waves under limits, with estimates."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from virtfleet.api.base import (
    BaseStatus,
    Conditions,
    DNSLabel,
    LabelMap,
    Model,
    ObjectName,
    Quantity,
    Seconds,
    cel,
)
from virtfleet.api.timestamps import TimeToMillisecond

NodeName = Annotated[str, StringConstraints(min_length=1, max_length=253)]
MAX_LISTED = 2000  # per-VM entries kept in status (etcd objects stay well under their size limit)


class Selection(Model):
    """Which VMs of the plan's namespace the plan covers; fields combine with AND. Empty: every VM the
    goal concerns (on the drained nodes, outside the target nodes, or anywhere for rebalance)."""

    pools: list[ObjectName] = Field(default_factory=list, max_length=256, description="VMs of these pools.")
    vms: list[DNSLabel] = Field(default_factory=list, max_length=500, description="These VMs by name.")
    match_labels: LabelMap = Field(default_factory=dict, description="VMs whose VMI has all these labels.")
    nodes: list[NodeName] = Field(
        default_factory=list, max_length=1000, description="VMs running on these nodes."
    )


class Thresholds(Model):
    """Rebalance: move VMs off nodes whose effective ratios exceed these."""

    cpu_ratio: float = Field(default=4.0, ge=0.1, le=64, description="Effective CPU ratio allowed per node.")
    memory_ratio: float = Field(
        default=1.0, ge=0.1, le=8, description="Effective memory ratio allowed per node."
    )


class MigrationOptions(Model):
    """KubeVirt migration settings for this plan, materialised as a MigrationPolicy."""

    allow_post_copy: bool = Field(default=False, description="Switch to post-copy at the completion timeout.")
    allow_auto_converge: bool = Field(default=False, description="Throttle guests that do not converge.")
    bandwidth_per_migration: Quantity | None = Field(default=None, description="Bytes/s per migration.")
    completion_timeout_per_gib: int = Field(
        default=150, ge=1, le=10000, alias="completionTimeoutPerGiB", description="Seconds per GiB of memory."
    )
    max_downtime_ms: int = Field(default=300, ge=1, le=2000000, description="Allowed stop-and-copy pause.")


class MigrationLimits(Model):
    """How much may move at once."""

    max_parallel: int = Field(default=5, ge=1, le=1000, description="Migrations in flight for the plan.")
    max_outbound_per_node: int = Field(
        default=2, ge=1, le=100, description="Migrations leaving one node at once."
    )
    max_inbound_per_node: int = Field(
        default=2, ge=1, le=100, description="Migrations entering one node at once."
    )
    pool_disruption_budget: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="VMs of one pool migrating or down at once; unlimited when unset.",
    )


class FailurePolicy(Model):
    """What happens when migrations fail."""

    retries: int = Field(default=2, ge=0, le=20, description="Retries per VM.")
    backoff_seconds: int = Field(
        default=30, ge=1, le=3600, description="Wait before a retry (doubles each time)."
    )
    max_failures: int = Field(
        default=5, ge=0, le=10000, description="VMs that may finally fail before onFailure."
    )
    on_failure: Literal["continue", "pause", "abort"] = Field(
        default="pause", description="When maxFailures is exceeded: keep going, pause, or abort the plan."
    )


class MigrationPlanSpec(Model):
    """Desired state of a plan."""

    model_config = cel(
        {
            "rule": "self.goal != 'drain' || (has(self.nodes) && size(self.nodes) > 0)",
            "message": "goal 'drain' needs at least one node in nodes",
            "fieldPath": ".nodes",
        },
        {
            "rule": "self.goal != 'move' || (has(self.targetSelector) && size(self.targetSelector) > 0)",
            "message": "goal 'move' needs targetSelector",
            "fieldPath": ".targetSelector",
        },
        {
            "rule": "self.order != 'waves' || (has(self.waves) && size(self.waves) > 0)",
            "message": "order 'waves' needs waves",
            "fieldPath": ".waves",
        },
        {
            "rule": "!has(self.waves) || !has(self.selection) || !has(self.selection.vms)"
            " || self.waves.all(w, w.all(v, v in self.selection.vms))",
            "message": "waves may only name VMs listed in selection.vms",
            "fieldPath": ".waves",
        },
    )

    goal: Literal["drain", "move", "rebalance"] = Field(
        description="drain: empty the given nodes; move: move the selected VMs to nodes matching targetSelector;"
        " rebalance: move VMs off nodes over the thresholds."
    )
    selection: Selection = Field(default_factory=Selection, description="Which VMs the plan covers.")
    nodes: list[NodeName] = Field(default_factory=list, max_length=1000, description="Nodes to drain.")
    target_selector: LabelMap = Field(default_factory=dict, description="move: target nodes' labels.")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="rebalance: ratios to get under.")
    method: Literal["live", "cold", "liveWithColdFallback"] = Field(
        default="live",
        description="live migration, cold (stop, re-place, start), or live with cold fallback.",
    )
    migration: MigrationOptions = Field(
        default_factory=MigrationOptions, description="KubeVirt migration options."
    )
    limits: MigrationLimits = Field(default_factory=MigrationLimits, description="Concurrency limits.")
    order: Literal["priority", "smallestFirst", "largestFirst", "waves"] = Field(
        default="priority",
        description="Order of the moves (priority: the VMs' virtfleet.io/priority annotation).",
    )
    waves: list[Annotated[list[DNSLabel], Field(max_length=200)]] = Field(
        default_factory=list, max_length=10, description="order 'waves': VM names, wave by wave."
    )
    failure_policy: FailurePolicy = Field(
        default_factory=FailurePolicy, description="Retries and the failure budget."
    )
    dry_run: bool = Field(default=False, description="Only plan and estimate (status); change nothing.")
    paused: bool = Field(default=False, description="Start no new migrations while true.")
    cancel: bool = Field(default=False, description="Abort in-flight migrations and stop.")
    not_before: datetime | None = Field(default=None, description="Do not start before this time (RFC 3339).")
    uncordon_when_done: bool = Field(
        default=False,
        description="drain: make the nodes this plan cordoned schedulable again when it ends."
        " Otherwise they stay cordoned for the maintenance they were drained for.",
    )


class VMPhase(StrEnum):
    """A VM's phase in status.vms: the API's and the executor's one spelling."""

    PLANNED = "Planned"
    WAITING = "Waiting"  # a failed attempt's backoff
    MIGRATING = "Migrating"  # a live migration in flight
    STOPPING = "Stopping"  # cold: the VM is being stopped
    STARTING = "Starting"  # cold: the VM starts on the target
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    SKIPPED = "Skipped"  # the VM went away or was moved by someone else


class ColdStage(StrEnum):
    """Where a cold move stands, in the VM's virtfleet.io/cold-move annotation."""

    STOPPING = "stopping"
    STARTING = "starting"
    FAILED = "failed"
    DONE = "done"


class PlanPhase(StrEnum):
    """A plan's status.phase."""

    PENDING = "Pending"
    PLANNED = "Planned"  # a dry run: planned, and it stays so
    RUNNING = "Running"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class PlannedVM(Model):
    """One VM's place in the plan and its pipeline once the plan runs."""

    name: ObjectName = Field(description="VM name.")
    pool: str = Field(default="", max_length=253, description="Its pool, if any.")
    source: str = Field(max_length=253, description="Node it ran on when the plan started.")
    target: str = Field(max_length=253, description="Node it goes to.")
    method: Literal["live", "cold"] = Field(description="How it moves.")
    wave: int = Field(ge=0, description="Start round (or explicit wave).")
    phase: VMPhase = Field(
        default=VMPhase.PLANNED,
        description="Planned, Waiting (backoff before a retry), Migrating (live), Stopping/Starting (cold),"
        " Succeeded, Failed, Cancelled, Skipped (the VM went away or moved outside the plan).",
    )
    estimated_start_seconds: Seconds = Field(description="Seconds after the plan starts.")
    estimated_duration_seconds: Seconds = Field(description="Model estimate of the migration's duration.")
    estimated_downtime_seconds: Seconds = Field(description="Model estimate of the pause.")
    attempts: int = Field(default=0, ge=0, description="Migrations (or cold moves) started for this VM.")
    node: str | None = Field(default=None, max_length=253, description="Node its VMI runs on now.")
    migration: str = Field(
        default="", max_length=253, description="Name of its latest VirtualMachineInstanceMigration."
    )
    started_at: TimeToMillisecond | None = Field(default=None, description="When the latest attempt started.")
    finished_at: TimeToMillisecond | None = Field(default=None, description="When it finished.")
    actual_duration_seconds: Seconds | None = Field(default=None, description="Observed duration.")
    actual_downtime_seconds: Seconds | None = Field(
        default=None,
        description="Observed downtime: cold moves only (KubeVirt does not report a live migration's pause).",
    )
    retry_at: TimeToMillisecond | None = Field(
        default=None, description="Waiting: when the next attempt may start."
    )
    last_error: str = Field(default="", max_length=1024, description="Why the latest attempt failed.")


class Unplaceable(Model):
    """A VM (or node) the plan cannot handle, and why."""

    name: str = Field(max_length=253, description="VM name, or node/<name> for rebalance.")
    reason: str = Field(max_length=1024, description="Why.")


class MigrationPlanStatus(BaseStatus):
    """Observed state of a plan."""

    phase: PlanPhase | None = Field(default=None, description="Where the plan is.")
    total: int = Field(default=0, ge=0, description="VMs in the plan, the unplaceable included.")
    done: int = Field(default=0, ge=0, description="VMs moved.")
    failed: int = Field(default=0, ge=0, description="VMs that failed to move, the unplaceable included.")
    in_flight: int = Field(default=0, ge=0, description="VMs migrating or in a cold move now.")
    cancelled: int = Field(default=0, ge=0, description="VMs not moved because the plan stopped.")
    skipped: int = Field(default=0, ge=0, description="VMs that went away or moved outside the plan.")
    progress: str = Field(default="", max_length=32, description="done/total, for kubectl get.")
    started_at: TimeToMillisecond | None = Field(
        default=None, description="When execution started (plan frozen)."
    )
    finished_at: TimeToMillisecond | None = Field(
        default=None, description="When the plan reached a final phase."
    )
    estimated_makespan_seconds: Seconds | None = Field(
        default=None, description="Model estimate of the plan."
    )
    estimated_max_downtime_seconds: Seconds | None = Field(default=None, description="Largest single pause.")
    estimated_setup_seconds: Seconds | None = Field(
        default=None,
        description="Target start-up per migration the estimates assume: the median of the cluster's "
        "latest plan migrations, 2s before there are any.",
    )
    estimated_remaining_seconds: Seconds | None = Field(
        default=None, description="Model estimate of the time left."
    )
    migration_policy: str = Field(
        default="", max_length=253, description="The KubeVirt MigrationPolicy that carries spec.migration."
    )
    cordoned_nodes: list[NodeName] = Field(
        default_factory=list, max_length=1000, description="Nodes this plan cordoned."
    )
    vms: list[PlannedVM] = Field(
        default_factory=list, max_length=MAX_LISTED, description="Per-VM pipeline (first 2000)."
    )
    unplaceable: list[Unplaceable] = Field(
        default_factory=list, max_length=MAX_LISTED, description="VMs that cannot be planned, with reasons."
    )
    conditions: Conditions


class MigrationPlan(Model):
    """A MigrationPlan object as stored in the API."""

    spec: MigrationPlanSpec = Field(description="Desired state.")
    status: MigrationPlanStatus = Field(default_factory=MigrationPlanStatus, description="Observed state.")
