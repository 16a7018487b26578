"""End-to-end: the real `virtfleet run` process against a cluster, examples/ applied as they are."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtfleet.localcluster.cluster import free_port
from virtfleet.localcluster.testing import SessionCluster, twin_process

REPO = Path(__file__).resolve().parents[1]


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
    health = f"http://127.0.0.1:{free_port()}/healthz"
    metrics_port = free_port()
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "virtfleet", "run", "--standalone", "--liveness", health],
            env={
                **os.environ,
                "KUBECONFIG": str(test_cluster.kubeconfig),
                "VIRTFLEET_METRICS_PORT": str(metrics_port),
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    with urllib.request.urlopen(health, timeout=1) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                assert time.monotonic() < deadline, f"operator never became healthy:\n{log.read_text()}"
                time.sleep(0.2)
            yield f"http://127.0.0.1:{metrics_port}/metrics"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
