"""KubeVirt's VirtualMachine controller rules, as pure functions: runStrategy and the VM's status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["create", "delete", "none"]
FINAL_PHASES = ("Succeeded", "Failed")
STARTING_PHASES = ("", "Pending", "Scheduling", "Scheduled")


@dataclass(frozen=True)
class VMIFacts:
    """What the VM controller knows of a VM's VMI."""

    exists: bool
    phase: str = ""
    deleting: bool = False
    unschedulable_reason: str = ""
    migrating: bool = False
    ready: bool = False


def run_strategy(vm: Mapping[str, Any]) -> str:
    spec = vm.get("spec") or {}
    if spec.get("runStrategy"):
        return str(spec["runStrategy"])
    # The deprecated `running` field: true means Always, false (or unset) Halted.
    return "Always" if spec.get("running") else "Halted"


def vmi_action(strategy: str, vmi: VMIFacts, started_before: bool) -> Action:
    """Create, delete or leave the VMI, as KubeVirt's VM controller does for each runStrategy.

    `started_before` tells Once whether it already ran (KubeVirt keeps the finished VMI for that).
    """
    if vmi.deleting:
        return "none"
    if strategy == "Halted":
        return "delete" if vmi.exists else "none"
    if strategy == "Manual":
        return "none"  # started and stopped only through the start/stop subresources
    if strategy == "Always":
        if not vmi.exists:
            return "create"
        return "delete" if vmi.phase in FINAL_PHASES else "none"
    if strategy == "RerunOnFailure":
        if not vmi.exists:
            return "none" if started_before else "create"
        return "delete" if vmi.phase == "Failed" else "none"
    if strategy == "Once":
        return "create" if not vmi.exists and not started_before else "none"
    return "none"


def printable_status(strategy: str, vmi: VMIFacts) -> str:
    if not vmi.exists:
        return "Stopped"
    if vmi.deleting:
        return "Stopping" if strategy in ("Halted", "Manual") else "Terminating"
    if vmi.unschedulable_reason:
        return "ErrorUnschedulable"
    if vmi.phase in STARTING_PHASES:
        return "Starting"
    if vmi.phase == "Running":
        return "Migrating" if vmi.migrating else "Running"
    if vmi.phase in FINAL_PHASES:
        return "Stopped"
    return "Unknown"


def vm_status(vm: Mapping[str, Any], vmi: VMIFacts, now: str, current: Mapping[str, Any]) -> dict[str, Any]:
    """The VM's whole status, keeping condition times when their status did not change."""
    strategy = run_strategy(vm)
    generation = (vm.get("metadata") or {}).get("generation")
    ready = vmi.exists and vmi.ready and not vmi.deleting
    if ready:
        condition = ("True", "", "")
    elif vmi.unschedulable_reason:
        condition = ("False", "Unschedulable", vmi.unschedulable_reason)
    elif not vmi.exists:
        condition = ("False", "VMINotExists", "VMI does not exist")
    else:
        condition = ("False", "NotReady", f"VMI is {vmi.phase or 'Pending'}")
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    ready_condition: dict[str, Any] = {
        "type": "Ready",
        "status": condition[0],
        "reason": condition[1],
        "message": condition[2],
        "lastProbeTime": None,
        "lastTransitionTime": now,
    }
    before = previous.get("Ready")
    if before and before.get("status") == condition[0] and before.get("lastTransitionTime"):
        ready_condition["lastTransitionTime"] = before["lastTransitionTime"]
    status: dict[str, Any] = {
        "printableStatus": printable_status(strategy, vmi),
        "ready": ready,
        "created": vmi.exists,
        "runStrategy": strategy,
        "conditions": [ready_condition],
    }
    if generation is not None:
        status["observedGeneration"] = generation
        status["desiredGeneration"] = generation
    return status
