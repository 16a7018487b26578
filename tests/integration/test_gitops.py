"""GitOps: what Argo CD and Flux see of our kinds.

- Health: kstatus (sigs.k8s.io/cli-utils, what Flux's health checks and `kubectl`-style waiters use) is run
  as a real Go binary (hack/kstatus) on the objects the API server returns.
- Server-side apply: re-applying the same manifests writes nothing, and the operator owns no field under
  .spec, so it never fights the GitOps controller that applied them.
- Discovery: `kubectl get virtfleet` lists every kind; `kubectl explain` describes every spec field.

See docs/gitops.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner
from twin_helpers import get_json, wait_for

from virtfleet.localcluster import LocalCluster
from virtfleet.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
KSTATUS_BUILD = REPO / "hack" / "kstatus" / "build.sh"
GITOPS_MANAGER = "argocd-controller"  # Argo CD's field manager for server-side apply syncs
# The operator's writes: its own client's field manager, and kopf's (finalizers, its annotations, handler
# status patches), which carry no fieldManager, so the API server names them after kopf's user agent.
OPERATOR_MANAGERS = {Settings().field_manager, "kopf"}
KINDS = {
    "VMTemplate": "vmtemplates.virtfleet.io",
    "VirtualMachinePool": "virtualmachinepools.virtfleet.io",
    "MigrationPlan": "migrationplans.virtfleet.io",
}

# Two zones, so the example pool's zone spread has somewhere to go; room for 6 VMs at 4:1 CPU.
FLEET: dict[str, Any] = {
    "timeScale": 0.02,
    "defaults": {"bootSeconds": 2},
    "nodes": [
        {"name": "za", "count": 2, "zone": "zone-a", "cpu": 32, "memory": "128Gi"},
        {"name": "zb", "count": 2, "zone": "zone-b", "cpu": 32, "memory": "128Gi"},
    ],
}


@pytest.fixture(autouse=True)
def _stack(twin: None, operator: KopfRunner) -> None:
    """Every test here needs the twin and the operator running."""


@pytest.fixture(scope="session")
def kstatus_binary() -> Path:
    """hack/kstatus built once per machine (cached in ~/.cache/virtfleet); the first build takes a while."""
    result = subprocess.run(
        ["bash", str(KSTATUS_BUILD)], capture_output=True, text=True, check=False, timeout=1800
    )
    assert result.returncode == 0, f"hack/kstatus/build.sh failed:\n{result.stderr}"
    binary = Path(result.stdout.strip().splitlines()[-1])
    assert binary.is_file(), result.stdout
    return binary


def kstatus(binary: Path, *objects: dict[str, Any]) -> list[dict[str, Any]]:
    """kstatus's status.Compute for each object, in order."""
    listing = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    result = subprocess.run(
        [str(binary)], input=json.dumps(listing), capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def example_manifests(namespace: str, *folders: str) -> list[dict[str, Any]]:
    """The examples exactly as they are, moved into `namespace`."""
    documents: list[dict[str, Any]] = []
    for folder in folders:
        for path in sorted((EXAMPLES / folder).glob("*.yaml")):
            for document in yaml.safe_load_all(path.read_text()):
                if document:
                    document["metadata"]["namespace"] = namespace
                    documents.append(document)
    return documents


def dry_run_plan(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "rebalance", "namespace": namespace},
        "spec": {"goal": "rebalance", "dryRun": True},
    }


def planned(cluster: LocalCluster, namespace: str, name: str = "rebalance") -> dict[str, Any] | None:
    plan: dict[str, Any] = get_json(cluster, "-n", namespace, "vfplan", name)
    return plan if observed(plan) and plan.get("status", {}).get("phase") == "Planned" else None


def gitops_apply(cluster: LocalCluster, manifests: list[dict[str, Any]], *extra: str) -> str:
    """What a GitOps controller does: server-side apply under its own field manager."""
    result = cluster.kubectl(
        "apply", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", "-", *extra,
        input=yaml.safe_dump_all(manifests),
    )  # fmt: skip
    return result.stdout


