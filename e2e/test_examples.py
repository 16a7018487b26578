"""Apply every numbered example exactly as it is and check what the operator makes of it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from virtfleet.localcluster.testing import SessionCluster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _get(cluster: SessionCluster, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("-n", namespace, "get", kind, name, "-o", "json").stdout
    )
    return found


def _ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    status = obj.get("status", {})
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def test_01_template(test_cluster: SessionCluster, operator_process: str) -> None:
    test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "01-template"))
    deadline = time.monotonic() + 60
    while (ready := _ready(_get(test_cluster, "vmtemplate", "fedora-small"))) is None:
        assert time.monotonic() < deadline, "the example template never got a Ready condition"
        time.sleep(0.3)
    assert ready["status"] == "True", ready
    listed = test_cluster.kubectl("get", "virtfleet", "-A").stdout
    assert "fedora-small" in listed


def test_applying_examples_twice_changes_nothing(test_cluster: SessionCluster, operator_process: str) -> None:
    """GitOps: re-applying the same manifests is a no-op, and the operator does not fight over them."""
    test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "01-template"))
    before = _get(test_cluster, "vmtemplate", "fedora-small")["metadata"]["resourceVersion"]
    result = test_cluster.kubectl("apply", "--server-side", "-f", str(EXAMPLES / "01-template"))
    assert "serverside-applied" in result.stdout
    time.sleep(2)
    after = _get(test_cluster, "vmtemplate", "fedora-small")["metadata"]["resourceVersion"]
    assert after == before


@pytest.mark.parametrize("folder", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_examples_pass_server_side_validation(test_cluster: SessionCluster, folder: str) -> None:
    result = test_cluster.kubectl("apply", "--dry-run=server", "--server-side", "-f", str(EXAMPLES / folder))
    assert "serverside-applied" in result.stdout
