"""`make demo`: a local control plane, the simulated KubeVirt twin, the operator and examples/, left
running for you to explore.

up:   start everything in the background (state in .demo/), apply examples/, show VMs coming up,
      print a summary (pools, VMs per node, effective ratios, metrics).
down: stop what `up` started.

On a real cluster there is nothing to simulate: apply crds/ and run `virtfleet run` (see README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".demo"
PYTHON = sys.executable


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _spawn(name: str, args: list[str], env: dict[str, str] | None = None) -> int:
    log = (STATE / f"{name}.log").open("ab")
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # outlives this script; `make demo-stop` ends it
    )
    (STATE / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(what: str, ready: object, pid: int, log: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if not _alive(pid):
            sys.exit(f"{what} exited; see {STATE / log}")
        if time.monotonic() > deadline:
            sys.exit(f"{what} not ready after {timeout:.0f}s; see {STATE / log}")
        time.sleep(0.3)


def up() -> None:
    if (STATE / "localcluster.pid").exists() and _alive(int((STATE / "localcluster.pid").read_text())):
        sys.exit("a demo is already running: `make demo-stop` first")
    STATE.mkdir(exist_ok=True)
    shutil.rmtree(STATE / "cluster", ignore_errors=True)  # every demo starts from an empty cluster
    ready_file = STATE / "kubeconfig-path"
    ready_file.unlink(missing_ok=True)
    _say("starting the local control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster_pid = _spawn(
        "localcluster",
        [PYTHON, "-m", "virtfleet", "localcluster", "--state-dir", str(STATE / "cluster"),
         "--apply", str(REPO / "crds"), "--apply", str(REPO / "e2e" / "kubevirt-crds" / "v1.9.0"),
         "--ready-file", str(ready_file)],
    )  # fmt: skip
    _wait("the control plane", ready_file.exists, cluster_pid, "localcluster.log")
    kubeconfig = ready_file.read_text().strip()
    kubectl = str(Path(os.environ["VIRTFLEET_BIN_DIR"]) / "kubectl")

    def run_kubectl(*args: str) -> str:
        return subprocess.run(
            [kubectl, f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, check=True
        ).stdout

    _say("starting the twin: SIMULATED KubeVirt (virt-controller, virt-handler, scheduler), not a hypervisor")
    fleet = REPO / "examples" / "twin" / "fleet-small.yaml"
    _spawn(
        "twin",
        [PYTHON, "-m", "virtfleet", "twin", "run", "--fleet", str(fleet)],
        env={"KUBECONFIG": kubeconfig},
    )
    _say("starting the operator: virtfleet run --standalone")
    health = "http://127.0.0.1:18080/healthz"
    metrics = "http://127.0.0.1:18090/metrics"
    operator_pid = _spawn(
        "operator",
        [PYTHON, "-m", "virtfleet", "run", "--standalone", "--liveness", health],
        env={"KUBECONFIG": kubeconfig, "VIRTFLEET_METRICS_PORT": "18090"},
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(health, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    _wait("the operator", healthy, operator_pid, "operator.log")
    examples = sorted(p for p in (REPO / "examples").iterdir() if p.is_dir() and p.name[:2].isdigit())
    plans = [p for p in examples if "migration-plan" in p.name]
    for folder in (p for p in examples if p not in plans):
        _say(f"applying examples/{folder.name}")
        print(run_kubectl("apply", "--server-side", "-f", str(folder)), end="")

    _say("waiting for every pool to be Ready (VMs come up in the twin)")
    deadline = time.monotonic() + 180
    last = ""
    while time.monotonic() < deadline:
        pools = json.loads(run_kubectl("get", "virtualmachinepools.virtfleet.io", "-A", "-o", "json"))[
            "items"
        ]
        line = "  " + ", ".join(
            f"{p['metadata']['name']}: {p.get('status', {}).get('readyReplicas', 0)}/{p['spec']['replicas']} ready"
            for p in pools
        )
        if line != last:
            print(line, flush=True)
            last = line
        if pools and all(_ready(p) for p in pools):
            break
        time.sleep(0.5)
    for folder in plans:  # once the pools run: a maintenance drain, first as a what-if
        _say(f"applying examples/{folder.name}")
        print(run_kubectl("apply", "--server-side", "-f", str(folder)), end="")
        _follow_plans(run_kubectl)
    print()
    print(run_kubectl("get", "virtfleet", "-A"))
    _summary(json.loads(run_kubectl("get", "virtualmachinepools.virtfleet.io", "-A", "-o", "json"))["items"],
             json.loads(run_kubectl("get", "vmi", "-A", "-o", "json"))["items"])  # fmt: skip
    print(
        f"""
The demo is running. Explore it:
  export KUBECONFIG={kubeconfig}
  {kubectl} get virtfleet -A
  {kubectl} explain virtualmachinepools.virtfleet.io.spec
Operator health: {health}; metrics: {metrics}
Logs: {STATE}/operator.log, {STATE}/twin.log (simulated KubeVirt), {STATE}/cluster/logs/.
Stop everything with: make demo-stop
"""
    )


def _follow_plans(run_kubectl: Callable[..., str], timeout: float = 300) -> None:
    """Print each plan's progress until every plan has ended (or is a finished dry run)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        plans = json.loads(run_kubectl("get", "migrationplans.virtfleet.io", "-A", "-o", "json"))["items"]
        lines = []
        for plan in plans:
            status = plan.get("status", {})
            lines.append(
                f"  {plan['metadata']['name']:<20} {status.get('phase', '-'):<9} {status.get('progress', '')}"
                f" estimated {status.get('estimatedMakespanSeconds')} s, remaining {status.get('estimatedRemainingSeconds')} s"
            )
        text = "\n".join(lines)
        if text != last:
            print(text, flush=True)
            last = text
        if plans and all(p.get("status", {}).get("phase") in ("Planned", "Succeeded", "Failed", "Cancelled")
                         for p in plans):  # fmt: skip
            break
        time.sleep(1)
    print(run_kubectl("get", "migrationplans.virtfleet.io", "-A"))


def _ready(pool: dict[str, object]) -> bool:
    status = pool.get("status") or {}
    assert isinstance(status, dict)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def _summary(pools: list[dict[str, Any]], vmis: list[dict[str, Any]]) -> None:
    print("Pools:")
    for pool in pools:
        status = pool.get("status", {})
        over = status.get("oversubscription", {})
        print(
            f"  {pool['metadata']['name']:<10} {status.get('readyReplicas', 0)}/{pool['spec']['replicas']} ready, "
            f"revision {status.get('currentRevision')}, cpuRatio {status.get('cpuRatio')} "
            f"(effective {over.get('effectiveCpuRatio')} on {over.get('eligibleNodes')} nodes), "
            f"memoryRatio {status.get('memoryRatio')} (effective {over.get('effectiveMemoryRatio')})"
        )
    per_node: dict[str, list[str]] = {}
    for vmi in vmis:
        node = vmi.get("status", {}).get("nodeName", "(pending)")
        per_node.setdefault(node, []).append(vmi["metadata"]["name"])
    print("VMs per node (placed by the twin's simulated scheduler):")
    for node in sorted(per_node):
        print(f"  {node:<10} {len(per_node[node])}: {', '.join(sorted(per_node[node]))}")


def down() -> None:
    stopped = []
    for name in ("operator", "twin", "localcluster"):
        pid_file = STATE / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        pid_file.unlink()
    _say(f"stopped: {', '.join(stopped) or 'nothing was running'}")


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
