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
