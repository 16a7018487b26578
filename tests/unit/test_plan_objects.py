"""virtfleet.core.plan_objects: what a plan writes, byte for byte where users and KubeVirt read it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from virtfleet.api.migrationplan import MigrationPlanSpec
from virtfleet.core import plan_objects as objects
from virtfleet.core.plan_executor import StartMigration, StopForColdMove
from virtfleet.core.plans import PlanInputs
from virtfleet.kube.facts import cold_move_of

NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
INPUTS = PlanInputs("ns", "drain", "uid-1", 1, {}, {})
VM = {
    "metadata": {"name": "vm-0", "resourceVersion": "7"},
    "spec": {
        "runStrategy": "Always",
        "template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "n0"}}},
    },
}


def test_a_migration_is_owned_labelled_and_bound_to_its_target() -> None:
    body = objects.migration(INPUTS, StartMigration("vm-0", 2, "drain-vm-0-2", "n1"), {"n1": "host-1"})
    assert body["metadata"]["labels"] == {"virtfleet.io/migration-plan": "uid-1", "virtfleet.io/attempt": "2"}
    assert body["metadata"]["annotations"] == {"virtfleet.io/vm": "vm-0"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["spec"] == {"vmiName": "vm-0", "addedNodeSelector": {"kubernetes.io/hostname": "host-1"}}


def test_the_policy_carries_spec_migration_and_selects_the_plans_vmis() -> None:
    spec = MigrationPlanSpec.model_validate({"goal": "drain", "nodes": ["n0"],
                                             "migration": {"bandwidthPerMigration": "64Mi"}})  # fmt: skip
    body = objects.migration_policy(spec, INPUTS)
    assert body["metadata"]["name"] == "virtfleet-uid-1"
    assert body["spec"]["bandwidthPerMigration"] == "64Mi"
    assert body["spec"]["selectors"] == {
        "virtualMachineInstanceSelector": {"virtfleet.io/migration-plan": "uid-1"},
        "namespaceSelector": {"kubernetes.io/metadata.name": "ns"},
    }


def test_a_cold_move_record_reads_back_and_only_its_plan_updates_it() -> None:
    patch = objects.stop_for_cold_move(VM, "uid-1", StopForColdMove("vm-0", 1, "n1"), {}, NOW)
    assert patch["spec"]["runStrategy"] == "Halted" and patch["metadata"]["resourceVersion"] == "7"
    record = json.loads(patch["metadata"]["annotations"]["virtfleet.io/cold-move"])
    assert record == {"plan": "uid-1", "attempt": 1, "target": "n1", "runStrategy": "Always", "pinned": "n0",
                      "startedAt": "2026-12-01T12:00:00.123Z", "stage": "stopping"}  # fmt: skip
    stopped = {**VM, "metadata": {**VM["metadata"], **patch["metadata"]}}
    parsed = cold_move_of(stopped)
    assert parsed is not None and parsed[0] == "uid-1" and parsed[1].stage == "stopping"
    assert objects.cold_update(stopped, "other-plan", "Always", True) is None
    update = objects.cold_update(stopped, "uid-1", "Always", True, stage="starting")
    assert update is not None and update["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/hostname": "n0"
    }


def test_cordons_name_their_plan() -> None:
    node = {"metadata": objects.cordon("ns/drain")["metadata"]}
    assert objects.cordoned_by(node) == "ns/drain"
    assert objects.uncordon()["spec"] == {"unschedulable": None}
