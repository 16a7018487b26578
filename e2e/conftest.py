"""End-to-end: the real `virtfleet run` process against a cluster, examples/ applied as they are."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtfleet.localcluster.testing import SessionCluster, running_operator, twin_process

REPO = Path(__file__).resolve().parents[1]

# e2e/kind needs a cluster where the operator runs in-cluster, installed by its chart (`make kind-e2e`);
# e2e/kubevirt one that runs real KubeVirt besides (`make kubevirt-e2e`).
collect_ignore = [] if os.environ.get("VIRTFLEET_E2E_IN_CLUSTER") == "1" else ["kind"]
if os.environ.get("VIRTFLEET_E2E_KUBEVIRT") != "1":
    collect_ignore.append("kubevirt")


@pytest.fixture(scope="session")
def kubevirt(test_cluster: SessionCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """KubeVirt's runtime: on the local control plane, the twin (simulated KubeVirt) with the small
    example fleet; on a real cluster, whatever KubeVirt is installed there."""
    if test_cluster.local is None:
        yield
        return
    log = tmp_path_factory.mktemp("twin") / "twin.log"
    fleet = REPO / "examples" / "twin" / "fleet-small.yaml"
    with twin_process(test_cluster.kubeconfig, fleet, log):
        yield


@pytest.fixture(scope="session")
def operator_process(
    test_cluster: SessionCluster, kubevirt: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`virtfleet run` as users start it; yields its metrics URL. VIRTFLEET_E2E_OPERATOR=external skips it."""
    if os.environ.get("VIRTFLEET_E2E_OPERATOR") == "external":
        yield ""
        return
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(test_cluster.kubeconfig, log, "--standalone") as metrics_url:
        yield metrics_url
