"""Shared plumbing for the benchmarks: a control plane, results files, RSS readings."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtfleet.localcluster import LocalCluster

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident set size (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def write_results(name: str, figures: dict[str, dict[str, Any]], command: str) -> Path:
    """bench/results/<name>.json as {"<figure>": {"value", "unit", "target"}}, and print a table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    print(f"\n{name} — {datetime.now(UTC):%Y-%m-%d %H:%M UTC} on {platform.node()} ({os.cpu_count()} cpus)")
    for figure, row in figures.items():
        print(f"  {figure:<{width}}  {row['value']!s:>12} {row['unit']:<10} target: {row['target']}")
    print(f"reproduce: {command}\nwritten: {path}")
    return path


def git_revision() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


# What the operator may write; kube-controller-manager's own writes (leases, nodes) are not counted.
OPERATOR_RESOURCES = {"virtualmachines", "virtualmachinepools", "vmtemplates", "controllerrevisions", "events",
                      "virtualmachineinstances", "migrationplans", "virtualmachineinstancemigrations",
                      "migrationpolicies"}  # fmt: skip
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"}


def api_writes(cluster: LocalCluster) -> int:
    """Write requests so far to the resources the operator touches, from kube-apiserver's own counter."""
    with urllib.request.urlopen(f"{cluster.server}/metrics", context=cluster._ssl_context()) as response:
        text = response.read().decode()
    total = 0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in OPERATOR_RESOURCES:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total
