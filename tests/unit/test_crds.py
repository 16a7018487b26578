"""The CRDs are generated from the models, current, described and collision-free."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtfleet.api.crd import KINDS, all_crds, openapi_schema, undescribed_fields
from virtfleet.cli import main

# Short names KubeVirt and its satellites (CDI, instancetypes, pools, exports, clones) use or reserve.
KUBEVIRT_SHORT_NAMES = {
    "vm", "vms", "vmi", "vmis", "vmim", "vmims", "vmpool", "vmpools", "vmt", "vmp", "vmf",
    "vmcf", "vmpref", "vmcp", "vmcps", "vmps", "vmrestore", "vmsnapshot", "vmexport", "vmclone",
    "kv", "kvs", "cdi", "dv", "dvs", "vmipreset", "vmirs", "virtualmachine", "migrationpolicy",
}  # fmt: skip


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_checked_in_crds_are_current(repo: Path) -> None:
    assert main(["crds", "--check", "--output", str(repo / "crds")]) == 0


def test_crds_check_notices_a_stale_file(tmp_path: Path) -> None:
    assert main(["crds", "--output", str(tmp_path)]) == 0
    target = next(tmp_path.glob("*.yaml"))
    target.write_text(target.read_text().replace("description: Desired", "description: Wanted", 1))
    assert main(["crds", "--check", "--output", str(tmp_path)]) == 1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_field_has_a_description(kind: Any) -> None:
    schema = all_crds()[f"virtfleet.io_{kind.plural}.yaml"]["spec"]["versions"][0]["schema"]
    assert undescribed_fields(schema["openAPIV3Schema"]) == []


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Any) -> None:
    for path, node in _walk(openapi_schema(kind.model)):
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not {"$ref", "anyOf", "title"} & set(node), path


def test_short_names_do_not_collide_with_kubevirt(repo: Path) -> None:
    taken = set(KUBEVIRT_SHORT_NAMES)
    for file in (repo / "e2e" / "kubevirt-crds").glob("*/*.yaml"):
        names = yaml.safe_load(file.read_text())["spec"]["names"]
        taken |= set(names.get("shortNames", [])) | {names["singular"], names["kind"].lower()}
    ours = [name for kind in KINDS for name in kind.short_names]
    assert ours
    assert not set(ours) & taken
    assert len(ours) == len(set(ours))


def test_categories_scale_and_status() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in all_crds().values()}
    assert set(crds) == {"VMTemplate", "VirtualMachinePool", "MigrationPlan"}
    for crd in crds.values():
        assert "virtfleet" in crd["spec"]["names"]["categories"]
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1alpha1"
        assert "status" in version["subresources"]
        assert version["additionalPrinterColumns"]
    pool = crds["VirtualMachinePool"]["spec"]["versions"][0]["subresources"]["scale"]
    assert pool == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.labelSelector",
    }


def test_cel_rules_reach_the_schema() -> None:
    spec = openapi_schema(KINDS[0].model)["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("guestMappingPassthrough" in rule for rule in rules)
    cpu_rules = spec["properties"]["cpu"]["x-kubernetes-validations"]
    assert {r["fieldPath"] for r in cpu_rules} == {".maxSockets", ".isolateEmulatorThread"}
