"""Every golden VirtualMachine is accepted by KubeVirt's real CRD schema with strict field validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from virtfleet.kube.client import VIRTUAL_MACHINES, Kube

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "golden"


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.yaml")), ids=lambda p: p.stem)
async def test_golden_vm_is_strictly_valid(kube: Kube, namespace: str, golden: Path) -> None:
    vm = yaml.safe_load(golden.read_text())
    vm["metadata"]["namespace"] = namespace
    # The pool that would own it does not exist here; the owner reference is not what is under test.
    del vm["metadata"]["ownerReferences"]
    created = await kube.create(VIRTUAL_MACHINES, namespace, vm)
    assert created["spec"] == vm["spec"]  # nothing pruned, nothing unknown
