"""A kind cluster with the operator installed from its image by its Helm charts.

    python3 hack/kind/cluster.py up      # engine, images, 3-node cluster, KubeVirt CRDs, both charts
    python3 hack/kind/cluster.py down    # delete the cluster; stop the engine if `up` started it
    python3 hack/kind/cluster.py kubeconfig  # print the path of the cluster's kubeconfig

`up` is idempotent: a running cluster is reused and the charts are upgraded in place. The kubeconfig is
written to ~/.cache/virtfleet/kind/kubeconfig. Settings: VIRTFLEET_KIND_NAME (default virtfleet).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kubevirt"))

import build
import engine
import kubevirt_build
from common import CACHE, REPO, StepFailedError, command_line, env, log, output, run

NAME = os.environ.get("VIRTFLEET_KIND_NAME", "virtfleet")
STATE = CACHE / "kind"
KUBECONFIG = STATE / "kubeconfig"
OPERATOR_NAMESPACE = "virtfleet-system"
RELEASE = "virtfleet"
KUBEVIRT_CRDS = REPO / "e2e" / "kubevirt-crds" / "v1.9.0"  # copied from ../shared
LOG = CACHE / "logs" / "kind-cluster.log"

CLUSTER_CONFIG = """\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  # One zone per worker, as a cloud cluster labels its nodes: example 02 spreads its pool over zones.
  - role: worker
    labels: {topology.kubernetes.io/zone: zone-a}
  - role: worker
    labels: {topology.kubernetes.io/zone: zone-b}
