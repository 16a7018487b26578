"""Helpers of the e2e suite against a real cluster (e2e/kind): the in-cluster operator, waiting,
objects the tests apply, and Prometheus' scrape configuration for the chart's ServiceMonitor."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from virtfleet.localcluster.testing import SessionCluster

REPO = Path(__file__).resolve().parents[2]
CAPACITY_NAMESPACE = "e2e-capacity"
T = TypeVar("T")


class Operator:
    """The in-cluster operator as its Helm release made it."""

    def __init__(self, cluster: SessionCluster) -> None:
        self.cluster = cluster
        self.namespace = os.environ.get("VIRTFLEET_OPERATOR_NAMESPACE", "virtfleet-system")
        self.release = os.environ.get("VIRTFLEET_OPERATOR_RELEASE", "virtfleet")

    def pods(self) -> list[dict[str, Any]]:
        listing = self.cluster.kubectl(
            "-n",
            self.namespace,
            "get",
            "pods",
            "-l",
            f"app.kubernetes.io/instance={self.release}",
            "-o",
            "json",
        )
        pods: list[dict[str, Any]] = json.loads(listing.stdout)["items"]
        return pods

    def ready_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.pods()
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        helm = os.environ.get("VIRTFLEET_HELM") or shutil.which("helm")
        assert helm, "helm is needed (VIRTFLEET_HELM or PATH)"
        result = subprocess.run(
            [helm, *args, "--kubeconfig", str(self.cluster.kubeconfig)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result

    def values(self) -> dict[str, Any]:
        out = self.helm("get", "values", self.release, "-n", self.namespace, "-o", "json").stdout
        values: dict[str, Any] = json.loads(out) or {}
        return values


@contextmanager
def scratch_namespace(cluster: SessionCluster, prefix: str, wait: bool = False) -> Iterator[str]:
    """A namespace of one test's own, deleted afterwards with everything the operator made in it; `wait`
    holds the next test back until its VMs are gone (on real KubeVirt they hold node capacity)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl(
            "delete", "namespace", name, "--timeout=300s" if wait else "--wait=false", check=False
        )


def record(results: Path, **figures: Any) -> None:
    """Keep a measured figure (merged into one JSON file) and print it for the run's log."""
    data = json.loads(results.read_text()) if results.exists() else {}
    data.update(figures)
    results.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures))


def wait_for(probe: Callable[[], T | None], timeout: float, message: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:  # an empty result ({} VMs) can be the answer
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} (after {timeout:.0f} s; last: {last!r})")


