"""Condition reasons and event reasons: constants, part of the API users and alerts match on."""

from __future__ import annotations

# VMTemplate
TEMPLATE_VALID = "TemplateValid"
INVALID_SPEC = "InvalidSpec"

# VirtualMachinePool conditions and events
CAPACITY_EXHAUSTED = "CapacityExhausted"  # also a condition type
CAPACITY_AVAILABLE = "CapacityAvailable"
TEMPLATE_NOT_FOUND = "TemplateNotFound"
REVISION_NOT_FOUND = "RevisionNotFound"
INCOMPATIBLE_TEMPLATE = "IncompatibleTemplate"
ALL_REPLICAS_READY = "AllReplicasReady"
REPLICAS_NOT_READY = "ReplicasNotReady"
SCALING = "Scaling"
ROLLING_UPDATE = "RollingUpdate"
ROLLOUT_COMPLETE = "RolloutComplete"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
PAUSED = "Paused"
SUCCESSFUL_CREATE = "SuccessfulCreate"
SUCCESSFUL_DELETE = "SuccessfulDelete"
FAILED_CREATE = "FailedCreate"
HOT_PLUGGED = "HotPlugged"

# MigrationPlan conditions and events
PLANNED = "Planned"
WAITING_TO_START = "WaitingToStart"
PLAN_TOO_LARGE = "PlanTooLarge"
UNPLACEABLE = "Unplaceable"
PLAN_STARTED = "PlanStarted"
PLAN_RUNNING = "Running"
PLAN_PAUSED = "PlanPaused"
PLAN_SUCCEEDED = "PlanSucceeded"
PLAN_FAILED = "PlanFailed"
PLAN_CANCELLED = "Cancelled"
COMPLETED = "Completed"
STOPPING = "Stopping"
FAILURE_BUDGET_EXCEEDED = "FailureBudgetExceeded"
NO_FAILURES = "NoFailures"
MIGRATION_FAILED = "MigrationFailed"
MIGRATION_RETRY = "MigrationRetry"
ACTION_FAILED = "ActionFailed"
NODE_CORDONED = "NodeCordoned"
NODE_UNCORDONED = "NodeUncordoned"
