"""MigrationPlan: move many VMs (drain, move, rebalance) in waves under limits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from virtfleet.api.base import BaseStatus, Model, ObjectName, cel

NodeName = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class MigrationLimits(Model):
    """How much may move at once."""

    max_parallel: int = Field(default=5, ge=1, le=1000, description="Migrations in flight for the plan.")
    max_outbound_per_node: int = Field(
        default=2, ge=1, le=100, description="Migrations leaving one node at once."
    )


class MigrationPlanSpec(Model):
    """Desired state of a plan."""

    model_config = cel(
        {
            "rule": "self.goal != 'drain' || size(self.nodes) > 0",
            "message": "goal 'drain' needs at least one node in nodes",
            "fieldPath": ".nodes",
        },
    )

    goal: Literal["drain", "move", "rebalance"] = Field(
        description="drain: empty the given nodes; move: move the selected VMs to matching nodes;"
        " rebalance: move VMs off over-committed nodes."
    )
    nodes: list[NodeName] = Field(
        default_factory=list, max_length=1000, description="Nodes the goal applies to (drain)."
    )
    pools: list[ObjectName] = Field(
        default_factory=list, max_length=1000, description="Select the VMs of these pools."
    )
    limits: MigrationLimits = Field(default_factory=MigrationLimits, description="Concurrency limits.")
    dry_run: bool = Field(default=False, description="Only plan and estimate; change nothing.")


class MigrationPlanStatus(BaseStatus):
    """Observed state of a plan."""

    phase: Literal["Pending", "Planned", "Running", "Succeeded", "Failed", "Cancelled"] | None = Field(
        default=None, description="Where the plan is."
    )
    total: int = Field(default=0, ge=0, description="VMs in the plan.")
    done: int = Field(default=0, ge=0, description="VMs moved.")
    failed: int = Field(default=0, ge=0, description="VMs that failed to move.")


class MigrationPlan(Model):
    """A MigrationPlan object as stored in the API."""

    spec: MigrationPlanSpec = Field(description="Desired state.")
    status: MigrationPlanStatus = Field(default_factory=MigrationPlanStatus, description="Observed state.")
