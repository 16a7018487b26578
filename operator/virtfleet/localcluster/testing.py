"""A control plane for a test session: the local one, or any cluster KUBECONFIG names.

Set VIRTFLEET_USE_EXISTING_CLUSTER=1 (with KUBECONFIG) to run the suites against a real cluster such as
kind with KubeVirt installed; virtfleet's CRDs are applied there, KubeVirt's are expected to exist.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from virtfleet.localcluster.cluster import ControlPlaneError, LocalCluster

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "crds"
KUBEVIRT_CRDS = REPO / "e2e" / "kubevirt-crds"


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
    import sys

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
            process.terminate()
            process.wait(timeout=20)
    text = log.read_text()
    if "Traceback" in text:
        raise ControlPlaneError(f"the twin logged a traceback:\n{text[-3000:]}")


def promtool() -> Path:
    """promtool from Debian's prometheus package (hack/promtool/get.sh, cached after the first call)."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "promtool" / "get.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"hack/promtool/get.sh failed: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])
