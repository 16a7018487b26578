"""`make demo`: a local control plane, the operator and examples/, left running for you to explore.

up:   start everything in the background (state in .demo/), apply examples/, print a summary.
down: stop what `up` started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

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
    ready_file = STATE / "kubeconfig-path"
    ready_file.unlink(missing_ok=True)
    _say("starting the local control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster_pid = _spawn(
        "localcluster",
        [PYTHON, "-m", "virtfleet", "localcluster", "--state-dir", str(STATE / "cluster"),
         "--apply", str(REPO / "crds"), "--apply", str(REPO / "e2e" / "kubevirt-crds"),
         "--ready-file", str(ready_file)],
    )  # fmt: skip
    _wait("the control plane", ready_file.exists, cluster_pid, "localcluster.log")
    kubeconfig = ready_file.read_text().strip()
    kubectl = str(Path(os.environ["VIRTFLEET_BIN_DIR"]) / "kubectl")

    def run_kubectl(*args: str) -> str:
        return subprocess.run(
            [kubectl, f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, check=True
        ).stdout

    _say("starting the operator: virtfleet run --standalone")
    health = "http://127.0.0.1:18080/healthz"
    operator_pid = _spawn(
        "operator",
        [PYTHON, "-m", "virtfleet", "run", "--standalone", "--liveness", health],
        env={"KUBECONFIG": kubeconfig},
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(health, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    _wait("the operator", healthy, operator_pid, "operator.log")
    examples = sorted(p for p in (REPO / "examples").iterdir() if p.is_dir())
    for folder in examples:
        _say(f"applying examples/{folder.name}")
        print(run_kubectl("apply", "--server-side", "-f", str(folder)), end="")

    _say("waiting for the operator to report on every object")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = json.loads(run_kubectl("get", "virtfleet", "-A", "-o", "json"))["items"]
        pending = [
            i for i in items if i.get("status", {}).get("observedGeneration") != i["metadata"]["generation"]
        ]
        if not pending:
            break
        time.sleep(0.5)
    print(run_kubectl("get", "virtfleet", "-A", "-o", "wide"))
    for item in json.loads(run_kubectl("get", "virtfleet", "-A", "-o", "json"))["items"]:
        for condition in item.get("status", {}).get("conditions", []):
            print(
                f"  {item['kind']}/{item['metadata']['name']}: {condition['type']}={condition['status']}"
                f" ({condition['reason']}) {condition['message']}"
            )
    print(
        f"""
The demo is running. Explore it:
  export KUBECONFIG={kubeconfig}
  {kubectl} get virtfleet -A
  {kubectl} explain virtualmachinepools.virtfleet.io.spec
Operator health: {health}; logs in {STATE}/operator.log and {STATE}/cluster/logs/.
Stop everything with: make demo-stop
"""
    )


def down() -> None:
    stopped = []
    for name in ("operator", "localcluster"):
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
