"""The operator from its image and chart on a real cluster: what needs no KubeVirt runtime.

Nothing here starts a VM: until KubeVirt itself runs on the cluster, VirtualMachines are objects that
its CRDs admit (strictly) and nothing runs. Every check reads what the in-cluster operator wrote.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kind_helpers import (
    REPO,
    Operator,
    apply,
    get,
    items,
    observed,
    pool,
    pool_status,
    ready_template,
    template,
    wait_for,
    worker_nodes,
)

from virtfleet.api.quantity import parse_millicores
from virtfleet.localcluster.testing import SessionCluster, promtool

EXAMPLES = REPO / "examples"
KSTATUS_BUILD = REPO / "hack" / "kstatus" / "build.sh"


def test_the_operator_runs_from_its_image_as_the_charts_service_account_under_restricted(
    test_cluster: SessionCluster, operator: Operator
) -> None:
    namespace = get(test_cluster, "namespace", operator.namespace)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (pod,) = operator.ready_pods()
    assert pod["spec"]["serviceAccountName"] == operator.release
    (container,) = pod["spec"]["containers"]
    assert container["image"].startswith(operator.values()["image"]["repository"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # The pod runs on a worker of the real cluster, scheduled by the real scheduler.
    assert pod["spec"]["nodeName"] in {n["metadata"]["name"] for n in worker_nodes(test_cluster)}
    logs = test_cluster.kubectl("-n", operator.namespace, "logs", pod["metadata"]["name"]).stdout
    assert "Traceback" not in logs, logs[-3000:]


def test_templates_get_revisions(test_cluster: SessionCluster, operator: Operator, namespace: str) -> None:
    apply(test_cluster, template(namespace))
    first = ready_template(test_cluster, namespace)["status"]["currentRevision"]
    apply(test_cluster, template(namespace, cores=2))

    def changed() -> dict[str, Any] | None:
        obj = ready_template(test_cluster, namespace)
        return obj if obj["status"]["currentRevision"] != first else None

    second = wait_for(changed, 60, "a spec change made no new revision")
    assert second["status"]["vcpus"] == 2

    # The revision is a ControllerRevision labelled with the template and its digest; the first one,
    # which no pool uses, is garbage-collected.
    def stored() -> set[str] | None:
        revisions = items(test_cluster, "controllerrevisions", namespace, "-l", "virtfleet.io/template=tiny")
        digests = {r["metadata"]["labels"]["virtfleet.io/template-revision"] for r in revisions}
        return digests if digests == {second["status"]["currentRevision"]} else None

    wait_for(stored, 60, f"revisions other than the current one stayed (first was {first})")


def test_pools_write_vms_that_kubevirts_schema_admits_strictly(
    test_cluster: SessionCluster, operator: Operator, namespace: str
) -> None:
    apply(test_cluster, template(namespace), pool(namespace, "strict", 3, cpuRatio=4))
    pool_status(test_cluster, namespace, "strict", 3)
    for vm in items(test_cluster, "vm", namespace, "-l", "virtfleet.io/pool=strict"):
        # Send the VM back as a new object with strict field validation: an unknown or misspelled field
        # anywhere in what the operator wrote would be refused by KubeVirt's CRD schema.
        vm["metadata"] = {"name": vm["metadata"]["name"] + "-copy", "namespace": namespace,
                          "labels": vm["metadata"].get("labels", {})}  # fmt: skip
        vm.pop("status", None)
        result = test_cluster.kubectl(
            "create", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(vm)
        )
        assert "created (server dry run)" in result.stdout


def test_pool_capacity_comes_from_the_real_workers(
    test_cluster: SessionCluster, operator: Operator, namespace: str
) -> None:
    workers = worker_nodes(test_cluster)
    assert len(workers) == 2
    apply(test_cluster, template(namespace), pool(namespace, "fleet", 2, cpuRatio=4))
    status = pool_status(test_cluster, namespace, "fleet", 2)["status"]["oversubscription"]
    assert status["eligibleNodes"] == len(workers)
    cores = sum(parse_millicores(n["status"]["allocatable"]["cpu"]) // 1000 for n in workers)
    assert status["physicalCores"] == cores
    # A pool pinned to one worker by its real hostname label sees that worker alone.
    one = workers[0]["metadata"]["labels"]["kubernetes.io/hostname"]
    apply(
        test_cluster,
        pool(namespace, "one", 1, cpuRatio=4, placement={"nodeSelector": {"kubernetes.io/hostname": one}}),
    )
    pinned = pool_status(test_cluster, namespace, "one", 1)["status"]["oversubscription"]
    assert pinned["eligibleNodes"] == 1
    assert pinned["physicalCores"] == cores // len(workers)


def test_a_dry_run_plan_is_planned(test_cluster: SessionCluster, operator: Operator, namespace: str) -> None:
    worker = worker_nodes(test_cluster)[0]["metadata"]["name"]
    plan = {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "what-if", "namespace": namespace},
        "spec": {"goal": "drain", "nodes": [worker], "dryRun": True},
    }
    apply(test_cluster, template(namespace), pool(namespace, "web", 2, cpuRatio=4), plan)

    def planned() -> dict[str, Any] | None:
        obj = get(test_cluster, "vfplan", "what-if", namespace)
        return obj if observed(obj) and obj.get("status", {}).get("phase") == "Planned" else None

    status = wait_for(planned, 120, "the dry-run plan was never Planned")["status"]
    # No VM runs without KubeVirt's runtime, so nothing is on the worker to move.
    assert status["total"] == 0 and status["vms"] == []
    assert not items(test_cluster, "virtualmachineinstancemigrations", namespace)


def test_metrics_through_the_charts_service(
    test_cluster: SessionCluster, operator: Operator, namespace: str
) -> None:
    apply(test_cluster, template(namespace), pool(namespace, "scraped", 2, cpuRatio=4))
    pool_status(test_cluster, namespace, "scraped", 2)
    path = (
        f"/api/v1/namespaces/{operator.namespace}/services/{operator.release}-metrics:metrics/proxy/metrics"
    )
    service = get(test_cluster, "service", f"{operator.release}-metrics", operator.namespace)
    assert any(p["name"] == "metrics" for p in service["spec"]["ports"])

    def scraped() -> str | None:
        text = test_cluster.kubectl("get", "--raw", path).stdout
        return text if f'namespace="{namespace}",pool="scraped"' in text else None

    text = wait_for(scraped, 60, "the pool's series never showed in a scrape through the Service")
    lint = subprocess.run([str(promtool()), "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    cores = [line for line in text.splitlines() if line.startswith("virtfleet_node_cpu_cores{")]
    assert {line.split('node="')[1].split('"')[0] for line in cores} >= {
        n["metadata"]["name"] for n in worker_nodes(test_cluster)
    }


@pytest.fixture(scope="module")
def kstatus_binary() -> Path:
    result = subprocess.run(
        ["bash", str(KSTATUS_BUILD)], capture_output=True, text=True, check=False, timeout=1800
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def test_kstatus_reads_our_objects(
    test_cluster: SessionCluster, operator: Operator, namespace: str, kstatus_binary: Path
) -> None:
    apply(test_cluster, template(namespace), pool(namespace, "kstatus", 1, cpuRatio=4))
    pool_status(test_cluster, namespace, "kstatus", 1)
    objects = [
        get(test_cluster, "vmtemplate", "tiny", namespace),
        get(test_cluster, "vfpool", "kstatus", namespace),
        get(test_cluster, "deployment", operator.release, operator.namespace),
    ]
    listing = {"apiVersion": "v1", "kind": "List", "items": objects}
    result = subprocess.run(
        [str(kstatus_binary)],
        input=json.dumps(listing),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    template_status, pool_state, deployment = (
        json.loads(line)["status"] for line in result.stdout.splitlines()
    )
    assert template_status == "Current"
    assert deployment == "Current"
    # Without KubeVirt's runtime the VM never becomes ready: the pool is honestly still in progress.
    assert pool_state == "InProgress"
