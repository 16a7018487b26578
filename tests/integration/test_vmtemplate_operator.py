"""The operator, run in-process, validates VMTemplates and reports it in status."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner

from virtfleet.api import reasons
from virtfleet.localcluster import LocalCluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((REPO / "examples/01-template/vmtemplate.yaml").read_text())


def _template(namespace: str, name: str, mutate: Callable[[dict[str, Any]], None] | None = None) -> str:
    body = copy.deepcopy(EXAMPLE)
    body["metadata"] = {"name": name, "namespace": namespace}
    if mutate:
        mutate(body["spec"])
    return json.dumps(body)


def _wait_for_condition(
    cluster: LocalCluster, namespace: str, name: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = json.loads(cluster.kubectl("-n", namespace, "get", "vmtemplate", name, "-o", "json").stdout)
        ready = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
        if ready and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
            return obj
        time.sleep(0.2)
    pytest.fail(f"{namespace}/{name} never got a Ready condition for its generation")


def test_valid_template_becomes_ready_and_stays_untouched(
    cluster: LocalCluster, operator: KopfRunner, namespace: str
) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=_template(namespace, "good"))
    obj = _wait_for_condition(cluster, namespace, "good")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", reasons.TEMPLATE_VALID)
    assert obj["status"]["observedGeneration"] == 1
    # Level-triggered and idempotent: once reported, the operator writes nothing more.
    version = obj["metadata"]["resourceVersion"]
    time.sleep(3)
    later = json.loads(cluster.kubectl("-n", namespace, "get", "vmtemplate", "good", "-o", "json").stdout)
    assert later["metadata"]["resourceVersion"] == version


def test_invalid_template_reports_the_field(
    cluster: LocalCluster, operator: KopfRunner, namespace: str
) -> None:
    def bad_hugepages(spec: dict[str, Any]) -> None:
        spec["memory"] = {"guest": "1500Mi", "hugepages": "1Gi"}

    cluster.kubectl("apply", "--server-side", "-f", "-", input=_template(namespace, "bad", bad_hugepages))
    obj = _wait_for_condition(cluster, namespace, "bad")
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == reasons.INVALID_SPEC
    assert "spec.memory.guest" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["status"] == "True"
    events = cluster.kubectl("-n", namespace, "get", "events", "-o", "json").stdout
    assert reasons.INVALID_SPEC in events

    # Fixing the spec flips the verdict for the new generation.
    cluster.kubectl("apply", "--server-side", "-f", "-", input=_template(namespace, "bad"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        obj = _wait_for_condition(cluster, namespace, "bad")
        if obj["metadata"]["generation"] == 2:
            break
        time.sleep(0.2)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (obj["status"]["observedGeneration"], ready["status"]) == (2, "True")


def test_admission_rejects_what_cel_can_check(cluster: LocalCluster, namespace: str) -> None:
    def emulator_without_pinning(spec: dict[str, Any]) -> None:
        spec["cpu"]["isolateEmulatorThread"] = True

    result = cluster.kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=_template(namespace, "cel", emulator_without_pinning),
        check=False,
    )
    assert result.returncode != 0
    assert "spec.cpu.isolateEmulatorThread" in result.stderr
    assert "requires cpu.policy 'dedicated'" in result.stderr

    def numa_without_hugepages(spec: dict[str, Any]) -> None:
        spec["cpu"]["policy"] = "dedicated"
        spec["numa"] = {"guestMappingPassthrough": True}

    result = cluster.kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=_template(namespace, "numa", numa_without_hugepages),
        check=False,
    )
    assert result.returncode != 0
    assert "spec.numa.guestMappingPassthrough" in result.stderr
