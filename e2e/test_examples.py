"""Apply every numbered example exactly as it is and check what the operator makes of it."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from virtfleet.localcluster.testing import SessionCluster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NUMBERED = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and p.name[:2].isdigit())


def _get(cluster: SessionCluster, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("-n", namespace, "get", kind, name, "-o", "json").stdout
    )
    return found


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    status = obj.get("status", {})
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def _wait_ready(cluster: SessionCluster, kind: str, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = _get(cluster, kind, name)
        ready = _condition(obj, "Ready")
        if ready and ready["status"] == "True":
            return obj
        assert time.monotonic() < deadline, f"{kind}/{name} never became Ready: {obj.get('status')}"
        time.sleep(0.5)


def test_01_template(test_cluster: SessionCluster, operator_process: str) -> None:
    test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "01-template"))
    template = _wait_ready(test_cluster, "vmtemplate", "fedora-small")
    assert template["status"]["vcpus"] == 2 and template["status"]["currentRevision"]
    assert "fedora-small" in test_cluster.kubectl("get", "virtfleet", "-A").stdout


def test_02_oversubscribed_pool(test_cluster: SessionCluster, operator_process: str) -> None:
    test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "01-template"))
    test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "02-oversubscribed-pool"))
    pool = _wait_ready(test_cluster, "vfpool", "web")
    status = pool["status"]
    assert status["readyReplicas"] == 6 and status["cpuRatio"] == 4 and status["memoryRatio"] == 1.5
    vms = json.loads(
        test_cluster.kubectl("-n", "default", "get", "vm", "-l", "virtfleet.io/pool=web", "-o", "json").stdout
    )
    for vm in vms["items"]:
        requests = vm["spec"]["template"]["spec"]["domain"]["resources"]["requests"]
        assert requests["cpu"] == "500m"  # 2 vCPUs / 4


@pytest.mark.skipif(
    os.environ.get("VIRTFLEET_E2E_OPERATOR") == "external", reason="the operator's metrics port is elsewhere"
)
def test_metrics_show_the_pool(test_cluster: SessionCluster, operator_process: str) -> None:
    for folder in ("01-template", "02-oversubscribed-pool"):
        test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / folder))
    _wait_ready(test_cluster, "vfpool", "web")
    with urllib.request.urlopen(operator_process, timeout=5) as response:
        text = response.read().decode()
    assert 'virtfleet_pool_replicas{namespace="default",pool="web",state="ready"} 6.0' in text
    assert 'virtfleet_pool_cpu_ratio{kind="configured",namespace="default",pool="web"} 4.0' in text
    assert "virtfleet_reconcile_total" in text


def test_03_pinned_numa_pool(test_cluster: SessionCluster, operator_process: str) -> None:
    test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "03-pinned-numa-pool"))
    pool = _wait_ready(test_cluster, "vfpool", "realtime")
    assert pool["status"]["readyReplicas"] == 4
    vmis = json.loads(
        test_cluster.kubectl(
            "-n", "default", "get", "vmi", "-l", "virtfleet.io/pool=realtime", "-o", "json"
        ).stdout
    )
    nodes = {v["status"]["nodeName"] for v in vmis["items"]}
    if test_cluster.local is not None:  # the example fleet's cpumanager nodes
        assert nodes <= {"pinned-0", "pinned-1"}


def test_applying_examples_twice_changes_nothing(test_cluster: SessionCluster, operator_process: str) -> None:
    """GitOps: re-applying the same manifests is a no-op, and the operator does not fight over them."""
    for folder in NUMBERED:
        test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / folder))
    _wait_ready(test_cluster, "vfpool", "web")
    _wait_ready(test_cluster, "vfpool", "realtime")
    time.sleep(2)
    listing = json.loads(test_cluster.kubectl("get", "virtfleet,vm", "-A", "-o", "json").stdout)
    before = {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in listing["items"]}
    for folder in NUMBERED:
        result = test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / folder))
        assert "serverside-applied" in result.stdout
    time.sleep(3)
    listing = json.loads(test_cluster.kubectl("get", "virtfleet,vm", "-A", "-o", "json").stdout)
    after = {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in listing["items"]}
    assert after == before


@pytest.mark.parametrize("folder", NUMBERED)
def test_examples_pass_server_side_validation(test_cluster: SessionCluster, folder: str) -> None:
    result = test_cluster.kubectl("apply", "--dry-run=server", "--server-side", "-f", str(EXAMPLES / folder))
    assert "serverside-applied" in result.stdout