"""


def controlplane_bin() -> Path:
    """kubectl and helm at the project's pinned versions (hack/controlplane/build.sh caches them)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack/controlplane/build.sh")],
        env=env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise StepFailedError(f"building kubectl and helm failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def kind_bin() -> Path:
    return build.binaries() / "kind"


def kubectl(bin_dir: Path, *args: str, step: str, stdin: bytes | None = None) -> None:
    run(
        "cluster",
        step,
        [str(bin_dir / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
        logfile=LOG,
        stdin=stdin,
    )


def cluster_exists(kind: Path) -> bool:
    return NAME in output([str(kind), "get", "clusters"], check=False).split()


def healthy(kind: Path, bin_dir: Path) -> bool:
    """Every node container runs and the API server answers (after a reboot or an engine restart the
    containers exist but are stopped; kind cannot restart a cluster, so such a one is recreated)."""
    nodes = output([str(kind), "get", "nodes", "--name", NAME], check=False).split()
    if not nodes:
        return False
    states = output(["docker", "inspect", "-f", "{{.State.Running}}", *nodes], check=False).split()
    if states != ["true"] * len(nodes):
        return False
    run(
        "cluster",
        "export kubeconfig",
        [str(kind), "export", "kubeconfig", "--name", NAME, "--kubeconfig", str(KUBECONFIG)],
        logfile=LOG,
    )
    probe = subprocess.run(
        [
            str(bin_dir / "kubectl"),
            f"--kubeconfig={KUBECONFIG}",
            "get",
            "--raw",
            "/readyz",
            "--request-timeout=10s",
        ],
        env=env(),
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def kubevirt_installed(bin_dir: Path) -> bool:
    return bool(
        output(
            [
                str(bin_dir / "kubectl"),
                f"--kubeconfig={KUBECONFIG}",
                "get",
                "namespace",
                "kubevirt",
                "-o",
                "name",
            ],
            check=False,
        ).strip()
    )


def up(kubevirt: bool = False) -> None:
    """The cluster with the operator installed by its charts. kubevirt=False: KubeVirt's v1.9.0 CRDs and no
    KubeVirt runtime (e2e/kind); kubevirt=True: ready for hack/kubevirt/install.py, which installs KubeVirt
    (its virt-operator brings its own CRDs). Either way the nodes carry KubeVirt's images."""
    STATE.mkdir(parents=True, exist_ok=True)
    bin_dir = controlplane_bin()
    built, node, operator = build.all_images(kubevirt_build.archives())
    kind = built / "kind"
    started = time.monotonic()
    if cluster_exists(kind) and not healthy(kind, bin_dir):
        log("cluster", f"kind cluster {NAME} exists but does not run: deleting it")
        run("cluster", "kind delete cluster", [str(kind), "delete", "cluster", "--name", NAME], logfile=LOG)
    if cluster_exists(kind) and not kubevirt and kubevirt_installed(bin_dir):
        log("cluster", f"kind cluster {NAME} runs KubeVirt, and this suite needs it without: recreating it")
        run("cluster", "kind delete cluster", [str(kind), "delete", "cluster", "--name", NAME], logfile=LOG)
    if cluster_exists(kind) and node not in output(["docker", "ps", "--format", "{{.Image}}"], check=False):
        log("cluster", f"kind cluster {NAME} runs an older node image: recreating it from {node}")
        run("cluster", "kind delete cluster", [str(kind), "delete", "cluster", "--name", NAME], logfile=LOG)
    if cluster_exists(kind):
        log("cluster", f"kind cluster {NAME} runs: reusing it")
    else:
        config = STATE / "cluster.yaml"
        config.write_text(CLUSTER_CONFIG)
        log("cluster", f"creating kind cluster {NAME} (1 control plane, 2 workers) from {node} (log: {LOG})")
        run(
            "cluster",
            "kind create cluster",
            [
                str(kind),
                "create",
                "cluster",
                "--name",
                NAME,
                "--image",
                node,
                "--config",
                str(config),
                "--kubeconfig",
                str(KUBECONFIG),
                "--wait",
                "5m",
                "--retain",
            ],
            logfile=LOG,
        )
    log("cluster", f"loading {operator} into the nodes")
    run(
        "cluster",
        "kind load docker-image",
        [str(kind), "load", "docker-image", operator, "--name", NAME],
        logfile=LOG,
    )
    if not kubevirt:
        log("cluster", "installing KubeVirt's v1.9.0 CRDs (shared data; no KubeVirt runtime)")
        kubectl(
            bin_dir,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(KUBEVIRT_CRDS),
            step="KubeVirt CRDs",
        )
    elif not kubevirt_installed(bin_dir):
        # virt-operator creates KubeVirt's CRDs at its own version; the copied v1.9.0 ones must go first.
        log("cluster", "removing the copied v1.9.0 KubeVirt CRDs before installing KubeVirt")
        kubectl(bin_dir, "delete", "--ignore-not-found", "-f", str(KUBEVIRT_CRDS), step="remove copied CRDs")
    kubectl(
        bin_dir,
        "apply",
        "--server-side",
        "-f",
        "-",
        step="operator namespace",
        stdin=f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: {OPERATOR_NAMESPACE}
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
""".encode(),
    )
    helm = str(bin_dir / "helm")
    log("cluster", "installing charts/virtfleet-crds and charts/virtfleet with helm")
    run(
        "cluster",
        "helm virtfleet-crds",
        [
            helm,
            "upgrade",
            "--install",
            "virtfleet-crds",
            str(REPO / "charts/virtfleet-crds"),
            "--kubeconfig",
            str(KUBECONFIG),
            "--wait",
        ],
        logfile=LOG,
    )
    repository, tag = operator.rsplit(":", 1)
    run(
        "cluster",
        "helm virtfleet",
        [
            helm,
            "upgrade",
            "--install",
            RELEASE,
            str(REPO / "charts/virtfleet"),
            "--kubeconfig",
            str(KUBECONFIG),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout",
            "5m",
        ],
        logfile=LOG,
    )
    kubectl(
        bin_dir,
        "-n",
        OPERATOR_NAMESPACE,
        "rollout",
        "status",
        f"deployment/{RELEASE}",
        "--timeout=5m",
        step="operator Ready",
    )
    log("cluster", f"ready after {time.monotonic() - started:.0f}s of cluster work")
    print(
        output(
            [str(bin_dir / "kubectl"), f"--kubeconfig={KUBECONFIG}", "get", "nodes,pods", "-A", "-o", "wide"]
        )
    )
    print(
        f"The operator runs in namespace {OPERATOR_NAMESPACE} as the chart's ServiceAccount.\n"
        f"  export KUBECONFIG={KUBECONFIG}\n"
        f"  export PATH={bin_dir}:$PATH   # the pinned kubectl and helm\n"
        "  kubectl apply --server-side -f examples/01-template -f examples/02-oversubscribed-pool\n"
        "  make kind-e2e                  # the e2e suite against this cluster\n"
        "  make kind-down                 # delete it"
    )


def down() -> None:
    kind = kind_bin()
    if cluster_exists(kind):
        log("cluster", f"deleting kind cluster {NAME}")
        run("cluster", "kind delete cluster", [str(kind), "delete", "cluster", "--name", NAME], logfile=LOG)
    engine.down()


if __name__ == "__main__":
    sys.exit(
        command_line(
            __doc__, sys.argv, {"up": up, "down": down, "kubeconfig": lambda: KUBECONFIG}, default=""
        )
    )
