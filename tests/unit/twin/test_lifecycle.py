"""KubeVirt's runStrategy rules and the VM status the twin reports."""

from __future__ import annotations

import pytest

from virtfleet.twin.lifecycle import VMIFacts, printable_status, run_strategy, vm_status, vmi_action

NONE = VMIFacts(exists=False)
RUNNING = VMIFacts(exists=True, phase="Running", ready=True)
FAILED = VMIFacts(exists=True, phase="Failed")
SUCCEEDED = VMIFacts(exists=True, phase="Succeeded")


@pytest.mark.parametrize(
    ("strategy", "vmi", "started_before", "action"),
    [
        ("Always", NONE, False, "create"),
        ("Always", NONE, True, "create"),
        ("Always", FAILED, True, "delete"),
        ("Always", SUCCEEDED, True, "delete"),
        ("Always", RUNNING, True, "none"),
        ("Halted", RUNNING, True, "delete"),
        ("Halted", NONE, False, "none"),
        ("Manual", NONE, False, "none"),
        ("Manual", RUNNING, True, "none"),
        ("RerunOnFailure", NONE, False, "create"),
        ("RerunOnFailure", FAILED, True, "delete"),
        ("RerunOnFailure", SUCCEEDED, True, "none"),
        ("RerunOnFailure", NONE, True, "none"),
        ("Once", NONE, False, "create"),
        ("Once", FAILED, True, "none"),
        ("Once", NONE, True, "none"),
        ("Always", VMIFacts(exists=True, phase="Running", deleting=True), True, "none"),
    ],
)
def test_run_strategies(strategy: str, vmi: VMIFacts, started_before: bool, action: str) -> None:
    assert vmi_action(strategy, vmi, started_before) == action


def test_deprecated_running_field() -> None:
    assert run_strategy({"spec": {"running": True}}) == "Always"
    assert run_strategy({"spec": {"running": False}}) == "Halted"
    assert run_strategy({"spec": {"runStrategy": "Once", "running": True}}) == "Once"


@pytest.mark.parametrize(
    ("vmi", "printable"),
    [
        (NONE, "Stopped"),
        (VMIFacts(exists=True, phase="Scheduled"), "Starting"),
        (VMIFacts(exists=True, phase="Pending", unschedulable_reason="0/1 nodes"), "ErrorUnschedulable"),
        (RUNNING, "Running"),
        (VMIFacts(exists=True, phase="Running", migrating=True, ready=True), "Migrating"),
        (FAILED, "Stopped"),
        (VMIFacts(exists=True, phase="Running", deleting=True), "Stopping"),
    ],
)
def test_printable_status(vmi: VMIFacts, printable: str) -> None:
    assert printable_status("Halted", vmi) == printable


def test_status_keeps_transition_time_while_unchanged() -> None:
    vm = {"metadata": {"generation": 3}, "spec": {"runStrategy": "Always"}}
    first = vm_status(vm, RUNNING, "2026-01-01T00:00:00Z", {})
    again = vm_status(vm, RUNNING, "2026-01-01T00:05:00Z", first)
    assert first == again
    assert (
        again["ready"] is True and again["observedGeneration"] == 3 and again["printableStatus"] == "Running"
    )
    stopped = vm_status(vm, NONE, "2026-01-01T00:06:00Z", again)
    assert stopped["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:06:00Z"
