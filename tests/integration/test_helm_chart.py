"""The Helm charts, for real: lint, render against the API server, install into the local control plane,
and prove as the operator's own ServiceAccount (a token from the TokenRequest API) that it holds exactly
the rights docs/rbac.md lists, is refused what it must not do, and can run the operator."""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_pools import pool, settled, template
from twin_helpers import apply, get_json, wait_for

from virtfleet.localcluster import LocalCluster
from virtfleet.localcluster.testing import running_operator

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "virtfleet"
CRD_CHART = REPO / "charts" / "virtfleet-crds"
RBAC_DOC = REPO / "docs" / "rbac.md"
VIRTFLEET_CRDS = (
    "migrationplans.virtfleet.io",
    "virtualmachinepools.virtfleet.io",
    "vmtemplates.virtfleet.io",
)
KOPF_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
CLUSTER_SCOPED = {
    "nodes",
    "namespaces",
    "customresourcedefinitions",
    "migrationpolicies",
    "clusterkopfpeerings",
}
# The twin's nodes for the operator run; pools from test_pools.pool() select role=general.
FLEET: dict[str, Any] = {
    "timeScale": 0.02,
    "defaults": {"bootSeconds": 2},
    "nodes": [{"name": "helm", "count": 2, "cpu": 32, "memory": "128Gi", "labels": {"role": "general"}}],
}


# -- helpers ---------------------------------------------------------------------------------------------


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = cluster.state_dir / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), *args], capture_output=True, text=True, env=env, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def render(cluster: LocalCluster, chart: Path, namespace: str, *values: str) -> str:
    return helm(cluster, "template", "vf", str(chart), "--namespace", namespace, *values).stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def create_namespace(cluster: LocalCluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


@dataclass(frozen=True)
class Release:
    """An installed operator chart and a token for its ServiceAccount."""

    name: str
    namespace: str
    service_account: str
    token: str
    kubeconfig: Path


def install(cluster: LocalCluster, name: str, namespace: str, *values: str) -> Release:
    helm(cluster, "install", name, str(CHART), "--namespace", namespace, *values)
    service_account = f"{name}-virtfleet"
    token = cluster.kubectl(
        "create", "token", service_account, "-n", namespace, "--duration=30m"
    ).stdout.strip()
    kubeconfig = cluster.state_dir / f"{name}-{namespace}.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca)},
                    }
                ],
                "users": [{"name": service_account, "user": {"token": token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": service_account}}],
                "current-context": "local",
            }
        )
    )
    return Release(name, namespace, service_account, token, kubeconfig)


