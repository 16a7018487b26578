"""Every kubevirt.io object virtfleet renders, held against the schemas of each KubeVirt release it supports.

e2e/kubevirt-crds/<version>/ holds the CRDs virt-operator installs: v1.9.0 from shared/, v1.7.0 generated
from the pinned Go module (hack/kubevirt/cmd/crds; the real kind cluster runs it). The API server prunes
nothing for virtfleet (fieldValidation=Strict), so here, as there, an unknown field is an error.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from virtfleet.api.labels import DIRTY_RATE_ANNOTATION
from virtfleet.api.migrationplan import MigrationPlanSpec
from virtfleet.core import plan_objects as objects
from virtfleet.core.capacity import NodeFacts, Placed
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.kubevirt_api import QEMU_DEFAULT_MAX_DOWNTIME_MS, KubeVirtAPI, served_spec_fields
from virtfleet.core.migration_planner import build_plan
from virtfleet.core.plan_executor import StartMigration
from virtfleet.core.plans import PlanInputs

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "e2e" / "kubevirt-crds"
VERSIONS = ["v1.7.0", "v1.9.0"]
GOLDEN = sorted((Path(__file__).resolve().parent / "golden").glob("*.yaml"))
INPUTS = PlanInputs("ns", "drain", "uid-1", 1, {}, {})
PLAN = MigrationPlanSpec.model_validate(
    {"goal": "drain", "nodes": ["n0"], "migration": {"bandwidthPerMigration": "64Mi", "maxDowntimeMs": 800}}
)


def _crd(version: str, file: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SCHEMAS / version / file).read_text())
    return loaded


def _strict(node: Any) -> Any:
    """A structural schema as JSON Schema that refuses unknown fields, as strict field validation does."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if "properties" in node:
            out["properties"] = {name: _strict(s) for name, s in node["properties"].items()}
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@cache
def _validator(version: str, file: str, api_version: str) -> jsonschema.Draft4Validator:
    served = next(v for v in _crd(version, file)["spec"]["versions"] if v["name"] == api_version)
    schema = _strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # the API server owns metadata's schema
    return jsonschema.Draft4Validator(schema)


def _errors(version: str, file: str, body: dict[str, Any]) -> list[str]:
    api_version = body["apiVersion"].split("/")[1]
    validator = _validator(version, file, api_version)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


def _api(version: str) -> KubeVirtAPI:
    policy_crd = _crd(version, "migrations.kubevirt.io_migrationpolicies.yaml")
    return KubeVirtAPI.from_cluster([{"status": {"observedKubeVirtVersion": version}}], policy_crd)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.stem)
def test_rendered_vms_are_admitted_by_every_supported_version(version: str, golden: Path) -> None:
    vm = yaml.safe_load(golden.read_text())
    assert _errors(version, "kubevirt.io_virtualmachines.yaml", vm) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_check_catches_a_misspelled_field(version: str) -> None:
    vm = yaml.safe_load(GOLDEN[0].read_text())
    bad = copy.deepcopy(vm)
    bad["spec"]["template"]["spec"]["domain"]["cpu"]["dedicatedCPUPlacment"] = True
    errors = _errors(version, "kubevirt.io_virtualmachines.yaml", bad)
    assert len(errors) == 1 and "dedicatedCPUPlacment" in errors[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_migrations_and_policies_are_admitted_by_every_supported_version(version: str) -> None:
    migration = objects.migration(INPUTS, StartMigration("vm-0", 1, "drain-vm-0-1", "n1"), {})
    assert _errors(version, "kubevirt.io_virtualmachineinstancemigrations.yaml", migration) == []
    policy = objects.migration_policy(PLAN, INPUTS, _api(version))
    assert _errors(version, "migrations.kubevirt.io_migrationpolicies.yaml", policy) == []


def test_max_downtime_is_written_only_where_kubevirt_serves_it() -> None:
    old, new = _api("v1.7.0"), _api("v1.9.0")
    assert (old.version, old.max_downtime_supported) == ("v1.7.0", False)
    assert (new.version, new.max_downtime_supported) == ("v1.9.0", True)
    assert "maxDowntimeMs" not in objects.migration_policy(PLAN, INPUTS, old)["spec"]
    written = objects.migration_policy(PLAN, INPUTS, new)
    assert written["spec"]["maxDowntimeMs"] == 800
    # The v1.9.0 policy is exactly what v1.7.0 would refuse: the check above is not vacuous.
    assert any(
        "maxDowntimeMs" in e
        for e in _errors("v1.7.0", "migrations.kubevirt.io_migrationpolicies.yaml", written)
    )
    assert old.unsupported_policy_fields(written["spec"]) == ["maxDowntimeMs"]


def test_estimates_use_the_downtime_limit_kubevirt_really_applies() -> None:
    old, new = _api("v1.7.0"), _api("v1.9.0")
    assert new.max_downtime_ms(800) == 800
    assert old.max_downtime_ms(800) == QEMU_DEFAULT_MAX_DOWNTIME_MS
    requests = launcher_requests({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "8Gi"}}})
    # A guest dirtying memory fast enough that the downtime limit decides when pre-copy converges.
    busy = Placed("ns/vm-0", "n0", requests, annotations=((DIRTY_RATE_ANNOTATION, "40Mi"),))
    nodes = [NodeFacts(f"n{i}", {}, 32_000, 64 * 2**30) for i in range(2)]
    on_old, on_new = (build_plan(PLAN, "ns", [busy], nodes, {}, api).moves[0].estimate for api in (old, new))
    assert on_new.downtime_s > on_old.downtime_s  # 800 ms allowed on v1.9.0, QEMU's 300 ms on v1.7.0
    assert on_old.downtime_s <= QEMU_DEFAULT_MAX_DOWNTIME_MS / 1000


def test_what_cannot_be_read_counts_as_not_served() -> None:
    unknown = KubeVirtAPI.from_cluster([], None)
    assert unknown.version == "" and not unknown.max_downtime_supported
    assert served_spec_fields({"spec": {"versions": [{"name": "v1beta1"}]}}) == frozenset()
    assert "unknown version" in unknown.describe()
