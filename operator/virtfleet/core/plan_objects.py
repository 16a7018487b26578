"""The objects and patches a MigrationPlan writes, built without I/O (crate-operator's builders apart from
the writers): its migrations, its MigrationPolicy, the cold-move record on a VM, node cordons.
kube.plans sends them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from virtfleet import API_VERSION
from virtfleet.api.labels import (
    ATTEMPT_LABEL,
    COLD_MOVE_ANNOTATION,
    CORDONED_BY_ANNOTATION,
    HOSTNAME_LABEL,
    NAMESPACE_NAME_LABEL,
    PLAN_ANNOTATION,
    PLAN_LABEL,
    VM_ANNOTATION,
)
from virtfleet.api.migrationplan import ColdStage, MigrationPlanSpec
from virtfleet.api.timestamps import stamp
from virtfleet.core.kubevirt_api import FULL_KUBEVIRT_API, KubeVirtAPI
from virtfleet.core.plan_executor import StartMigration, StopForColdMove
from virtfleet.core.plans import PlanInputs

COLD_RUN_STRATEGIES = ("Always", "RerunOnFailure")  # a cold move stops and starts the VM through these


def policy_name(uid: str) -> str:
    return f"virtfleet-{uid}"


def owner_reference(inputs: PlanInputs) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "MigrationPlan", "name": inputs.name, "uid": inputs.uid,
            "controller": True}  # fmt: skip


def migration(inputs: PlanInputs, action: StartMigration, hostnames: Mapping[str, str]) -> dict[str, Any]:
    """The VirtualMachineInstanceMigration of one attempt, owned by the plan, bound to its target node."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {
            "name": action.name,
            "namespace": inputs.namespace,
            "labels": {PLAN_LABEL: inputs.uid, ATTEMPT_LABEL: str(action.attempt)},
            "annotations": {VM_ANNOTATION: action.vm},
            "ownerReferences": [owner_reference(inputs)],
        },
        "spec": {
            "vmiName": action.vm,
            "addedNodeSelector": {HOSTNAME_LABEL: hostnames.get(action.target, action.target)},
        },
    }


def migration_policy(
    spec: MigrationPlanSpec, inputs: PlanInputs, kubevirt: KubeVirtAPI = FULL_KUBEVIRT_API
) -> dict[str, Any]:
    """spec.migration as a KubeVirt MigrationPolicy selecting the plan's VMIs (labelled before each start),
    with only the fields the cluster's KubeVirt serves."""
    options = spec.migration
    policy_spec: dict[str, Any] = {
        "allowPostCopy": options.allow_post_copy,
        "allowAutoConverge": options.allow_auto_converge,
        "completionTimeoutPerGiB": options.completion_timeout_per_gib,
        "selectors": {
            "virtualMachineInstanceSelector": {PLAN_LABEL: inputs.uid},
            "namespaceSelector": {NAMESPACE_NAME_LABEL: inputs.namespace},
        },
    }
    if kubevirt.max_downtime_supported:
        policy_spec["maxDowntimeMs"] = options.max_downtime_ms
    if options.bandwidth_per_migration:
        policy_spec["bandwidthPerMigration"] = options.bandwidth_per_migration
    return {
        "apiVersion": "migrations.kubevirt.io/v1alpha1",
        "kind": "MigrationPolicy",
        "metadata": {"name": policy_name(inputs.uid), "labels": {PLAN_LABEL: inputs.uid},
                     "annotations": {PLAN_ANNOTATION: f"{inputs.namespace}/{inputs.name}"}},
        "spec": policy_spec,
    }  # fmt: skip


def stop_for_cold_move(
    vm: Mapping[str, Any], uid: str, action: StopForColdMove, hostnames: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """Stage 1 as one patch: remember how the VM ran, pin it to the target, stop it; guarded by its
    resourceVersion so a concurrent edit is never overwritten. The VM must run with a strategy of
    COLD_RUN_STRATEGIES (the caller checks)."""
    spec = vm.get("spec") or {}
    template_spec = (spec.get("template") or {}).get("spec") or {}
    record = json.dumps({
        "plan": uid,
        "attempt": action.attempt,
        "target": action.target,
        "runStrategy": spec.get("runStrategy"),
        "pinned": (template_spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL),
        "startedAt": stamp(now),
        "stage": ColdStage.STOPPING,
    }, sort_keys=True)  # fmt: skip
    pin = {HOSTNAME_LABEL: hostnames.get(action.target, action.target)}
    return {
        "metadata": {"annotations": {COLD_MOVE_ANNOTATION: record},
                     "resourceVersion": vm["metadata"]["resourceVersion"]},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"nodeSelector": pin}}},
    }  # fmt: skip


def cold_record(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The cold-move record on a VM, {} when it has none."""
    record: dict[str, Any] = json.loads(
        (vm["metadata"].get("annotations") or {}).get(COLD_MOVE_ANNOTATION) or "{}"
    )
    return record


def cold_update(
    vm: Mapping[str, Any], uid: str, run_strategy: str | None, unpin: bool, **changes: Any
) -> dict[str, Any] | None:
    """A later stage as one patch (the record updated, the runStrategy set, the pin undone), guarded by the
    VM's resourceVersion; None when the VM's move is not this plan's."""
    record = cold_record(vm)
    if record.get("plan") != uid:
        return None
    record.update(changes)
    spec: dict[str, Any] = {}
    if run_strategy is not None:
        spec["runStrategy"] = run_strategy
    if unpin:
        spec["template"] = {"spec": {"nodeSelector": {HOSTNAME_LABEL: record.get("pinned")}}}
    patch: dict[str, Any] = {
        "metadata": {"annotations": {COLD_MOVE_ANNOTATION: json.dumps(record, sort_keys=True)},
                     "resourceVersion": vm["metadata"]["resourceVersion"]},
    }  # fmt: skip
    if spec:
        patch["spec"] = spec
    return patch


def cordon(owner: str) -> dict[str, Any]:
    """A node made unschedulable, remembering which plan (namespace/name) did it."""
    return {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: owner}}, "spec": {"unschedulable": True}}


def uncordon() -> dict[str, Any]:
    return {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: None}}, "spec": {"unschedulable": None}}


def cordoned_by(node: Mapping[str, Any]) -> str | None:
    annotations: Mapping[str, str] = node["metadata"].get("annotations") or {}
    return annotations.get(CORDONED_BY_ANNOTATION)
