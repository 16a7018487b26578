"""kill -9 of the operator in the middle of a scale-out leaves exactly the desired VMs: no duplicates,
no orphans (stable ordinals + expectations), once a new operator process takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_pools import pool, template
from twin_helpers import apply, get_json, wait_for

from virtfleet.localcluster import LocalCluster

pytestmark = pytest.mark.integration

FLEET: dict[str, Any] = {
    "timeScale": 0.02,
    "defaults": {"bootSeconds": 2},
    "nodes": [{"name": "gen", "count": 3, "cpu": 64, "memory": "512Gi", "labels": {"role": "general"}}],
}
REPLICAS = 60


def start_operator(cluster: LocalCluster, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "virtfleet", "run", "--standalone", "--liveness", ""],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "VIRTFLEET_METRICS_PORT": "0"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("kill_after", [0.3, 1.0])
def test_kill_9_mid_scale_out(
    cluster: LocalCluster, twin: None, namespace: str, tmp_path: Path, kill_after: float
) -> None:
    log = tmp_path / "operator.log"
    operator = start_operator(cluster, log)
    try:
        apply(cluster, template(namespace))
        apply(cluster, pool(namespace, replicas=0))
        wait_for(
            lambda: (
                get_json(cluster, "-n", namespace, "vfpool", "pool").get("status", {}).get("updateRevision")
            ),
            60,
            "pool never picked up its template",
        )
        cluster.kubectl("-n", namespace, "scale", "vfpool", "pool", f"--replicas={REPLICAS}")
        time.sleep(kill_after)
        operator.send_signal(signal.SIGKILL)
        operator.wait()
        created_before_restart = len(get_json(cluster, "-n", namespace, "vm")["items"])
        operator = start_operator(cluster, log)

        def converged() -> list[str] | None:
            names = sorted(v["metadata"]["name"] for v in get_json(cluster, "-n", namespace, "vm")["items"])
            status = get_json(cluster, "-n", namespace, "vfpool", "pool").get("status", {})
            return names if len(names) == REPLICAS and status.get("readyReplicas") == REPLICAS else None

        names = wait_for(converged, 120, f"the new operator did not converge:\n{log.read_text()[-3000:]}")
        assert names == sorted(f"pool-{i}" for i in range(REPLICAS))  # exactly these, no duplicates
        vmis = get_json(cluster, "-n", namespace, "vmi")["items"]
        assert sorted(v["metadata"]["name"] for v in vmis) == names  # no orphans either
        assert 0 <= created_before_restart <= REPLICAS
    finally:
        operator.kill()
        operator.wait()
        cluster.kubectl("-n", namespace, "delete", "vfpool", "pool", "--wait=false", check=False)


def test_kill_9_mid_migration_plan_starts_no_second_migration(
    cluster: LocalCluster, twin: None, namespace: str, tmp_path: Path
) -> None:
    """A plan's migrations are named per VM and attempt, and its state is read back from the API: a new
    operator resumes the plan and never migrates a VM twice."""
    log = tmp_path / "operator.log"
    operator = start_operator(cluster, log)
    others = ["gen-1", "gen-2"]
    try:
        for node in others:
            cluster.kubectl("cordon", node)
        apply(cluster, template(namespace))
        apply(cluster, pool(namespace, replicas=16, cpuRatio=4))
        wait_for(
            lambda: len([v for v in get_json(cluster, "-n", namespace, "vmi")["items"]
                         if v.get("status", {}).get("phase") == "Running"]) == 16,
            120, "the pool never ran",
        )  # fmt: skip
        for node in others:
            cluster.kubectl("uncordon", node)
        plan = {"apiVersion": "virtfleet.io/v1alpha1", "kind": "MigrationPlan",
                "metadata": {"name": "drain", "namespace": namespace},
                "spec": {"goal": "drain", "nodes": ["gen-0"], "limits": {"maxParallel": 2},
                         # ~30 simulated (0.6 real) seconds per migration
                         "migration": {"bandwidthPerMigration": "200M"}}}  # fmt: skip
        apply(cluster, plan)

        def status() -> dict[str, Any]:
            found: dict[str, Any] = get_json(cluster, "-n", namespace, "vfplan", "drain").get("status", {})
            return found

        wait_for(lambda: status().get("done", 0) >= 2, 120, f"no VM moved:\n{log.read_text()[-3000:]}")
        operator.send_signal(signal.SIGKILL)
        operator.wait()
        done_at_kill = status()["done"]
        operator = start_operator(cluster, log)
        final = wait_for(
            lambda: (s := status()) and s.get("phase") in ("Succeeded", "Failed") and s,
            180, f"the plan never finished:\n{log.read_text()[-3000:]}",
        )  # fmt: skip
        assert final["phase"] == "Succeeded" and final["done"] == 16 and 2 <= done_at_kill < 16
        migrations = get_json(cluster, "-n", namespace, "vmim")["items"]
        per_vm = sorted(v["spec"]["vmiName"] for v in migrations)
        assert per_vm == sorted(set(per_vm)) and len(per_vm) == 16  # one migration per VM, no second
        assert all(v["status"]["phase"] == "Succeeded" for v in migrations)
        vmis = get_json(cluster, "-n", namespace, "vmi")["items"]
        assert all(v["status"]["nodeName"] in others for v in vmis)
    finally:
        operator.kill()
        operator.wait()
        for node in others:
            cluster.kubectl("uncordon", node, check=False)
        cluster.kubectl("-n", namespace, "delete", "vfplan,vfpool", "--all", "--wait=false", check=False)
