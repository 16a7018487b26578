"""Faults injected into a running operator, against the real control plane (issue #7, reliability):

1. kill -9 at a random point of a 0 -> 500 scale-out: exactly pool-0..pool-499 afterwards, every trial;
2. kube-apiserver stopped for 5 s and started again mid-scale-out: converged within 30 s of its return,
   nothing lost, the operator never exited;
3. a conflict storm of concurrent pool and template edits: the operator converges to the last spec;
4. kill -9 at a random point of a MigrationPlan (the twin): no VM migrated twice, every VM running on
   one node, the drained node empty, every trial.

The operator runs as its own process (`python -m virtfleet run -n <the test's namespace>`), as in
production. Randomised tests run VIRTFLEET_RELIABILITY_TRIALS trials (default 5; the full run uses 20),
each in a fresh namespace. Their kill points derive from VIRTFLEET_RELIABILITY_SEED (random when
unset); every trial prints the seed and what happened (`pytest -rP` shows it), so a run can be replayed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import (
    NODE_LABEL,
    TRIALS,
    Creations,
    OperatorProcess,
    create_fleet_nodes,
    eventually,
    items,
    pool_body,
    remove_workloads,
    report,
    template_body,
    trial_random,
)

from virtfleet.api.labels import ORDINAL_LABEL, POOL_LABEL, REVISION_LABEL
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core.revisions import revision_hash
from virtfleet.kube.client import (
    MIGRATION_PLANS,
    MIGRATIONS,
    NODES,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINE_POOLS,
    VIRTUAL_MACHINES,
    VM_TEMPLATES,
    ApiError,
    Kube,
    ResourceRef,
)
from virtfleet.localcluster import LocalCluster

pytestmark = pytest.mark.integration

ROLE = "reliability.virtfleet.io/role"
SCALE_NODES = {ROLE: "scale"}
STORM_NODES = {ROLE: "storm"}
MIGRATE_NODES = {ROLE: "migrate"}
# The twin's fleet (tests 3 and 4); tests 1 and 2 only need its Node objects, not the simulation.
FLEET: dict[str, Any] = {
    "timeScale": 0.02,
    "defaults": {"bootSeconds": 2},
    "nodes": [
        {"name": "rel-scale", "count": 10, "cpu": 64, "memory": "512Gi",
         "labels": {NODE_LABEL: "faults", **SCALE_NODES}},
        {"name": "rel-storm", "count": 2, "cpu": 64, "memory": "256Gi",
         "labels": {NODE_LABEL: "faults", **STORM_NODES}},
        {"name": "rel-mig", "count": 3, "cpu": 64, "memory": "512Gi",
         "labels": {NODE_LABEL: "faults", **MIGRATE_NODES}},
    ],
}  # fmt: skip
DRAINED, OTHERS = "rel-mig-0", ("rel-mig-1", "rel-mig-2")

SCALE_OUT = 500
APISERVER_SCALE_OUT = 200
APISERVER_DOWNTIME = 5.0
CONVERGENCE_AFTER_RETURN = 30.0  # seconds, from the API server answering again
STORM_SECONDS = 10.0
STORM_CLIENTS = 3
PLAN_VMS = 16

MISSING_RESTART = (
    "LocalCluster.restart_apiserver(downtime) is missing: it should stop only kube-apiserver (SIGTERM, "
    "SIGKILL after a short grace), keep it down `downtime` seconds, start it again with the same "
    "arguments (same port, etcd and certificates) and return time.monotonic() once /readyz answers"
)


@pytest.fixture(scope="module")
def fleet_nodes(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The fleet's nodes as plain Node objects (Ready, untainted; nothing runs on them)."""
    create_fleet_nodes(cluster, FLEET, tmp_path_factory.mktemp("fleet"))
    try:
        yield
    finally:
        cluster.kubectl("delete", "nodes", "-l", f"{NODE_LABEL}=faults", "--wait=false", check=False)


@pytest.fixture
async def operator_process(
    cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path
) -> AsyncIterator[OperatorProcess]:
    """The operator as its own process; afterwards the test's pools, plans and VMs are removed while an
    operator still runs (their finalizers), then the operator is stopped."""
    process = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    process.start()
    try:
        yield process
    finally:
        if not process.alive:
            process.start()
        try:
            await remove_workloads(kube, namespace, process)
        finally:
            process.stop()


