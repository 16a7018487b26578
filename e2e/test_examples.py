"""Apply every numbered example exactly as it is and check what the operator makes of it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from virtfleet.localcluster.testing import SessionCluster, promtool

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


def _wait_phase(cluster: SessionCluster, name: str, phases: set[str], timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        plan = _get(cluster, "vfplan", name)
        if plan.get("status", {}).get("phase") in phases:
            return plan
        assert time.monotonic() < deadline, f"plan {name} never reached {phases}: {plan.get('status')}"
        time.sleep(0.5)


def test_04_migration_plan(test_cluster: SessionCluster, operator_process: str) -> None:
    for folder in ("01-template", "02-oversubscribed-pool"):
        test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / folder))
    _wait_ready(test_cluster, "vfpool", "web")
    test_cluster.kubectl(
        "apply", "--server-side", "-f", str(EXAMPLES / "04-migration-plan" / "1-what-if.yaml")
    )
    what_if = _wait_phase(test_cluster, "maintenance-what-if", {"Planned"})["status"]
    test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "04-migration-plan" / "2-drain.yaml"))
    plan = _wait_phase(test_cluster, "maintenance", {"Succeeded", "Failed", "Paused", "Cancelled"})
    status = plan["status"]
    assert status["phase"] == "Succeeded", status
    # The dry run foresaw exactly the moves the real plan made.
    assert sorted(v["name"] for v in what_if["vms"]) == sorted(v["name"] for v in status["vms"])
    assert status["done"] == status["total"] == len(status["vms"])
    if test_cluster.local is not None:  # the example fleet: general-0 ran some of the web VMs
        assert status["total"] > 0
        vmis = json.loads(test_cluster.kubectl("-n", "default", "get", "vmi", "-o", "json").stdout)["items"]
        assert all(v["status"]["nodeName"] != "general-0" for v in vmis if v["metadata"]["name"] in {
            m["name"] for m in status["vms"]})  # fmt: skip
    node = json.loads(
        test_cluster.kubectl("get", "node", "general-0", "-o", "json", check=False).stdout or "{}"
    )
    assert not node.get("spec", {}).get("unschedulable")  # uncordonWhenDone
    _wait_ready(test_cluster, "vfpool", "web")  # the pool stayed whole
    if operator_process:  # our own operator process: its metrics show the plan
        with urllib.request.urlopen(operator_process, timeout=5) as response:
            text = response.read().decode()
        done = f'virtfleet_migration_plan_vms{{namespace="default",phase="Succeeded",plan="maintenance"}} {status["done"]}.0'
        assert done in text
        assert 'virtfleet_migration_duration_seconds_count{kind="actual",method="live"}' in text


@pytest.mark.skipif(
    os.environ.get("VIRTFLEET_E2E_OPERATOR") == "external", reason="the operator's metrics port is elsewhere"
)
def test_a_live_scrape_passes_promtool_and_has_every_family(
    test_cluster: SessionCluster, operator_process: str
) -> None:
    for folder in ("01-template", "02-oversubscribed-pool"):
        test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / folder))
    _wait_ready(test_cluster, "vfpool", "web")
    with urllib.request.urlopen(operator_process, timeout=5) as response:
        text = response.read().decode()
    lint = subprocess.run([str(promtool()), "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE virtfleet_")}
    assert not any(name.endswith("_created") for name in families)  # no per-series creation timestamps
    assert families >= {
        "virtfleet_pool_replicas", "virtfleet_pool_pending_replicas", "virtfleet_pool_condition",
        "virtfleet_pool_cpu_ratio", "virtfleet_pool_memory_ratio", "virtfleet_node_committed_vcpus",
        "virtfleet_node_cpu_cores", "virtfleet_node_effective_cpu_ratio", "virtfleet_node_effective_memory_ratio",
        "virtfleet_template_revisions", "virtfleet_migration_plan_vms", "virtfleet_migration_plan_makespan_seconds",
        "virtfleet_migration_duration_seconds", "virtfleet_migration_downtime_seconds", "virtfleet_reconcile_total",
        "virtfleet_reconcile_duration_seconds", "virtfleet_kubernetes_api_requests_total", "virtfleet_kubevirt_info",
    }, sorted(families)  # fmt: skip
    if test_cluster.local is not None:  # v1.9.0 CRDs, and no KubeVirt CR for the twin
        assert 'virtfleet_kubevirt_info{max_downtime_ms="true",version=""} 1.0' in text
    assert (
        'virtfleet_template_revisions{namespace="default",state="in_use",template="fedora-small"} 1.0' in text
    )
    assert 'virtfleet_kubernetes_api_requests_total{code="201",verb="create"}' in text
    if test_cluster.local is not None:  # the example fleet: 6 web VMs of 2 vCPUs on its nodes
        committed = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("virtfleet_node_committed_vcpus{")
        )
        assert committed >= 12


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
