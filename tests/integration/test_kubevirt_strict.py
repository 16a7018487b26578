"""KubeVirt's real CRDs are installed and every write is strict: a misspelled field fails."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from virtfleet.kube.client import VIRTUAL_MACHINES, ApiError, Kube

pytestmark = pytest.mark.integration

VM: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "strict-check"},
    "spec": {
        "runStrategy": "Halted",
        "template": {
            "spec": {
                "domain": {
                    "cpu": {"sockets": 1, "cores": 2, "threads": 1},
                    "memory": {"guest": "1Gi"},
                    "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                },
                "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:40"}}],
            }
        },
    },
}


async def test_misspelled_cpu_field_is_rejected(kube: Kube, namespace: str) -> None:
    bad = copy.deepcopy(VM)
    bad["spec"]["template"]["spec"]["domain"]["cpu"]["dedicatedCPUPlacment"] = True
    with pytest.raises(ApiError) as raised:
        await kube.create(VIRTUAL_MACHINES, namespace, bad)
    assert raised.value.status == 400
    message = json.loads(raised.value.body)["message"]
    assert "dedicatedCPUPlacment" in message
    assert "unknown field" in message


async def test_correct_vm_is_accepted_unchanged(kube: Kube, namespace: str) -> None:
    created = await kube.create(VIRTUAL_MACHINES, namespace, VM)
    stored = await kube.get(VIRTUAL_MACHINES, namespace, created["metadata"]["name"])
    assert stored["spec"]["template"]["spec"]["domain"]["cpu"] == {"sockets": 1, "cores": 2, "threads": 1}
    assert stored["spec"]["runStrategy"] == "Halted"