async def pool_with_revision(
    kube: Kube, namespace: str, operator: OperatorProcess, nodes: dict[str, str], replicas: int = 0
) -> str:
    """Template `small` and pool `pool` (cpuRatio 4) in the namespace; the pool's UID once the operator
    has resolved the template's revision for it."""
    await kube.create(VM_TEMPLATES, namespace, template_body("small"))
    await kube.create(
        VIRTUAL_MACHINE_POOLS, namespace, pool_body("pool", "small", replicas, nodes, cpuRatio=4)
    )

    async def resolved() -> str | None:
        pool = await kube.get(VIRTUAL_MACHINE_POOLS, namespace, "pool")
        return str(pool["metadata"]["uid"]) if (pool.get("status") or {}).get("updateRevision") else None

    return await eventually(resolved, 60, lambda: f"the pool never got its revision:\n{operator.tail()}")


async def exactly(kube: Kube, namespace: str, replicas: int) -> list[dict[str, Any]] | None:
    """The pool's VMs once as many exist as wanted and the pool's status says so for its generation."""
    pool = await kube.get(VIRTUAL_MACHINE_POOLS, namespace, "pool")
    status = pool.get("status") or {}
    if (
        status.get("observedGeneration") != pool["metadata"]["generation"]
        or status.get("replicas") != replicas
    ):
        return None
    vms = await items(kube, VIRTUAL_MACHINES, namespace)
    return vms if len(vms) == replicas else None


def identity_problems(
    vms: list[dict[str, Any]], pool_uid: str, replicas: int, lowest_ordinals: bool = True
) -> list[str]:
    """Every VM in the namespace is one of the pool's, labelled and owned by it, and there are `replicas`
    of them: anything else is a duplicate or an orphan. A scale-out from zero makes exactly
    pool-0..pool-(replicas-1); after rolling updates (surge VMs take the lowest free ordinal, then an
    outdated one goes) the ordinals may have moved on."""
    problems = []
    names = sorted(v["metadata"]["name"] for v in vms)
    expected = sorted(f"pool-{i}" for i in range(replicas))
    if not lowest_ordinals:
        expected = names if len(names) == replicas and all(n.startswith("pool-") for n in names) else expected
    if names != expected:
        extra, missing = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
        problems.append(f"names differ: {len(names)} VMs, extra {extra[:10]}, missing {missing[:10]}")
    for vm in vms:
        meta = vm["metadata"]
        labels = meta.get("labels") or {}
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
        if labels.get(POOL_LABEL) != "pool" or labels.get(ORDINAL_LABEL) != meta["name"].rsplit("-", 1)[-1]:
            problems.append(f"{meta['name']}: labels {labels}")
        if [(o["kind"], o["name"], o["uid"]) for o in owners] != [("VirtualMachinePool", "pool", pool_uid)]:
            problems.append(f"{meta['name']}: owners {owners}")
        if meta.get("deletionTimestamp"):
            problems.append(f"{meta['name']}: being deleted")
    return problems


def fingerprint(vms: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(v["metadata"]["name"], v["metadata"]["uid"], v["metadata"]["resourceVersion"]) for v in vms}


def assert_healthy(operator: OperatorProcess, starts: int) -> None:
    assert operator.alive, f"the operator exited ({operator.exit_code}):\n{operator.tail()}"
    assert operator.starts == starts, f"the operator was started {operator.starts} times, expected {starts}"
    assert "Traceback" not in operator.output(), f"the operator logged a traceback:\n{operator.tail(6000)}"


# -- 1. kill -9 during a 500-VM scale-out --------------------------------------------------------------