def get(cluster: SessionCluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    args = ["-n", namespace] if namespace else []
    found: dict[str, Any] = json.loads(cluster.kubectl(*args, "get", kind, name, "-o", "json").stdout)
    return found


def items(cluster: SessionCluster, kind: str, namespace: str, *selector: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl("-n", namespace, "get", kind, *selector, "-o", "json")
    found: list[dict[str, Any]] = json.loads(listing.stdout)["items"]
    return found


class Prometheus:
    """Debian's prometheus, scraping the in-cluster operator as the chart's ServiceMonitor describes."""

    def __init__(self, url: str, config: dict[str, Any], started: float) -> None:
        self.url = url
        self.config = config
        self.started = started

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]


def service_monitor(operator: Operator) -> dict[str, Any]:
    """The release's ServiceMonitor as the chart renders it with serviceMonitor.enabled."""
    values = REPO / "charts" / "virtfleet"
    rendered = operator.helm(
        "template", operator.release, str(values), "-n", operator.namespace,
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", f"image.repository={operator.values()['image']['repository']}",
    ).stdout  # fmt: skip
    found = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ServiceMonitor"]
    assert len(found) == 1, rendered
    monitor: dict[str, Any] = found[0]
    return monitor


def prometheus_config(monitor: dict[str, Any], kubeconfig: Path, work: Path) -> dict[str, Any]:
    """The scrape job the Prometheus Operator generates for the chart's ServiceMonitor (interval,
    timeout, path, honorLabels, target labels), reaching the pods through the API server's proxy: the
    pod network is not routed to this machine. Debian's prometheus is built without Kubernetes service
    discovery, so `ScrapeTargets` writes the targets that discovery would find to a file_sd file."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    secrets = work / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    files = {
        "ca.crt": cluster["certificate-authority-data"],
        "client.crt": user["client-certificate-data"],
        "client.key": user["client-key-data"],
    }
    for name, data in files.items():
        (secrets / name).write_bytes(base64.b64decode(data))
        (secrets / name).chmod(0o600)
    (endpoint,) = monitor["spec"]["endpoints"]
    meta = monitor["metadata"]
    return {
        "global": {"evaluation_interval": "15s"},
        "rule_files": [str(REPO / "charts" / "virtfleet" / "files" / "alerts.yaml")],
        "scrape_configs": [
            {
                "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/0",
                "honor_labels": endpoint.get("honorLabels", False),
                "scrape_interval": endpoint["interval"],
                "scrape_timeout": endpoint["scrapeTimeout"],
                "scheme": "https",
                "tls_config": {
                    "ca_file": str(secrets / "ca.crt"),
                    "cert_file": str(secrets / "client.crt"),
                    "key_file": str(secrets / "client.key"),
                },
                "file_sd_configs": [{"files": [str(work / "targets.json")], "refresh_interval": "5s"}],
            }
        ],
    }


def scrape_targets(cluster: SessionCluster, monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """What Kubernetes endpoints discovery plus the Prometheus Operator's relabelling yield for the
    ServiceMonitor: one target per ready endpoint of each selected Service's named port."""
    server = urllib.parse.urlparse(
        yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(monitor["spec"]["selector"]["matchLabels"].items()))
    groups = []
    for namespace in monitor["spec"]["namespaceSelector"]["matchNames"]:
        services = json.loads(
            cluster.kubectl("-n", namespace, "get", "services", "-l", selector, "-o", "json").stdout
        )
        for service in services["items"]:
            name = service["metadata"]["name"]
            slices = json.loads(
                cluster.kubectl(
                    "-n",
                    namespace,
                    "get",
                    "endpointslices",
                    "-l",
                    f"kubernetes.io/service-name={name}",
                    "-o",
                    "json",
                ).stdout
            )["items"]
            for piece in slices:
                port = next(
                    (p["port"] for p in piece.get("ports") or [] if p.get("name") == endpoint["port"]), None
                )
                for ep in piece.get("endpoints") or []:
                    pod = (ep.get("targetRef") or {}).get("name")
                    if port is None or not pod or ep.get("conditions", {}).get("ready") is False:
                        continue
                    groups.append(
                        {
                            "targets": [server.netloc],
                            "labels": {
                                "__metrics_path__": f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy"
                                + endpoint.get("path", "/metrics"),
                                "namespace": namespace,
                                "service": name,
                                "pod": pod,
                                "container": "virtfleet",
                                "endpoint": endpoint["port"],
                            },
                        }
                    )
    return groups


def answers(prom: Prometheus) -> bool:
    try:
        prom.api("status/buildinfo")
    except OSError:
        return False
    return True


def template(namespace: str, name: str = "tiny", cores: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VMTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "cpu": {"sockets": 1, "cores": cores, "threads": 1, "policy": "shared"},
            "memory": {"guest": "128Mi"},
            "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}],
            "interfaces": [{"name": "default", "type": "nat"}],
        },
    }


def pool(namespace: str, name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "templateRef": {"name": "tiny"}, **spec},
    }


def apply(cluster: SessionCluster, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(objects))


def observed(obj: dict[str, Any]) -> bool:
    return obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def ready_template(cluster: SessionCluster, namespace: str, name: str = "tiny") -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, "vmtemplate", name, namespace)
        ready = condition(obj, "Ready")
        return obj if observed(obj) and ready and ready["status"] == "True" else None

    return wait_for(probe, 120, f"VMTemplate {namespace}/{name} never became Ready")


def pool_status(cluster: SessionCluster, namespace: str, name: str, want: int) -> dict[str, Any]:
    """The pool's status once the operator has seen its generation and made `want` VMs."""

    def probe() -> dict[str, Any] | None:
        obj = get(cluster, "vfpool", name, namespace)
        vms = items(cluster, "vm", namespace, "-l", f"virtfleet.io/pool={name}")
        return obj if observed(obj) and obj["status"].get("replicas") == want == len(vms) else None

    return wait_for(probe, 180, f"pool {namespace}/{name} never had {want} VMs")


def worker_nodes(cluster: SessionCluster) -> list[dict[str, Any]]:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return [
        n
        for n in nodes
        if not any(t["effect"] in ("NoSchedule", "NoExecute") for t in n["spec"].get("taints", []))
        and not n["spec"].get("unschedulable")
    ]
