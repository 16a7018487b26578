"""The e2e suite on real KubeVirt (`make kubevirt-e2e`): real virt-launcher pods, real guests, real
migrations, the operator in-cluster from its Helm chart.

Settings: VIRTFLEET_E2E_KUBEVIRT=1 (collects this folder), VIRTFLEET_USE_EXISTING_CLUSTER=1 and KUBECONFIG
(any cluster running KubeVirt and the operator), VIRTFLEET_E2E_GUEST_IMAGE (the containerDisk the examples'
templates boot; unset, the examples' own images, which a cluster with registry access pulls),
VIRTFLEET_OPERATOR_NAMESPACE / VIRTFLEET_OPERATOR_RELEASE (as e2e/kind), VIRTFLEET_KUBEVIRT_RESULTS (where
measured figures go).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kind"))

from kind_helpers import REPO, Operator, scratch_namespace, wait_for
from kubevirt_helpers import kubevirt_cr

from virtfleet.localcluster.testing import SessionCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("VIRTFLEET_USE_EXISTING_CLUSTER") != "1":
        raise pytest.UsageError(
            "e2e/kubevirt runs against a cluster with real KubeVirt and the operator installed by its chart: "
            "`make kubevirt-e2e`, or VIRTFLEET_USE_EXISTING_CLUSTER=1 VIRTFLEET_E2E_KUBEVIRT=1 KUBECONFIG=..."
        )


@pytest.fixture(scope="session", autouse=True)
def kubevirt(test_cluster: SessionCluster) -> dict[str, object]:
    """KubeVirt's CR once it is Available: its version and configuration are what the tests hold to."""

    def available() -> dict[str, object] | None:
        cr = kubevirt_cr(test_cluster)
        conditions = cr.get("status", {}).get("conditions", [])
        ok = any(c["type"] == "Available" and c["status"] == "True" for c in conditions)
        return cr if ok else None

    return wait_for(available, 300, "KubeVirt never became Available")


@pytest.fixture(scope="session")
def operator(test_cluster: SessionCluster) -> Operator:
    op = Operator(test_cluster)
    wait_for(lambda: op.ready_pods() or None, 180, "the operator Deployment has no Ready pod")
    return op


@pytest.fixture(scope="session")
def guest_image() -> str:
    return os.environ.get("VIRTFLEET_E2E_GUEST_IMAGE", "")


@pytest.fixture
def namespace(test_cluster: SessionCluster) -> Iterator[str]:
    with scratch_namespace(test_cluster, "kv", wait=True) as name:
        yield name


@pytest.fixture(scope="session")
def results() -> Path:
    default = REPO / "bench" / "results" / "kubevirt-e2e.json"
    path = Path(os.environ.get("VIRTFLEET_KUBEVIRT_RESULTS", default))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
