"""A control plane for a test session: the local one, or any cluster KUBECONFIG names.

Set VIRTFLEET_USE_EXISTING_CLUSTER=1 (with KUBECONFIG) to run the suites against a real cluster such as
kind with KubeVirt installed; virtfleet's CRDs are applied there, KubeVirt's are expected to exist.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from virtfleet.localcluster.cluster import ControlPlaneError, LocalCluster, free_port

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "crds"
KUBEVIRT_CRDS = REPO / "e2e" / "kubevirt-crds" / "v1.9.0"


@dataclass(frozen=True)
class SessionCluster:
    kubeconfig: Path
    kubectl_path: Path
    local: LocalCluster | None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if self.local is not None:
            return self.local.kubectl(*args, input=input, check=check)
        result = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result


@contextlib.contextmanager
def session_cluster() -> Iterator[SessionCluster]:
    """Yield a cluster with virtfleet's and KubeVirt's CRDs installed; KUBECONFIG points at it meanwhile."""
    previous = os.environ.get("KUBECONFIG")
    if os.environ.get("VIRTFLEET_USE_EXISTING_CLUSTER") == "1":
        if not previous:
            raise ControlPlaneError("VIRTFLEET_USE_EXISTING_CLUSTER=1 needs KUBECONFIG")
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ControlPlaneError("VIRTFLEET_USE_EXISTING_CLUSTER=1 needs kubectl on PATH")
        existing = SessionCluster(Path(previous), Path(kubectl), None)
        existing.kubectl("apply", "--server-side", "-f", str(CRDS))
        existing.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
        yield existing
        return
    with LocalCluster.start() as local:
        local.apply([CRDS, KUBEVIRT_CRDS])
        os.environ["KUBECONFIG"] = str(local.kubeconfig)
        try:
            yield SessionCluster(local.kubeconfig, local.bin_dir / "kubectl", local)
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous


@contextlib.contextmanager
def twin_process(kubeconfig: Path, fleet: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`virtfleet twin run` (the simulated KubeVirt) as its own process, stopped afterwards; a traceback
    in its log fails the caller."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "virtfleet", "twin", "run", "--fleet", str(fleet)],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            stop(process)
    text = log.read_text()
    if "Traceback" in text:
        raise ControlPlaneError(f"the twin logged a traceback:\n{text[-3000:]}")


def stop(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path, log: Path, *args: str, env: Mapping[str, str] | None = None, health_timeout: float = 60
) -> Iterator[str]:
    """`virtfleet run *args` as users start it, once its liveness endpoint answers; yields its metrics
    URL and stops it afterwards. Exiting early or never becoming healthy fails the caller with its log."""
    health = f"http://127.0.0.1:{free_port()}/healthz"
    metrics_port = free_port()
    environment = {
        **os.environ,
        **(env or {}),
        "KUBECONFIG": str(kubeconfig),
        "VIRTFLEET_METRICS_PORT": str(metrics_port),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "virtfleet", "run", "--liveness", health, *args],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + health_timeout
        while not _answers(health):
            if process.poll() is not None:
                raise ControlPlaneError(f"the operator exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"the operator never became healthy:\n{log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        stop(process)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def promtool() -> Path:
    """promtool from Debian's prometheus package (hack/promtool/get.sh, cached after the first call)."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "promtool" / "get.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"hack/promtool/get.sh failed: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])