@pytest.mark.parametrize("trial", range(TRIALS))
async def test_kill_9_at_a_random_point_of_a_500_vm_scale_out(
    kube: Kube, namespace: str, fleet_nodes: None, operator_process: OperatorProcess, trial: int
) -> None:
    """The kill lands when the API server has shown a random number (0..499) of the 500 creates: a point
    in the scale-out that does not depend on how fast this machine is. A new operator process then
    finishes the job: the same VMs (same UIDs) plus the missing ordinals, nothing else."""
    kill_at = trial_random("scale-out", trial).randrange(SCALE_OUT)
    pool_uid = await pool_with_revision(kube, namespace, operator_process, SCALE_NODES)
    version = (await kube.list(VIRTUAL_MACHINES, namespace))["metadata"]["resourceVersion"]
    async with Creations(kube, VIRTUAL_MACHINES, namespace, version) as created:
        started = time.monotonic()
        await kube.patch(
            VIRTUAL_MACHINE_POOLS, namespace, "pool", {"spec": {"replicas": SCALE_OUT}}, subresource="scale"
        )
        await created.reached(kill_at, timeout=120)
        operator_process.kill9()
        killed_after = time.monotonic() - started
        seen_at_kill = len(created.names)
    survivors = {
        v["metadata"]["name"]: v["metadata"]["uid"] for v in await items(kube, VIRTUAL_MACHINES, namespace)
    }

    operator_process.start()
    restarted = time.monotonic()
    vms = await eventually(
        lambda: exactly(kube, namespace, SCALE_OUT),
        180,
        lambda: f"no convergence:\n{operator_process.tail()}",
    )
    converged_after = time.monotonic() - restarted
    await asyncio.sleep(2)  # settled: nothing more is created, deleted or changed
    again = await items(kube, VIRTUAL_MACHINES, namespace)
    report(
        f"scale-out trial {trial}: kill at {kill_at} created (saw {seen_at_kill}, "
        f"{killed_after:.2f}s after the scale), {len(survivors)} VMs at restart, "
        f"converged {converged_after:.1f}s after restart"
    )
    assert fingerprint(again) == fingerprint(vms), "VMs changed after the pool had converged"
    assert identity_problems(again, pool_uid, SCALE_OUT) == []
    after = {v["metadata"]["name"]: v["metadata"]["uid"] for v in again}
    replaced = [n for n, uid in survivors.items() if after.get(n) != uid]
    assert replaced == [], f"VMs created before the kill were deleted or replaced: {replaced[:10]}"
    assert_healthy(operator_process, starts=2)


# -- 2. kube-apiserver stopped and started again mid-reconcile -------------------------------------------


