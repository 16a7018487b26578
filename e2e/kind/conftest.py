"""The e2e suite against a real cluster with the operator in-cluster (`make kind-e2e`).

The operator runs from its image, installed by the Helm charts (hack/kind/cluster.py); these tests talk
to it only through the API server, as a user would. Settings: VIRTFLEET_E2E_IN_CLUSTER=1 (collects this
folder), VIRTFLEET_OPERATOR_NAMESPACE (virtfleet-system), VIRTFLEET_OPERATOR_RELEASE (virtfleet),
VIRTFLEET_HELM (the helm binary; default: on PATH), VIRTFLEET_KIND_RESULTS (where measured figures go).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kind_helpers import (
    CAPACITY_NAMESPACE,
    REPO,
    Operator,
    Prometheus,
    answers,
    prometheus_config,
    scrape_targets,
    scratch_namespace,
    service_monitor,
    wait_for,
)

from virtfleet.localcluster.cluster import free_port
from virtfleet.localcluster.testing import SessionCluster, promtool


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("VIRTFLEET_USE_EXISTING_CLUSTER") != "1":
        raise pytest.UsageError(
            "e2e/kind runs against a real cluster with the operator installed by its chart: "
            "`make kind-e2e`, or VIRTFLEET_USE_EXISTING_CLUSTER=1 VIRTFLEET_E2E_IN_CLUSTER=1 KUBECONFIG=..."
        )


@pytest.fixture(scope="session")
def operator(test_cluster: SessionCluster) -> Operator:
    op = Operator(test_cluster)
    wait_for(lambda: op.ready_pods() or None, 180, "the operator Deployment has no Ready pod")
    return op


@pytest.fixture
def namespace(test_cluster: SessionCluster) -> Iterator[str]:
    with scratch_namespace(test_cluster, "e2e") as name:
        yield name


@pytest.fixture(scope="session")
def results() -> Path:
    path = Path(os.environ.get("VIRTFLEET_KIND_RESULTS", REPO / "bench" / "results" / "kind-e2e.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def prometheus(
    test_cluster: SessionCluster, operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Started first, with a pool that cannot fit, so the capacity alert's 5 minutes run beside the tests."""
    test_cluster.kubectl("create", "namespace", CAPACITY_NAMESPACE, check=False)
    exhausted = [
        {
            "apiVersion": "virtfleet.io/v1alpha1",
            "kind": "VMTemplate",
            "metadata": {"name": "big", "namespace": CAPACITY_NAMESPACE},
            "spec": {
                "cpu": {"sockets": 1, "cores": 2, "threads": 1, "policy": "shared"},
                "memory": {"guest": "256Mi"},
                "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
                "interfaces": [{"name": "default", "type": "nat"}],
            },
        },
        {
            "apiVersion": "virtfleet.io/v1alpha1",
            "kind": "VirtualMachinePool",
            "metadata": {"name": "exhausted", "namespace": CAPACITY_NAMESPACE},
            # 2 vCPUs each at 1:1 on two workers of a few cores: most of the 20 cannot be placed.
            "spec": {"replicas": 20, "templateRef": {"name": "big"}, "cpuRatio": 1},
        },
    ]
    test_cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(exhausted))
    work = tmp_path_factory.mktemp("prometheus")
    monitor = service_monitor(operator)
    config = prometheus_config(monitor, test_cluster.kubeconfig, work)
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    stop = threading.Event()

    def discover() -> None:
        """Kubernetes discovery's part: keep the targets file current as operator pods come and go."""
        while True:
            targets = json.dumps(scrape_targets(test_cluster, monitor))
            (work / "targets.json.tmp").write_text(targets)
            (work / "targets.json.tmp").replace(work / "targets.json")
            if stop.wait(5):
                return

    discovery = threading.Thread(target=discover, daemon=True)
    discovery.start()
    port = free_port()
    binary = promtool().parent / "prometheus"
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    running = Prometheus(f"http://127.0.0.1:{port}", config, time.monotonic())
    try:
        wait_for(
            lambda: process.poll() is None and answers(running), 30, f"prometheus never answered ({work})"
        )
        yield running
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=30)
        log.close()
        test_cluster.kubectl("delete", "namespace", CAPACITY_NAMESPACE, "--wait=false", check=False)