def get_managed(cluster: LocalCluster, *args: str) -> Any:
    """`kubectl get -o json`, managedFields included (kubectl drops them unless asked)."""
    return json.loads(cluster.kubectl("get", *args, "-o", "json", "--show-managed-fields").stdout)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def observed(obj: dict[str, Any]) -> bool:
    return bool(obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"])


def converged_pool(cluster: LocalCluster, namespace: str, name: str, replicas: int) -> dict[str, Any] | None:
    pool: dict[str, Any] = get_json(cluster, "-n", namespace, "vfpool", name)
    status = pool.get("status", {})
    if (
        observed(pool)
        and status.get("readyReplicas") == replicas
        and status.get("replicas") == replicas
        and condition(pool, "Ready").get("status") == "True"
        and condition(pool, "Progressing").get("reason") == "RolloutComplete"
    ):
        return pool
    return None


def ready_template(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    template: dict[str, Any] = get_json(cluster, "-n", namespace, "vftpl", name)
    if observed(template) and condition(template, "Ready").get("status") == "True":
        return template
    return None


def versions(cluster: LocalCluster, namespace: str) -> dict[str, tuple[str, str]]:
    """resourceVersion and managedFields of every object the examples lead to in the namespace."""
    listing = get_managed(cluster, "-n", namespace, "virtfleet,vm,vmi,controllerrevisions")
    return {
        f"{o['kind']}/{o['metadata']['name']}": (
            o["metadata"]["resourceVersion"],
            json.dumps(o["metadata"]["managedFields"], sort_keys=True),
        )
        for o in listing["items"]
    }


def quiet(cluster: LocalCluster, namespace: str, seconds: float = 2.0) -> dict[str, tuple[str, str]]:
    """The namespace's versions once nothing has been written for `seconds`."""
    deadline = time.monotonic() + 60
    before = versions(cluster, namespace)
    while True:
        time.sleep(seconds)
        now = versions(cluster, namespace)
        if now == before:
            return now
        assert time.monotonic() < deadline, "the operator kept writing after the pool converged"
        before = now


def fields_under(fields: dict[str, Any], prefix: str = "") -> list[str]:
    """Leaf paths of a managedFields fieldsV1 tree ("f:spec" -> "spec")."""
    paths: list[str] = []
    for key, value in fields.items():
        if key == ".":
            continue
        path = f"{prefix}.{key.split(':', 1)[-1]}" if prefix else key.split(":", 1)[-1]
        paths.extend(fields_under(value, path) if value else [path])
        if value and "." in value:
            paths.append(path)
    return paths


def spec_fields(obj: dict[str, Any], manager: str) -> list[str]:
    """The .spec fields `manager` owns on the main resource (not the status or scale subresource)."""
    owned: list[str] = []
    for entry in obj["metadata"].get("managedFields", []):
        if entry["manager"] == manager and entry.get("subresource", "") == "":
            spec = entry.get("fieldsV1", {}).get("f:spec")
            if spec is not None:
                owned.extend(fields_under(spec, "spec") or ["spec"])
    return owned


# -- health -------------------------------------------------------------------------------------------


def test_kstatus_reads_our_conditions(cluster: LocalCluster, namespace: str, kstatus_binary: Path) -> None:
    manifests = example_manifests(namespace, "01-template", "02-oversubscribed-pool")
    gitops_apply(cluster, manifests)
    template = wait_for(lambda: ready_template(cluster, namespace, "fedora-small"), 60, "template not Ready")
    pool = wait_for(lambda: converged_pool(cluster, namespace, "web", 6), 120, "pool web never converged")

    # Converged: both are Current (no Reconciling/Stalled True, so kstatus falls through to Ready=True).
    results = kstatus(kstatus_binary, template, pool)
    assert [r["status"] for r in results] == ["Current", "Current"], results
    assert all(r["message"] == "Resource is Ready" for r in results), results

    # A new generation the operator has not observed yet is InProgress, whatever the conditions say. The
    # apply response is the object as it was just written: new generation, old observedGeneration.
    pool_manifest = next(m for m in manifests if m["kind"] == "VirtualMachinePool")
    scaled = {**pool_manifest, "spec": {**pool_manifest["spec"], "replicas": 7}}
    written = json.loads(gitops_apply(cluster, [scaled], "-o", "json"))
    assert written["metadata"]["generation"] == pool["metadata"]["generation"] + 1
    assert written["status"]["observedGeneration"] == pool["metadata"]["generation"]
    [result] = kstatus(kstatus_binary, written)
    assert result["status"] == "InProgress", result
    assert {"type": "Reconciling", "status": "True", "reason": "LatestGenerationNotObserved"}.items() <= (
        result["conditions"][0].items()
    ), result
    # The same rule on a constructed object: observedGeneration behind generation.
    behind = json.loads(json.dumps(pool))
    behind["metadata"]["generation"] += 3
    assert kstatus(kstatus_binary, behind)[0]["status"] == "InProgress"

    # While the seventh VM starts, Reconciling=True keeps it InProgress; then Current again.
    def scaling() -> dict[str, Any] | None:
        obj: dict[str, Any] = get_json(cluster, "-n", namespace, "vfpool", "web")
        return obj if observed(obj) and condition(obj, "Reconciling").get("status") == "True" else None

    seen = scaling()  # the operator may already be done: a fast twin boots a VM in well under a second
    if seen is not None:
        assert kstatus(kstatus_binary, seen)[0]["status"] == "InProgress"
    pool = wait_for(lambda: converged_pool(cluster, namespace, "web", 7), 120, "pool never reached 7")
    assert kstatus(kstatus_binary, pool)[0]["status"] == "Current"


def test_a_pool_that_needs_a_spec_change_is_failed(
    cluster: LocalCluster, namespace: str, kstatus_binary: Path
) -> None:
    """Stalled=True (here: templateRef names a template that does not exist) is kstatus's Failed."""
    [pool] = example_manifests(namespace, "02-oversubscribed-pool")
    pool["spec"]["templateRef"] = {"name": "missing"}
    gitops_apply(cluster, [pool])

    def stalled() -> dict[str, Any] | None:
        obj: dict[str, Any] = get_json(cluster, "-n", namespace, "vfpool", "web")
        return obj if observed(obj) and condition(obj, "Stalled").get("status") == "True" else None

    obj = wait_for(stalled, 60, "the pool never reported Stalled")
    assert condition(obj, "Reconciling")["status"] == "False"  # never both: kstatus takes the first True
    assert condition(obj, "Stalled")["reason"] == "TemplateNotFound"
    [result] = kstatus(kstatus_binary, obj)
    assert result["status"] == "Failed", result
    assert result["message"] == condition(obj, "Stalled")["message"] and "missing" in result["message"]
    assert result["conditions"] == [
        {"type": "Stalled", "status": "True", "reason": "TemplateNotFound", "message": result["message"]}
    ]

    # The template arrives (a later sync of the same repository): the pool recovers to Current by itself.
    gitops_apply(cluster, [{**t, "metadata": {**t["metadata"], "name": "missing"}}
                           for t in example_manifests(namespace, "01-template")])  # fmt: skip
    obj = wait_for(lambda: converged_pool(cluster, namespace, "web", 6), 120, "pool never recovered")
    assert kstatus(kstatus_binary, obj)[0]["status"] == "Current"


def test_a_new_object_is_in_progress_before_the_operator_has_seen_it(
    cluster: LocalCluster, namespace: str, kstatus_binary: Path
) -> None:
    manifests = example_manifests(namespace, "01-template", "02-oversubscribed-pool")
    # The apply response is each object as created: the operator cannot have written its status yet.
    created = json.loads(gitops_apply(cluster, manifests, "-o", "json"))
    objects = created.get("items", [created])
    assert all(o["metadata"]["generation"] == 1 for o in objects)
    assert [r["status"] for r in kstatus(kstatus_binary, *objects)] == ["InProgress", "InProgress"]


# -- server-side apply --------------------------------------------------------------------------------


def test_applying_twice_changes_nothing_and_the_operator_owns_no_spec(
    cluster: LocalCluster, namespace: str
) -> None:
    manifests = [
        *example_manifests(namespace, "01-template", "02-oversubscribed-pool"),
        dry_run_plan(namespace),
    ]
    first = gitops_apply(cluster, manifests)
    assert first.count("serverside-applied") == 3, first
    wait_for(lambda: ready_template(cluster, namespace, "fedora-small"), 60, "template not Ready")
    wait_for(lambda: converged_pool(cluster, namespace, "web", 6), 120, "pool web never converged")
    wait_for(lambda: planned(cluster, namespace), 60, "plan never planned")
    before = quiet(cluster, namespace)

    again = gitops_apply(cluster, manifests)
    assert again.count("serverside-applied") == 3, again
    after = quiet(cluster, namespace)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a no-op apply led to writes: {changed}"
    # kubectl's client-side diff agrees: nothing to change (exit 0).
    diff = cluster.kubectl(
        "diff", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", "-",
        input=yaml.safe_dump_all(manifests), check=False,
    )  # fmt: skip
    assert diff.returncode == 0, diff.stdout + diff.stderr

    for kind, name in (("vftpl", "fedora-small"), ("vfpool", "web"), ("vfplan", "rebalance")):
        obj = get_managed(cluster, "-n", namespace, kind, name)
        managers = {
            (e["manager"], e["operation"], e.get("subresource", "")) for e in obj["metadata"]["managedFields"]
        }
        # The GitOps controller owns every top-level spec field it applied; nobody else owns any spec field.
        manifest = next(m for m in manifests if m["metadata"]["name"] == name)
        ours = spec_fields(obj, GITOPS_MANAGER)
        for key in manifest["spec"]:
            assert any(p == f"spec.{key}" or p.startswith(f"spec.{key}.") for p in ours), (key, managers)
        owners = {m for m, _, _ in managers if m != GITOPS_MANAGER and spec_fields(obj, m)}
        assert not owners, f"{kind}/{name}: {owners} own {[spec_fields(obj, m) for m in owners]}"
        # Nobody but the GitOps controller and the operator writes these objects, and the operator writes
        # status through the status subresource and, of the object itself, only its annotations and finalizer.
        assert {m for m, _, _ in managers} <= {GITOPS_MANAGER, *OPERATOR_MANAGERS}, managers
        for entry in obj["metadata"]["managedFields"]:
            if entry["manager"] not in OPERATOR_MANAGERS or entry.get("subresource") == "status":
                continue
            fields = entry.get("fieldsV1", {})
            others = set(fields) - {"f:metadata"}
            metadata = set(fields.get("f:metadata", {})) - {"f:annotations", "f:finalizers"}
            assert not others and not metadata, f"{kind}/{name}: {entry['manager']} owns {fields}"

    # A second field manager changing a spec field the GitOps controller owns is a conflict, not a silent
    # takeover: the operator, which never writes spec, cannot cause one.
    pool = next(m for m in manifests if m["kind"] == "VirtualMachinePool")
    intruder = {**pool, "spec": {**pool["spec"], "replicas": 2}}
    result = cluster.kubectl(
        "apply", "--server-side", "--field-manager=someone-else", "-f", "-",
        input=yaml.safe_dump(intruder), check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "conflict" in result.stderr.lower(), result.stderr


# -- discovery and explain ----------------------------------------------------------------------------


def explain_fields(cluster: LocalCluster, path: str) -> dict[str, tuple[str, str]]:
    """The FIELDS of `kubectl explain path`: name -> (type, description)."""
    text = cluster.kubectl("explain", path).stdout
    _, _, listing = text.partition("\nFIELDS:\n")
    fields: dict[str, tuple[str, str]] = {}
    current = ""
    for line in listing.splitlines():
        header = re.match(r"^  (\S+)\t<([^>]+)>", line)
        if header:
            current = header.group(1)
            fields[current] = (header.group(2), "")
        elif current and line.startswith("    ") and line.strip():
            kind, description = fields[current]
            fields[current] = (kind, f"{description} {line.strip()}".strip())
    return fields


def undocumented(cluster: LocalCluster, path: str) -> list[str]:
    """Every field under `path`, at any depth, that `kubectl explain` shows without a description."""
    missing: list[str] = []
    fields = explain_fields(cluster, path)
    assert fields, f"kubectl explain {path} lists no fields"
    for name, (kind, description) in fields.items():
        if not description:
            missing.append(f"{path}.{name}")
        if kind.endswith("Object") and not kind.startswith("map"):
            missing.extend(undocumented(cluster, f"{path}.{name}"))
    return missing


def test_get_virtfleet_lists_every_kind_and_explain_describes_every_field(
    cluster: LocalCluster, namespace: str, kstatus_binary: Path
) -> None:
    manifests = example_manifests(namespace, "01-template", "02-oversubscribed-pool")
    gitops_apply(cluster, [*manifests, dry_run_plan(namespace)])

    names = set(cluster.kubectl("get", "virtfleet", "-n", namespace, "-o", "name").stdout.split())
    assert names == {
        "vmtemplate.virtfleet.io/fedora-small",
        "virtualmachinepool.virtfleet.io/web",
        "migrationplan.virtfleet.io/rebalance",
    }
    table = cluster.kubectl("get", "virtfleet", "-n", namespace).stdout
    assert all(name in table for name in ("fedora-small", "web", "rebalance")), table

    # A dry-run plan that has planned is Current.
    plan = wait_for(lambda: planned(cluster, namespace), 60, "plan never planned")
    assert kstatus(kstatus_binary, plan)[0]["status"] == "Current"

    for kind, resource in KINDS.items():
        top = explain_fields(cluster, f"{resource}.spec")
        assert top, kind
        assert not [f for f, (_, text) in top.items() if not text], f"{kind}: undocumented spec fields"
        assert undocumented(cluster, f"{resource}.spec") == [], kind
        assert undocumented(cluster, f"{resource}.status") == [], kind