def as_release(cluster: LocalCluster, release: Release, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl authenticated only by the ServiceAccount's token."""
    return subprocess.run(
        [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={release.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def status_of(cluster: LocalCluster, release: Release, method: str, path: str, body: Any = None) -> int:
    """The HTTP status of one request authenticated by the token alone. Writes are dry runs. The API server
    authorizes before it looks anything up, so a missing object answers 404 only to who may act on it."""
    headers = {"Authorization": f"Bearer {release.token}"}
    if method == "PATCH":
        headers["Content-Type"] = "application/merge-patch+json"
    elif body is not None:
        headers["Content-Type"] = "application/json"
    if method != "GET":
        path += "?dryRun=All"
    request = urllib.request.Request(
        cluster.server + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers=headers,
    )
    context = ssl.create_default_context(cafile=str(cluster.ca))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


CORDON = {"spec": {"unschedulable": True}}


def _review(cluster: LocalCluster, token: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": kind, "spec": spec}
    request = urllib.request.Request(
        f"{cluster.server}/apis/authorization.k8s.io/v1/{kind.lower()}s",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(cluster.ca))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        status: dict[str, Any] = json.load(response)["status"]
        return status


def allowed(
    cluster: LocalCluster,
    release: Release,
    verb: str,
    group: str,
    resource: str,
    namespace: str = "",
    name: str = "",
) -> bool:
    """SelfSubjectAccessReview as the release's ServiceAccount; resource may be "plural/subresource"."""
    plural, _, subresource = resource.partition("/")
    attributes = {
        "verb": verb,
        "group": group,
        "resource": plural,
        "subresource": subresource,
        "namespace": namespace,
        "name": name,
    }
    return bool(
        _review(cluster, release.token, "SelfSubjectAccessReview", {"resourceAttributes": attributes}).get(
            "allowed"
        )
    )


Grant = tuple[str, str, str]  # (group, resource, verb); resource "pods/exec", or "nodes[name]"


def granted(cluster: LocalCluster, release: Release, namespace: str) -> set[Grant]:
    """Every (group, resource, verb) the ServiceAccount holds in `namespace` (SelfSubjectRulesReview),
    less the self-review rights every authenticated identity has."""
    status = _review(cluster, release.token, "SelfSubjectRulesReview", {"namespace": namespace})
    rights: set[Grant] = set()
    for rule in status["resourceRules"]:
        groups = rule.get("apiGroups", [])
        if {"authorization.k8s.io", "authentication.k8s.io"} & set(groups):
            continue
        names = rule.get("resourceNames")
        for group in groups:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    rights.add((group, f"{resource}[{','.join(names)}]" if names else resource, verb))
    return rights


@dataclass(frozen=True)
class Row:
    """One row of docs/rbac.md's table."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    scope: str  # "cluster", "namespace" or "release namespace"
    when: str
    named: bool  # only the peering object named operator.peeringName

    def applies(self, *, cordon: bool, peering: bool, namespaced: bool) -> bool:
        conditions = {
            "drain.cordonNodes": cordon,
            "operator.standalone: false": peering,
            "operator.watchNamespaces": namespaced,
            "all namespaces": not namespaced,
        }
        return all(value for key, value in conditions.items() if key in self.when)


def documented_rows() -> list[Row]:
    rows = []
    for line in RBAC_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`"):
            continue
        group = cells[0].strip("`").replace('""', "")
        resource = re.findall(r"`([^`]+)`", cells[1])[0]
        verbs = tuple(v.strip() for v in cells[2].split(","))
        rows.append(Row(group, resource, verbs, cells[3], cells[4], named="only the" in cells[1]))
    assert len(rows) > 15, "docs/rbac.md's table was not found"
    return rows


def expected(scope: str, config: dict[str, bool], peering_name: str = "virtfleet") -> set[Grant]:
    """The rights docs/rbac.md's rows of one scope grant for these values (cordon, peering, namespaced)."""
    rights: set[Grant] = set()
    for row in documented_rows():
        if row.scope == scope and row.applies(**config):
            resource = f"{row.resource}[{peering_name}]" if row.named else row.resource
            rights |= {(row.group, resource, verb) for verb in row.verbs}
    return rights


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd_release(cluster: LocalCluster) -> Iterator[str]:
    """The CRD chart, installed for real. The session already applied crds/, so Helm takes the CRDs over
    (--take-ownership): what a user does who installed crds/ by hand before adopting the chart."""
    namespace = create_namespace(cluster, "vf-crds")
    helm(
        cluster,
        "install",
        "virtfleet-crds",
        str(CRD_CHART),
        "--namespace",
        namespace,
        "--take-ownership",
        "--set",
        "kopfPeering.enabled=true",
    )
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        *(f"crd/{n}" for n in VIRTFLEET_CRDS + KOPF_CRDS),
    )
    yield namespace
    helm(cluster, "uninstall", "virtfleet-crds", "--namespace", namespace, check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture(scope="module")
def clusterwide(cluster: LocalCluster, crd_release: str) -> Iterator[Release]:
    """The chart with its defaults: all namespaces, standalone, cordoning allowed."""
    namespace = create_namespace(cluster, "vf-op")
    release = install(cluster, "vfa", namespace)
    yield release
    helm(cluster, "uninstall", release.name, "--namespace", namespace, check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture(scope="module")
def namespaced(cluster: LocalCluster, crd_release: str) -> Iterator[tuple[Release, str]]:
    """The chart watching one namespace (Roles there), with drain.cordonNodes=false."""
    home, watched = create_namespace(cluster, "vf-home"), create_namespace(cluster, "vf-watched")
    release = install(
        cluster,
        "vfb",
        home,
        "--set",
        f"operator.watchNamespaces={{{watched}}}",
        "--set",
        "drain.cordonNodes=false",
    )
    yield release, watched
    helm(cluster, "uninstall", release.name, "--namespace", home, check=False)
    for namespace in (home, watched):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


# -- the charts as files ----------------------------------------------------------------------------------


def test_crd_chart_carries_the_generated_crds_verbatim() -> None:
    """charts/virtfleet-crds/files/crds is a byte-for-byte copy of crds/ (regenerate: `make crds`)."""
    copies = CRD_CHART / "files" / "crds"
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copied = {p.name: p.read_bytes() for p in copies.glob("*.yaml")}
    assert sorted(copied) == sorted(generated), "run: cp crds/*.yaml charts/virtfleet-crds/files/crds/"
    stale = [name for name in generated if copied[name] != generated[name]]
    assert not stale, f"stale in {copies}: {stale}; run: cp crds/*.yaml charts/virtfleet-crds/files/crds/"


LINT_VALUES = {
    "defaults": [],
    "namespaced-peering": [
        "--set",
        "operator.watchNamespaces={team-a,team-b}",
        "--set",
        "operator.standalone=false",
        "--set",
        "drain.cordonNodes=false",
    ],
    "monitoring": [
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.dashboard.enabled=true",
    ],
    "no-metrics": [
        "--set",
        "metrics.enabled=false",
        "--set",
        "rbac.create=false",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=existing",
    ],
}


@pytest.mark.parametrize("variant", sorted(LINT_VALUES))
def test_operator_chart_lints_strictly(cluster: LocalCluster, variant: str) -> None:
    result = helm(cluster, "lint", "--strict", str(CHART), *LINT_VALUES[variant])
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", [[], ["--set", "kopfPeering.enabled=true"]])
def test_crd_chart_lints_strictly(cluster: LocalCluster, values: list[str]) -> None:
    result = helm(cluster, "lint", "--strict", str(CRD_CHART), *values)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_crd_chart_renders_the_generated_crds_with_the_keep_policy(cluster: LocalCluster) -> None:
    rendered = {d["metadata"]["name"]: d for d in documents(render(cluster, CRD_CHART, "default"))}
    assert sorted(rendered) == sorted(VIRTFLEET_CRDS)  # kopf's only with kopfPeering.enabled
    for path in (REPO / "crds").glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert crd == source, f"{path.name} changed on its way through the template"
    with_kopf = documents(render(cluster, CRD_CHART, "default", "--set", "kopfPeering.enabled=true"))
    kopf = {d["metadata"]["name"]: d for d in with_kopf if d["spec"]["group"] == "kopf.dev"}
    assert sorted(kopf) == sorted(KOPF_CRDS)
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in kopf.values())
    # kopf patches `status` through the main resource: no status subresource, status kept as written.
    for crd in kopf.values():
        (version,) = crd["spec"]["versions"]
        assert "subresources" not in version
        assert version["schema"]["openAPIV3Schema"]["properties"]["status"][
            "x-kubernetes-preserve-unknown-fields"
        ]


BAD_VALUES = [
    (["--set", "replicaCount=x"], "replicaCount"),
    (["--set", "replicaCount=2"], "replicaCount"),
    (["--set", "operator.standalone=false", "--set", "replicaCount=4"], "replicaCount"),
    (["--set", "replicas=1"], "replicas"),
    (["--set", "operator.watchNamespaces={Not_A_Namespace}"], "watchNamespaces"),
    (["--set", "operator.defaultCpuRatio=0.5"], "defaultCpuRatio"),
    (["--set", "metrics.port=70000"], "metrics/port"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "drain.cordonNodes=yes-please"], "cordonNodes"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_values_schema_rejects_bad_values_naming_the_field(
    cluster: LocalCluster, values: list[str], field: str
) -> None:
    result = helm(cluster, "template", "vf", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr and field in result.stderr, result.stderr


def _deployment(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in manifests if d["kind"] == "Deployment")


def test_deployment_runs_locked_down(cluster: LocalCluster) -> None:
    deployment = _deployment(documents(render(cluster, CHART, "virtfleet")))
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert (
        container["image"]
        == "ghcr.io/virtfleet/virtfleet:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    )
    assert container["args"] == ["--standalone"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VIRTFLEET_NAMESPACES"] == ""
    assert env["VIRTFLEET_METRICS_PORT"] == "9090"
    assert env["VIRTFLEET_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert (
        env["VIRTFLEET_KUBEVIRT_PARALLEL_MIGRATIONS"],
        env["VIRTFLEET_KUBEVIRT_PARALLEL_OUTBOUND_PER_NODE"],
    ) == ("5", "2")
    assert "POD_ID" in env
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    peering = _deployment(
        documents(
            render(
                cluster,
                CHART,
                "virtfleet",
                "--set",
                "operator.standalone=false",
                "--set",
                "operator.peeringName=fleet",
                "--set",
                "operator.watchNamespaces={a,b}",
                "--set",
                "metrics.enabled=false",
                "--set",
                "replicaCount=2",
            )
        )
    )
    # A hot standby: the new pod starts before the old one stops, and waits as the lower-priority peer.
    assert peering["spec"]["replicas"] == 2
    assert peering["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (container,) = peering["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--peering=fleet"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VIRTFLEET_NAMESPACES"] == "a,b" and env["VIRTFLEET_METRICS_PORT"] == "0"


def test_monitoring_objects_point_at_the_metrics_service_and_ship_the_alerts(cluster: LocalCluster) -> None:
    manifests = documents(
        render(
            cluster,
            CHART,
            "virtfleet",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.dashboard.enabled=true",
        )
    )
    by_kind = {d["kind"]: d for d in manifests}
    service, monitor = by_kind["Service"], by_kind["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["honorLabels"] is True  # the operator's own `namespace` label wins
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert by_kind["PrometheusRule"]["spec"]["groups"] == alerts["groups"]
    names = [rule["alert"] for group in alerts["groups"] for rule in group["rules"]]
    assert len(names) == len(set(names)) and all(n.startswith("Virtfleet") for n in names)
    dashboard = json.loads(by_kind["ConfigMap"]["data"]["virtfleet.json"])
    assert dashboard["uid"] == "virtfleet-overview" and dashboard["panels"]
    assert by_kind["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"


# -- against the API server -------------------------------------------------------------------------------


def test_rendered_charts_pass_server_side_dry_run(cluster: LocalCluster, crd_release: str) -> None:
    """Every variant, as the API server would take it (kopf's CRDs exist: the CRD chart installed them),
    in a namespace that warns of anything the `restricted` Pod Security Standard forbids."""
    namespace, watched = create_namespace(cluster, "vf-dry"), create_namespace(cluster, "vf-dry-w")
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted")
    try:
        variants = [
            render(cluster, CRD_CHART, namespace, "--set", "kopfPeering.enabled=true"),
            render(cluster, CHART, namespace),
            render(cluster, CHART, namespace, "--set", "operator.standalone=false"),
            render(
                cluster,
                CHART,
                namespace,
                "--set",
                f"operator.watchNamespaces={{{watched}}}",
                "--set",
                "operator.standalone=false",
                "--set",
                "drain.cordonNodes=false",
            ),
        ]
        for manifests in variants:
            result = cluster.kubectl(
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=helm-test",
                "-f",
                "-",
                input=manifests,
            )
            assert "serverside-applied (server dry run)" in result.stdout, result.stdout
            assert "PodSecurity" not in result.stderr, result.stderr
    finally:
        for name in (namespace, watched):
            cluster.kubectl("delete", "namespace", name, "--wait=false")


def test_clusterwide_service_account_holds_exactly_the_documented_rights(
    cluster: LocalCluster, clusterwide: Release
) -> None:
    config = {"cordon": True, "peering": False, "namespaced": False}
    want = expected("cluster", config) | expected("namespace", config)
    # Bound by a ClusterRoleBinding: the same rights in any namespace.
    for namespace in (clusterwide.namespace, "default"):
        assert granted(cluster, clusterwide, namespace) == want
    for group, resource, verb in sorted(want):
        namespace = "" if resource in CLUSTER_SCOPED else "default"
        assert allowed(cluster, clusterwide, verb, group, resource, namespace), (group, resource, verb)
    assert not allowed(
        cluster, clusterwide, "list", "", "namespaces"
    )  # all namespaces: kopf never lists them


FORBIDDEN = [
    ("list", "", "secrets", ""),
    ("get", "", "secrets", "default"),
    ("create", "", "pods", "default"),
    ("create", "", "pods/exec", "default"),
    ("get", "", "pods/exec", "default"),
    ("delete", "", "nodes", ""),
    ("patch", "", "nodes/status", ""),
    ("update", "", "nodes/status", ""),
    ("update", "", "nodes", ""),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("patch", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("update", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("delete", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("update", "virtfleet.io", "virtualmachinepools", "default"),
    ("delete", "virtfleet.io", "vmtemplates", "default"),
    ("update", "kubevirt.io", "virtualmachines", "default"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("create", "", "serviceaccounts/token", "default"),
    ("patch", "", "events", "default"),
    ("create", "events.k8s.io", "events", "default"),
]


def test_clusterwide_service_account_is_refused_what_it_must_not_do(
    cluster: LocalCluster, clusterwide: Release
) -> None:
    for verb, group, resource, namespace in FORBIDDEN:
        assert not allowed(cluster, clusterwide, verb, group, resource, namespace), (verb, group, resource)
    # The same with real requests, authenticated by nothing but the token.
    refused = as_release(cluster, clusterwide, "get", "secrets", "--all-namespaces")
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    assert status_of(cluster, clusterwide, "GET", "/api/v1/secrets") == 403
    assert status_of(cluster, clusterwide, "POST", "/api/v1/namespaces/default/pods/no-such-pod/exec") == 403
    assert status_of(cluster, clusterwide, "PATCH", "/api/v1/nodes/no-such-node", CORDON) == 404  # may cordon
    assert status_of(cluster, clusterwide, "PATCH", "/api/v1/nodes/no-such-node/status", CORDON) == 403
    assert status_of(cluster, clusterwide, "DELETE", "/api/v1/nodes/no-such-node") == 403
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    assert (
        status_of(cluster, clusterwide, "PATCH", f"{crds}/vmtemplates.virtfleet.io", {"metadata": {}}) == 403
    )
    assert status_of(cluster, clusterwide, "POST", crds, {"metadata": {"name": "x.example.com"}}) == 403
    listed = as_release(cluster, clusterwide, "get", "vmtemplates,vfpool,vfplan,vm,vmi,vmim", "-A")
    assert listed.returncode == 0, listed.stderr


def test_namespaced_release_holds_roles_only_in_its_namespaces(
    cluster: LocalCluster, namespaced: tuple[Release, str]
) -> None:
    release, watched = namespaced
    config = {"cordon": False, "peering": False, "namespaced": True}
    cluster_rights = expected("cluster", config)
    assert granted(cluster, release, watched) == cluster_rights | expected("namespace", config)
    assert granted(cluster, release, release.namespace) == cluster_rights | expected(
        "release namespace", config
    )
    assert granted(cluster, release, "default") == cluster_rights
    assert ("", "namespaces", "list") in cluster_rights  # kopf matches the watched namespaces
    assert allowed(cluster, release, "create", "kubevirt.io", "virtualmachines", watched)
    for verb, resource in (("create", "virtualmachines"), ("list", "virtualmachineinstances")):
        assert not allowed(cluster, release, verb, "kubevirt.io", resource, "default")
    assert not allowed(cluster, release, "patch", "", "nodes")  # drain.cordonNodes=false
    assert status_of(cluster, release, "PATCH", "/api/v1/nodes/no-such-node", CORDON) == 403
    refused = as_release(cluster, release, "get", "vm", "-n", "default")
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()


@contextlib.contextmanager
def operator_as(
    release: Release, log: Path, namespaces: tuple[str, ...] = (), peering: str | None = None
) -> Iterator[str]:
    """`virtfleet run` (standalone, or with kopf peering) authenticated only by the release's token;
    yields its metrics URL.
    Any request the API server refuses that identity, as logged by kopf or the operator, fails the caller."""
    env = {"VIRTFLEET_NAMESPACES": ",".join(namespaces)}
    mode = ["--peering", peering] if peering else ["--standalone"]
    try:
        with running_operator(release.kubeconfig, log, *mode, env=env, health_timeout=30) as metrics_url:
            yield metrics_url
    finally:
        # Checked even when the caller failed: a refusal is then the likely cause, so it is reported
        # first (the caller's error follows as the context).
        refusals = rbac_refusals(log.read_text())
        assert not refusals, "the API server refused the operator:\n" + "\n".join(refusals[:10])


def rbac_refusals(log: str) -> list[str]:
    """RBAC denials in a log, by kopf or the operator's client (whose JSON bodies escape the quotes).
    Other errors are not counted: objects other tests leave in terminating namespaces may fail."""
    refusals = re.findall(r'User \\?"system:serviceaccount:[^"\\]+\\?" cannot [^\n]{0,160}', log)
    return refusals + [line for line in log.splitlines() if "Not enough permissions" in line]


def test_operator_runs_under_the_clusterwide_service_account(
    cluster: LocalCluster, clusterwide: Release, twin: None, tmp_path: Path
) -> None:
    """Templates, a pool of VMs running in the twin, a dry-run migration plan and two real ones (live and
    cold), as the chart's identity."""
    namespace = create_namespace(cluster, "vf-run")
    try:
        with operator_as(clusterwide, tmp_path / "operator.log") as metrics:
            apply(cluster, template(namespace))
            apply(cluster, pool(namespace, replicas=3, cpuRatio=2))
            wait_for(lambda: settled(cluster, namespace, 3), 45, "the pool never had 3 ready VMs")
            vmi_nodes = {v["status"]["nodeName"] for v in get_json(cluster, "-n", namespace, "vmi")["items"]}
            apply(
                cluster,
                {
                    "apiVersion": "virtfleet.io/v1alpha1",
                    "kind": "MigrationPlan",
                    "metadata": {"name": "drain", "namespace": namespace},
                    "spec": {"goal": "drain", "nodes": sorted(vmi_nodes)[:1], "dryRun": True},
                },
            )
            wait_for(
                lambda: (
                    get_json(cluster, "-n", namespace, "vfplan", "drain").get("status", {}).get("phase")
                    == "Planned"
                ),
                20,
                "the plan was never planned",
            )
            # Real plans, so every write of the executor goes through this identity: cordon and uncordon,
            # the MigrationPolicy, VMI labels, migrations (live drain of one node), VM stop/pin/start (cold
            # drain of the other), and the deletion handler's clean-up.
            first, second = sorted(
                n["metadata"]["name"] for n in get_json(cluster, "nodes", "-l", "role=general")["items"]
            )
            for name, node, method in (("live", first, "live"), ("cold", second, "cold")):
                apply(cluster, {"apiVersion": "virtfleet.io/v1alpha1", "kind": "MigrationPlan",
                                "metadata": {"name": name, "namespace": namespace},
                                "spec": {"goal": "drain", "nodes": [node], "method": method, "uncordonWhenDone": True}})  # fmt: skip
                wait_for(
                    lambda name=name: get_json(cluster, "-n", namespace, "vfplan", name).get("status", {}).get("phase")
                    in ("Succeeded", "Failed"),
                    60, f"plan {name} never finished",
                )  # fmt: skip
                status = get_json(cluster, "-n", namespace, "vfplan", name)["status"]
                assert status["phase"] == "Succeeded", status
                assert not get_json(cluster, "node", node)["spec"].get("unschedulable")
            cluster.kubectl("-n", namespace, "delete", "vfplan", "--all", "--wait=true", "--timeout=30s")
            with urllib.request.urlopen(metrics, timeout=5) as response:
                scraped = response.read().decode()
            assert (
                f'virtfleet_pool_replicas{{namespace="{namespace}",pool="pool",state="ready"}} 3.0' in scraped
            )
            revisions = get_json(cluster, "-n", namespace, "controllerrevisions")["items"]
            assert revisions, "the template's revision was never stored"
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_operator_runs_under_the_namespaced_service_account(
    cluster: LocalCluster, namespaced: tuple[Release, str], tmp_path: Path
) -> None:
    release, watched = namespaced
    with operator_as(release, tmp_path / "operator.log", namespaces=(watched,)):
        apply(cluster, template(watched))

        def ready() -> bool:
            status = get_json(cluster, "-n", watched, "vmtemplate", "small").get("status", {})
            return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

        wait_for(ready, 20, "the template never became Ready")


def test_operator_runs_with_kopf_peering(cluster: LocalCluster, crd_release: str, tmp_path: Path) -> None:
    """operator.standalone=false: the chart creates the peering object and grants exactly the peering
    verbs; the operator records itself there and works (mandatory peering pauses without them)."""
    home, watched = create_namespace(cluster, "vf-peer"), create_namespace(cluster, "vf-peer-w")
    release = install(cluster, "vfc", home, "--set", "operator.standalone=false")
    try:
        config = {"cordon": True, "peering": True, "namespaced": False}
        assert granted(cluster, release, home) == expected("cluster", config) | expected("namespace", config)
        assert ("kopf.dev", "clusterkopfpeerings[virtfleet]", "patch") in granted(cluster, release, home)
        assert not allowed(cluster, release, "patch", "kopf.dev", "clusterkopfpeerings", name="someone-else")
        with operator_as(release, tmp_path / "operator.log", peering="virtfleet"):
            apply(cluster, template(watched))

            def ready() -> bool:
                status = get_json(cluster, "-n", watched, "vmtemplate", "small").get("status", {})
                return any(
                    c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
                )

            wait_for(ready, 20, "the template never became Ready: is the operator paused?")
            peers = get_json(cluster, "clusterkopfpeering", "virtfleet").get("status", {})
            assert len(peers) == 1, peers  # the operator's keep-alive record
    finally:
        helm(cluster, "uninstall", release.name, "--namespace", home, check=False)
        for namespace in (home, watched):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_upgrade_without_cordoning_takes_the_node_patch_away(
    cluster: LocalCluster, clusterwide: Release
) -> None:
    assert allowed(cluster, clusterwide, "patch", "", "nodes")
    helm(
        cluster,
        "upgrade",
        clusterwide.name,
        str(CHART),
        "--namespace",
        clusterwide.namespace,
        "--set",
        "drain.cordonNodes=false",
    )
    assert not allowed(cluster, clusterwide, "patch", "", "nodes")
    assert allowed(cluster, clusterwide, "list", "", "nodes")


def test_crd_chart_upgrades_and_uninstall_keeps_crds_and_objects(
    cluster: LocalCluster, crd_release: str, namespaced: tuple[Release, str]
) -> None:
    _, watched = namespaced  # holds a VMTemplate from the namespaced operator run, or gets one now
    apply(cluster, template(watched, name="kept"))
    upgraded = helm(
        cluster,
        "upgrade",
        "virtfleet-crds",
        str(CRD_CHART),
        "--namespace",
        crd_release,
        "--set",
        "kopfPeering.enabled=true",
    )
    assert "has been upgraded" in upgraded.stdout
    helm(cluster, "uninstall", "virtfleet-crds", "--namespace", crd_release)
    for name in VIRTFLEET_CRDS + KOPF_CRDS:
        crd = get_json(cluster, "crd", name)
        assert crd["metadata"].get("deletionTimestamp") is None, name
    assert get_json(cluster, "-n", watched, "vmtemplate", "kept")["metadata"]["name"] == "kept"


def test_uninstalling_the_operator_removes_its_rights(cluster: LocalCluster, clusterwide: Release) -> None:
    helm(cluster, "uninstall", clusterwide.name, "--namespace", clusterwide.namespace)
    for kind in ("clusterrole", "clusterrolebinding"):
        gone = cluster.kubectl("get", kind, f"{clusterwide.name}-virtfleet", check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr
    # The ServiceAccount is gone: its token is refused (at once, or once the API server's short token
    # cache expires) and, until then, no longer bound to any right.
    try:
        still: bool | int = allowed(cluster, clusterwide, "list", "", "nodes")
    except urllib.error.HTTPError as error:
        still = error.code
    assert still in (False, 401)
