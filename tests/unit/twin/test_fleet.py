"""The fleet file and the Node objects made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from virtfleet.api.labels import NUMA_ANNOTATION
from virtfleet.core.cpulist import format_cpu_list, parse_cpu_list
from virtfleet.twin.clock import Clock
from virtfleet.twin.fleet import Fleet, node_manifests


def test_example_fleet_makes_nodes(repo: Path) -> None:
    fleet = Fleet.load(repo / "examples/twin/fleet-small.yaml")
    nodes = node_manifests(fleet)
    assert [n["metadata"]["name"] for n in nodes] == [
        "general-0",
        "general-1",
        "general-2",
        "pinned-0",
        "pinned-1",
    ]
    pinned = nodes[3]
    assert pinned["metadata"]["labels"]["kubevirt.io/cpumanager"] == "true"
    assert pinned["status"]["allocatable"]["hugepages-1Gi"] == str(64 * 2**30)
    # Hugepages and the reservation come out of allocatable memory, as the kubelet reports it.
    assert int(pinned["status"]["allocatable"]["memory"]) == (192 - 64 - 4) * 2**30
    cells = json.loads(pinned["metadata"]["annotations"][NUMA_ANNOTATION])["cells"]
    assert [c["cpus"] for c in cells] == ["0-15", "16-31"]


def test_cpu_lists_round_trip() -> None:
    assert parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert format_cpu_list([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"


@pytest.mark.parametrize(
    ("node", "words"),
    [
        ({"name": "a", "cpu": 8, "memory": "8Gi", "numa": [{"cpus": "0-3", "memory": "4Gi"}]}, "cells list 4 cpus"),
        ({"name": "a", "cpu": 4, "memory": "8Gi", "numa": [{"cpus": "0-3", "memory": "4Gi"},
                                                         {"cpus": "3", "memory": "4Gi"}]}, "two NUMA cells"),
        ({"name": "a", "cpu": 0, "memory": "8Gi"}, "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_fleet_files_say_why(node: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Fleet.model_validate({"nodes": [node]})


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate node names: a-0"):
        Fleet.model_validate({"nodes": [{"name": "a", "count": 2, "cpu": 1, "memory": "1Gi"},
                                        {"name": "a-0", "cpu": 1, "memory": "1Gi"}]})  # fmt: skip


def test_clock_runs_scaled() -> None:
    clock = Clock(time_scale=0.001)
    start = clock.now()
    import time

    time.sleep(0.01)
    assert (clock.now() - start).total_seconds() >= 10 - 0.5
    assert clock.stamp().endswith("Z") and "." in clock.stamp()