async def test_kube_apiserver_restart_mid_scale_out(
    cluster: LocalCluster, kube: Kube, namespace: str, fleet_nodes: None, operator_process: OperatorProcess
) -> None:
    """kube-apiserver is stopped (SIGTERM, SIGKILL after a short grace) once 40 of 200 creates have
    been seen, stays down 5 s and comes back on the same port and etcd. The same operator process must
    finish the scale-out within 30 s of the API server's return, without exiting or logging a
    traceback."""
    restart = getattr(cluster, "restart_apiserver", None)
    if restart is None:
        pytest.fail(MISSING_RESTART)
    pool_uid = await pool_with_revision(kube, namespace, operator_process, SCALE_NODES)
    version = (await kube.list(VIRTUAL_MACHINES, namespace))["metadata"]["resourceVersion"]
    async with Creations(kube, VIRTUAL_MACHINES, namespace, version) as created:
        await kube.patch(
            VIRTUAL_MACHINE_POOLS,
            namespace,
            "pool",
            {"spec": {"replicas": APISERVER_SCALE_OUT}},
            subresource="scale",
        )
        await created.reached(APISERVER_SCALE_OUT // 5, timeout=60)
        stopping = time.monotonic()
        seen_at_stop = len(created.names)
        back: float = await asyncio.to_thread(restart, APISERVER_DOWNTIME)
    vms = await eventually(
        lambda: exactly(kube, namespace, APISERVER_SCALE_OUT),
        CONVERGENCE_AFTER_RETURN,
        lambda: f"no convergence within 30 s of the API server's return:\n{operator_process.tail()}",
    )
    converged_after = time.monotonic() - back
    report(
        f"apiserver restart: stopped after {seen_at_stop} of {APISERVER_SCALE_OUT} creates seen, "
        f"answering again {back - stopping:.1f}s later, "
        f"converged {converged_after:.1f}s after its return; operator log: "
        f"{operator_process.output().count('reconcile failed')} failed reconciles"
    )
    assert converged_after <= CONVERGENCE_AFTER_RETURN
    assert identity_problems(vms, pool_uid, APISERVER_SCALE_OUT) == []
    await asyncio.sleep(2)
    assert fingerprint(await items(kube, VIRTUAL_MACHINES, namespace)) == fingerprint(vms)
    assert_healthy(operator_process, starts=1)


# -- 3. conflict storm ---------------------------------------------------------------------------------


def merged(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`obj` with a JSON merge patch applied (maps merge, everything else replaces)."""
    result = dict(obj)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


async def edit(
    kube: Kube,
    ref: ResourceRef,
    namespace: str,
    name: str,
    patch: dict[str, Any],
    put: bool,
    seen: Counter[str],
) -> None:
    """One edit, as a merge patch or as read-modify-write (PUT with the resourceVersion read, retried on
    409 Conflict like any controller would)."""
    if not put:
        await kube.patch(ref, namespace, name, patch)
        seen[f"{ref.plural} patch"] += 1
        return
    query: dict[str, str | int] = {"fieldManager": "storm", "fieldValidation": "Strict"}
    while True:
        current = await kube.get(ref, namespace, name)
        await asyncio.sleep(0.01)  # a client's think time: the window in which others write
        try:
            await kube.request("PUT", ref.path(namespace, name), query=query, body=merged(current, patch))
        except ApiError as error:
            if error.status != 409:
                raise
            seen[f"{ref.plural} 409"] += 1
            continue
        seen[f"{ref.plural} put"] += 1
        return


async def storm(kube: Kube, namespace: str, client: int, until: float, seen: Counter[str]) -> None:
    rng = trial_random(f"storm-{client}", 0)
    step = 0
    while time.monotonic() < until:
        step += 1
        put = rng.random() < 0.7
        what = rng.choice(("replicas", "labels", "memory", "metadata"))
        if what == "metadata":  # no new generation, but a new resourceVersion: conflicts for everyone
            patch: dict[str, Any] = {"metadata": {"labels": {"storm": f"c{client}-{step}"}}}
            await edit(kube, VIRTUAL_MACHINE_POOLS, namespace, "pool", patch, put, seen)
        elif what == "replicas":
            patch = {"spec": {"replicas": rng.randint(1, 6)}}
            await edit(kube, VIRTUAL_MACHINE_POOLS, namespace, "pool", patch, put, seen)
        elif what == "labels":
            patch = {"spec": {"overrides": {"labels": {"storm": f"c{client}-{step}"}}}}
            await edit(kube, VIRTUAL_MACHINE_POOLS, namespace, "pool", patch, put, seen)
        else:
            patch = {"spec": {"memory": {"guest": rng.choice(("1Gi", "2Gi", "3Gi"))}}}
            await edit(kube, VM_TEMPLATES, namespace, "small", patch, put, seen)
        await asyncio.sleep(rng.uniform(0, 0.05))


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


async def test_conflict_storm_converges_to_the_last_spec(
    cluster: LocalCluster, kube: Kube, namespace: str, twin: None, operator_process: OperatorProcess
) -> None:
    """Three clients edit the pool (replicas, VM labels, its own labels) and its template (memory) for
    10 s, by merge patches and by read-modify-write updates that meet 409 Conflicts, while the operator
    reconciles and rolls out. Whatever spec the storm leaves is what the operator converges to."""
    pool_uid = await pool_with_revision(kube, namespace, operator_process, STORM_NODES, replicas=3)
    seen: Counter[str] = Counter()
    client = await Kube.connect(field_manager="storm", kubeconfig=str(cluster.kubeconfig))
    async with client:
        until = time.monotonic() + STORM_SECONDS
        await asyncio.gather(*(storm(client, namespace, i, until, seen) for i in range(STORM_CLIENTS)))
    ended = time.monotonic()
    pool = await kube.get(VIRTUAL_MACHINE_POOLS, namespace, "pool")
    template = await kube.get(VM_TEMPLATES, namespace, "small")
    replicas = pool["spec"]["replicas"]
    labels = pool["spec"]["overrides"]["labels"]
    memory = template["spec"]["memory"]["guest"]
    normalised = VMTemplateSpec.model_validate(template["spec"]).model_dump(mode="json", by_alias=True)
    digest = revision_hash(normalised)

    async def converged() -> list[dict[str, Any]] | None:
        now_pool = await kube.get(VIRTUAL_MACHINE_POOLS, namespace, "pool")
        now_template = await kube.get(VM_TEMPLATES, namespace, "small")
        status, tstatus = now_pool.get("status") or {}, now_template.get("status") or {}
        if not (
            status.get("observedGeneration") == now_pool["metadata"]["generation"]
            and condition(status, "Ready").get("status") == "True"
            and status.get("replicas")
            == status.get("readyReplicas")
            == status.get("updatedReplicas")
            == replicas
            and status.get("updateRevision") == status.get("currentRevision") == digest
            and tstatus.get("currentRevision") == digest
            and tstatus.get("observedGeneration") == now_template["metadata"]["generation"]
        ):
            return None
        vms = await items(kube, VIRTUAL_MACHINES, namespace)
        return vms if len(vms) == replicas else None

    try:
        vms = await eventually(converged, 120, "no convergence after the storm")
    except AssertionError as error:
        now_pool = await kube.get(VIRTUAL_MACHINE_POOLS, namespace, "pool")
        now_template = await kube.get(VM_TEMPLATES, namespace, "small")
        found = {
            v["metadata"]["name"]: v["metadata"]["labels"]
            for v in await items(kube, VIRTUAL_MACHINES, namespace)
        }
        raise AssertionError(
            f"{error}: wanted {replicas} VMs of revision {digest} with labels {labels}; the pool: "
            f"{json.dumps(now_pool.get('status'))}\nthe template: {json.dumps(now_template.get('status'))}\n"
            f"the VMs: {json.dumps(found)}\n{operator_process.tail()}"
        ) from None
    took = time.monotonic() - ended
    edits = sum(n for k, n in seen.items() if not k.endswith("409"))
    conflicts = seen["virtualmachinepools 409"] + seen["vmtemplates 409"]
    report(
        f"conflict storm: {edits} edits by {STORM_CLIENTS} clients in {STORM_SECONDS:.0f}s "
        f"({dict(sorted(seen.items()))}), {conflicts} conflicts (409) met; last spec: {replicas} replicas, "
        f"labels {labels}, memory {memory} (revision {digest}); converged {took:.1f}s after the storm"
    )
    assert identity_problems(vms, pool_uid, replicas, lowest_ordinals=False) == []
    for vm in vms:
        vm_labels = vm["metadata"]["labels"]
        assert vm_labels[REVISION_LABEL] == digest and vm_labels.get("storm") == labels["storm"], vm_labels
        assert vm["spec"]["template"]["spec"]["domain"]["memory"]["guest"] == memory
    assert conflicts > 0, "the storm met no conflict: it did not race anything"
    # The spec is still the storm's last one (the operator never writes a spec).
    for ref, name, before in ((VIRTUAL_MACHINE_POOLS, "pool", pool), (VM_TEMPLATES, "small", template)):
        assert (await kube.get(ref, namespace, name))["spec"] == before["spec"]
    assert_healthy(operator_process, starts=1)


# -- 4. kill -9 during a MigrationPlan -----------------------------------------------------------------


async def set_unschedulable(kube: Kube, nodes: tuple[str, ...], value: bool) -> None:
    for node in nodes:
        await kube.patch(NODES, None, node, {"spec": {"unschedulable": value or None}})


async def running_on(kube: Kube, namespace: str, node: str) -> int:
    vmis = await items(kube, VIRTUAL_MACHINE_INSTANCES, namespace)
    return sum(
        (v.get("status") or {}).get("phase") == "Running" and v["status"].get("nodeName") == node
        for v in vmis
    )


async def sees_schedulable(kube: Kube, namespace: str, count: int) -> None:
    """Wait until the operator's node cache shows `count` schedulable nodes for the pool (a plan is
    planned from that cache when it starts: created right after an uncordon, it could still see the
    node cordoned). The pool reports what it sees in status.oversubscription.eligibleNodes once a
    change of the pool (an annotation here) makes it reconcile."""
    pokes = 0

    async def seen() -> bool:
        nonlocal pokes
        pokes += 1
        poke = {"metadata": {"annotations": {"reliability.virtfleet.io/poke": str(pokes)}}}
        await kube.patch(VIRTUAL_MACHINE_POOLS, namespace, "pool", poke)
        await asyncio.sleep(0.2)
        status = (await kube.get(VIRTUAL_MACHINE_POOLS, namespace, "pool")).get("status") or {}
        return bool((status.get("oversubscription") or {}).get("eligibleNodes") == count)

    await eventually(seen, 30, f"the operator never saw {count} schedulable nodes")


def migration_plan(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "virtfleet.io/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": name},
        "spec": {
            "goal": "drain",
            "nodes": [DRAINED],
            "uncordonWhenDone": True,
            "limits": {"maxParallel": 2},
            # about 30 simulated (0.6 real) seconds per migration: the plan takes several seconds
            "migration": {"bandwidthPerMigration": "200M"},
        },
    }


@pytest.fixture
async def migrate_nodes(kube: Kube, twin: None) -> AsyncIterator[None]:
    """Every node of the drain test is schedulable again afterwards, whatever the test left."""
    yield
    await set_unschedulable(kube, (DRAINED, *OTHERS), False)


@pytest.mark.parametrize("trial", range(TRIALS))
async def test_kill_9_at_a_random_point_of_a_migration_plan(
    kube: Kube, namespace: str, migrate_nodes: None, operator_process: OperatorProcess, trial: int
) -> None:
    """16 VMs run on one node; a plan drains it, two migrations at a time. The operator is killed a
    random delay (0..0.6 s) after the plan's k-th migration was created (k random in 0..16; 0: after the
    plan was created); a new process resumes the plan from what the API shows."""
    rng = trial_random("plan", trial)
    kill_after, delay = rng.randint(0, PLAN_VMS), rng.uniform(0, 0.6)
    try:
        await set_unschedulable(kube, OTHERS, True)
        await pool_with_revision(kube, namespace, operator_process, MIGRATE_NODES, replicas=PLAN_VMS)

        async def all_on_drained() -> bool:
            return await running_on(kube, namespace, DRAINED) == PLAN_VMS

        await eventually(
            all_on_drained, 120, lambda: f"the pool never ran on {DRAINED}:\n{operator_process.tail()}"
        )
    finally:
        await set_unschedulable(kube, OTHERS, False)
    await sees_schedulable(kube, namespace, 1 + len(OTHERS))

    version = (await kube.list(MIGRATIONS, namespace))["metadata"]["resourceVersion"]
    async with Creations(kube, MIGRATIONS, namespace, version) as started:
        await kube.create(MIGRATION_PLANS, namespace, migration_plan("drain"))
        created = time.monotonic()
        try:
            await started.reached(kill_after, timeout=120)
        except AssertionError as error:
            plan = await kube.get(MIGRATION_PLANS, namespace, "drain")
            status = json.dumps(plan.get("status"))[:3000]
            raise AssertionError(f"{error}; the plan: {status}\n{operator_process.tail()}") from None
        await asyncio.sleep(delay)
        operator_process.kill9()
        killed_after = time.monotonic() - created
        migrations_at_kill = len(started.names)
    status_at_kill = (await kube.get(MIGRATION_PLANS, namespace, "drain")).get("status") or {}

    operator_process.start()
    restarted = time.monotonic()

    async def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = (await kube.get(MIGRATION_PLANS, namespace, "drain")).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed", "Cancelled") else None

    final = await eventually(finished, 180, lambda: f"the plan never finished:\n{operator_process.tail()}")
    resumed_in = time.monotonic() - restarted
    migrations = await items(kube, MIGRATIONS, namespace)
    per_vm = Counter(m["spec"]["vmiName"] for m in migrations)
    report(
        f"plan trial {trial}: kill {delay:.2f}s after migration {kill_after} "
        f"({killed_after:.2f}s after the plan, {migrations_at_kill} migrations created, "
        f"{status_at_kill.get('done', 0)} done), plan {final.get('phase')} {resumed_in:.1f}s after restart"
    )
    assert [vm for vm, n in per_vm.items() if n > 1] == [], f"VMs migrated more than once: {per_vm}"
    assert final["phase"] == "Succeeded" and final.get("done") == PLAN_VMS, final
    assert len(per_vm) == PLAN_VMS
    phases = [(m["metadata"]["name"], (m.get("status") or {}).get("phase")) for m in migrations]
    assert all(phase == "Succeeded" for _, phase in phases), phases

    vmis = await items(kube, VIRTUAL_MACHINE_INSTANCES, namespace)
    vms = await items(kube, VIRTUAL_MACHINES, namespace)
    assert sorted(v["metadata"]["name"] for v in vmis) == sorted(v["metadata"]["name"] for v in vms)
    assert len(vmis) == PLAN_VMS
    for vmi in vmis:
        status = vmi.get("status") or {}
        state = status.get("migrationState") or {}
        where = (vmi["metadata"]["name"], status.get("phase"), status.get("nodeName"), state)
        assert status.get("phase") == "Running" and status.get("nodeName") in OTHERS, where
        assert state.get("completed") and not state.get("failed"), where
        assert (state.get("sourceNode"), state.get("targetNode")) == (DRAINED, status["nodeName"]), where
    assert all((v.get("status") or {}).get("printableStatus") == "Running" for v in vms)
    everywhere = await items(kube, VIRTUAL_MACHINE_INSTANCES)
    left = [v["metadata"]["name"] for v in everywhere if (v.get("status") or {}).get("nodeName") == DRAINED]
    assert left == [], f"VMIs still on the drained node {DRAINED}: {left}"
    node = await kube.get(NODES, None, DRAINED)
    assert not node["spec"].get("unschedulable"), "uncordonWhenDone: the drained node is still cordoned"
    assert_healthy(operator_process, starts=2)
