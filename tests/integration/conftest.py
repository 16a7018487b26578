"""One real control plane per test session: etcd, kube-apiserver, kube-controller-manager."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from kopf.testing import KopfRunner

from virtfleet.kube.client import Kube
from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import SessionCluster


@pytest.fixture(scope="session")
def cluster(test_cluster: SessionCluster) -> LocalCluster:
    if test_cluster.local is None:
        pytest.exit("tests/integration need the local control plane; e2e/ runs against other clusters")
    return test_cluster.local


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[Kube]:
    client = await Kube.connect(field_manager="virtfleet-tests", kubeconfig=str(cluster.kubeconfig))
    async with client:
        yield client


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace per test, deleted (by the real namespace controller) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def twin(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[None]:
    """The simulated KubeVirt, as its own process, with the test module's FLEET."""
    from twin_helpers import running_twin

    with running_twin(cluster, request.module.FLEET, tmp_path_factory.mktemp("twin")):
        yield


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster) -> Iterator[KopfRunner]:
    """The operator, in-process, watching all namespaces."""
    args = ["run", "--standalone", "--all-namespaces", "-m", "virtfleet.handlers"]
    previous = os.environ.get("VIRTFLEET_METRICS_PORT")
    os.environ["VIRTFLEET_METRICS_PORT"] = "0"  # e2e scrapes the real process's metrics instead
    try:
        with KopfRunner(args, timeout=60) as runner:
            yield runner
    finally:
        if previous is None:
            os.environ.pop("VIRTFLEET_METRICS_PORT", None)
        else:
            os.environ["VIRTFLEET_METRICS_PORT"] = previous
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
