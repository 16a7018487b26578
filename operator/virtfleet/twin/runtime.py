"""The twin's controller loop: watches kubevirt.io objects and Nodes, plays virt-controller,
virt-handler and the scheduler, and writes results back through the API server. SIMULATED KubeVirt."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from virtfleet.api.labels import DIRTY_RATE_ANNOTATION, matches
from virtfleet.api.quantity import QuantityError, parse_bytes
from virtfleet.core import precopy
from virtfleet.core.kubevirt import SpecError, launcher_requests
from virtfleet.core.status import differing
from virtfleet.kube.client import (
    MIGRATION_POLICIES,
    MIGRATIONS,
    NAMESPACES,
    NODES,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINES,
    ApiError,
    Conflict,
    Kube,
    NotFound,
    ResourceRef,
)
from virtfleet.twin import BANNER
from virtfleet.twin.clock import Clock
from virtfleet.twin.fleet import Fleet, node_manifests
from virtfleet.twin.lifecycle import FINAL_PHASES, VMIFacts, run_strategy, vm_status, vmi_action
from virtfleet.twin.scheduling import ClusterState, NodeInfo, Placement, PodView
from virtfleet.twin.workqueue import WorkQueue

log = logging.getLogger("virtfleet.twin")
JSON = dict[str, Any]

# Per-VMI knobs (set them in the VM template's metadata.annotations; they reach the VMI).
TWIN_DIRTY_RATE_ANNOTATION = "twin.virtfleet.io/dirty-rate"
# The operator's planner reads api.labels.DIRTY_RATE_ANNOTATION too, so its estimates and the twin's
# timings use the same rate.
FAIL_MIGRATION_AT = "twin.virtfleet.io/fail-migration-at"
FAIL_MIGRATIONS_COUNT = "twin.virtfleet.io/fail-migrations"
CRASH_ANNOTATION = "twin.virtfleet.io/crash"
NOT_MIGRATABLE = "twin.virtfleet.io/not-migratable"

MIGRATION_PHASES = ("Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running")
IN_FLIGHT = frozenset(MIGRATION_PHASES[1:])
# The target pod's set-up is split evenly between these phases, then Running begins.
SETUP_PHASES = ("Scheduled", "PreparingTarget", "TargetReady")


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


@dataclass
class MigrationRun:
    key: str
    vmi_key: str
    source: str
    task: asyncio.Task[None] | None = None
    target: str = ""


@dataclass
class Twin:
    kube: Kube
    fleet: Fleet
    clock: Clock
    workers: int = 16
    vms: dict[str, JSON] = field(default_factory=dict)
    vmis: dict[str, JSON] = field(default_factory=dict)
    vmims: dict[str, JSON] = field(default_factory=dict)
    policies: dict[str, JSON] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    state: ClusterState = field(default_factory=ClusterState)
    started_once: set[str] = field(default_factory=set)
    migrations: dict[str, MigrationRun] = field(default_factory=dict)
    _queue: WorkQueue[tuple[str, str]] = field(default_factory=WorkQueue)
    _boot_timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _node_failures: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _failed_attempts: dict[str, int] = field(default_factory=dict)
    _restarts: set[str] = field(default_factory=set)

    # -- start-up ------------------------------------------------------------------------------------

    async def ensure_nodes(self) -> None:
        """Create or update the fleet's Node objects (spec, labels, annotations and status)."""
        for manifest in node_manifests(self.fleet):
            name = manifest["metadata"]["name"]
            status = manifest.pop("status")
            try:
                await self.kube.create(NODES, None, manifest)
            except Conflict:
                await self.kube.patch(NODES, None, name, {k: manifest[k] for k in ("metadata", "spec")})
            status["conditions"] = [
                {**c, "lastHeartbeatTime": self.clock.stamp(), "lastTransitionTime": self.clock.stamp()}
                for c in status["conditions"]
            ]
            await self.kube.patch(NODES, None, name, {"status": status}, subresource="status")
            # Playing the node lifecycle controller: a Ready node loses the not-ready taint that
            # admission (TaintNodesByCondition) put on it at creation.
            await self.kube.patch(NODES, None, name, {"spec": {"taints": manifest["spec"]["taints"] or None}})
        log.info("%s: %d simulated nodes ready", BANNER, len(node_manifests(self.fleet)))

    async def run(self) -> None:
        log.info("%s: starting (time scale %s real s per simulated s)", BANNER, self.clock.time_scale)
        watched: list[tuple[ResourceRef, Callable[[str, JSON], None]]] = [
            (NAMESPACES, self._on_namespace),
            (NODES, self._on_node),
            (MIGRATION_POLICIES, self._on_policy),
            (VIRTUAL_MACHINE_INSTANCES, self._on_vmi),
            (VIRTUAL_MACHINES, self._on_vm),
            (MIGRATIONS, self._on_vmim),
        ]
        versions = {}
        for ref, handler in watched:
            listing = await self.kube.list(ref)
            for item in listing.get("items", []):
                handler("ADDED", item)
            versions[ref] = listing["metadata"]["resourceVersion"]
        self._adopt_running_migrations()
        tasks = [asyncio.create_task(self._watch(ref, versions[ref], handler)) for ref, handler in watched]
        tasks += [
            asyncio.create_task(self._queue.serve(self._process, self._report)) for _ in range(self.workers)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for run in self.migrations.values():
                if run.task:
                    run.task.cancel()

    async def _watch(self, ref: ResourceRef, version: str, handler: Callable[[str, JSON], None]) -> None:
        while True:
            try:
                async for event in self.kube.watch(ref, version):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        raise ApiError(status=obj.get("code", 500), reason=obj.get("message", ""))
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        handler(str(kind), obj)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # re-list and carry on, as informers do
                log.warning("%s: watch of %s broke (%s); re-listing", BANNER, ref.plural, error)
                await asyncio.sleep(0.5)
                listing = await self.kube.list(ref)
                for item in listing.get("items", []):
                    handler("MODIFIED", item)
                version = listing["metadata"]["resourceVersion"]

    def _report(self, key: tuple[str, str], error: Exception) -> None:
        if isinstance(error, NotFound | Conflict):
            return  # gone meanwhile, or a stale write: the next event brings the news
        log.error("%s: reconciling %s %s failed: %s", BANNER, key[0], key[1], error)

    # -- event handlers (update caches, enqueue work) -------------------------------------------------

    def _on_namespace(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.namespace_labels.pop(name, None)
        else:
            self.namespace_labels[name] = dict(obj["metadata"].get("labels") or {})

    def _on_policy(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.policies.pop(name, None)
        else:
            self.policies[name] = obj

    def _on_node(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.state.remove_node(name)
            return
        info = NodeInfo.from_node(obj)
        was = self.state.nodes.get(name)
        self.state.set_node(info)
        if not info.ready and name not in self._node_failures and (was is None or was.ready):
            grace = self.fleet.defaults.node_failure_grace_seconds * self.clock.time_scale
            self._node_failures[name] = asyncio.get_running_loop().call_later(grace, self._fail_node, name)
            log.info(
                "%s: node %s NotReady; its VMIs fail in %.0f simulated s",
                BANNER,
                name,
                self.fleet.defaults.node_failure_grace_seconds,
            )
        elif info.ready and name in self._node_failures:
            self._node_failures.pop(name).cancel()
        self._requeue_pending()

    def _on_vm(self, kind: str, obj: JSON) -> None:
        key = _key(obj)
        if kind == "DELETED":
            self.vms.pop(key, None)
            return
        self.vms[key] = obj
        self._queue.add(("vm", key))

    def _on_vmi(self, kind: str, obj: JSON) -> None:
        key = _key(obj)
        if kind == "DELETED":
            self.vmis.pop(key, None)
            if self.state.remove(key):
                self._requeue_pending()
            timer = self._boot_timers.pop(key, None)
            if timer:
                timer.cancel()
        else:
            self.vmis[key] = obj
            self._track_placement(key, obj)
            self._queue.add(("vmi", key))
        self._queue.add(("vm", key))

    def _on_vmim(self, kind: str, obj: JSON) -> None:
        key = _key(obj)
        if kind == "DELETED":
            self.vmims.pop(key, None)
            run = self.migrations.get(key)
            if run and run.task and not run.task.done():
                run.task.cancel()  # deleting a running VMIM aborts the migration
        else:
            self.vmims[key] = obj
        self._queue.add(("vmim", key))
        self._queue.add(("dispatch", ""))

    def _track_placement(self, key: str, vmi: JSON) -> None:
        """Keep the scheduler cache in line with VMIs written by others or before a restart."""
        status = vmi.get("status") or {}
        node = status.get("nodeName")
        if not node or status.get("phase") in FINAL_PHASES:
            if self.state.remove(key):
                self._requeue_pending()
            return
        placed = self.state.placements.get(key)
        if placed is not None and placed.node == node:
            return
        pod = self._pod(key, vmi)
        if pod is not None:
            self.state.place(Placement(pod, node))

    def _requeue_pending(self) -> None:
        for key, vmi in self.vmis.items():
            if (vmi.get("status") or {}).get("phase") in ("Pending", "Scheduling") and not (
                vmi.get("status") or {}
            ).get("nodeName"):
                self._queue.add(("vmi", key))
        self._queue.add(("dispatch", ""))

    # -- reconcile -----------------------------------------------------------------------------------

    async def _process(self, item: tuple[str, str]) -> None:
        kind, key = item
        handlers: dict[str, Callable[[str], Awaitable[None]]] = {
            "vm": self._reconcile_vm,
            "vmi": self._reconcile_vmi,
            "vmim": self._reconcile_vmim,
            "dispatch": self._dispatch_migrations,
        }
        await handlers[kind](key)

    def _pod(
        self, key: str, vmi: JSON, suffix: str = "", added: Mapping[str, str] | None = None
    ) -> PodView | None:
        spec = vmi.get("spec") or {}
        try:
            requests = launcher_requests(spec, self.fleet.cluster.cpu_allocation_ratio)
        except SpecError as error:
            log.warning("%s: %s cannot be scheduled: %s", BANNER, key, error)
            return None
        meta = vmi["metadata"]
        return PodView.from_vmi(
            key + suffix, meta.get("namespace", ""), meta.get("labels") or {}, spec, requests, added
        )

    def _vmi_facts(self, key: str) -> VMIFacts:
        vmi = self.vmis.get(key)
        if vmi is None:
            return VMIFacts(exists=False)
        status = vmi.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        scheduled = conditions.get("PodScheduled") or {}
        migration = status.get("migrationState") or {}
        return VMIFacts(
            exists=True,
            phase=str(status.get("phase") or ""),
            deleting=bool(vmi["metadata"].get("deletionTimestamp")),
            unschedulable_reason=scheduled.get("message", "") if scheduled.get("status") == "False" else "",
            migrating=bool(migration.get("startTimestamp")) and not migration.get("completed"),
            ready=(conditions.get("Ready") or {}).get("status") == "True",
        )

    async def _reconcile_vm(self, key: str) -> None:
        vm = self.vms.get(key)
        if vm is None:
            return
        namespace, name = key.split("/", 1)
        strategy = run_strategy(vm)
        facts = self._vmi_facts(key)
        uid = vm["metadata"].get("uid", "")
        if facts.exists:
            self.started_once.add(uid)
        started_before = (uid in self.started_once and uid not in self._restarts) or (
            facts.exists and facts.phase in FINAL_PHASES
        )
        action = vmi_action(strategy, facts, started_before)
        if action == "create":
            await self._create_vmi(vm)
            self.started_once.add(uid)
            self._restarts.discard(uid)
        elif action == "delete":
            if facts.phase in FINAL_PHASES and strategy in ("Always", "RerunOnFailure"):
                self._restarts.add(uid)  # the VM controller starts a fresh VMI once this one is gone
            vmi = self.vmis[key]
            with contextlib.suppress(NotFound, Conflict):  # gone already, or a new VMI of the same name
                await self.kube.delete(VIRTUAL_MACHINE_INSTANCES, namespace, name, uid=vmi["metadata"]["uid"])
        facts = self._vmi_facts(key)
        current = vm.get("status") or {}
        desired = vm_status(vm, facts, self.clock.stamp(), current)
        if differing(desired, current):
            updated = await self.kube.patch(
                VIRTUAL_MACHINES, namespace, name, {"status": desired}, subresource="status"
            )
            self.vms[key] = updated

    async def _create_vmi(self, vm: JSON) -> None:
        meta = vm["metadata"]
        key = _key(vm)
        template = copy.deepcopy((vm.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}), "kubevirt.io/created-by-twin": "true"}
        labels["vm.kubevirt.io/name"] = meta["name"]
        vmi: JSON = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "kubevirt.io/v1",
                        "kind": "VirtualMachine",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec") or {},
        }
        now = self.clock.stamp()
        pod = self._pod(key, vmi)
        decision = self.state.schedule(pod) if pod is not None else None
        transitions = [{"phase": "Pending", "phaseTransitionTimestamp": now}]
        if pod is not None and decision is not None and decision.node:
            transitions += [
                {"phase": "Scheduling", "phaseTransitionTimestamp": now},
                {"phase": "Scheduled", "phaseTransitionTimestamp": now},
            ]
            vmi["status"] = {
                "phase": "Scheduled",
                "nodeName": decision.node,
                "phaseTransitionTimestamps": transitions,
                "conditions": [_condition("PodScheduled", "True", "", "", now)],
                "qosClass": "Guaranteed" if pod.requests.dedicated else "Burstable",
            }
            self.state.place(Placement(pod, decision.node, decision.cpuset, decision.cell))
        else:
            reason = decision.reason if decision else "the VMI spec cannot be rendered into a pod"
            vmi["status"] = {
                "phase": "Pending",
                "phaseTransitionTimestamps": transitions,
                "conditions": [_condition("PodScheduled", "False", "Unschedulable", reason, now)],
            }
        try:
            created = await self.kube.create(VIRTUAL_MACHINE_INSTANCES, meta["namespace"], vmi)
        except ApiError as error:
            self.state.remove(key)
            if isinstance(error, Conflict):
                return  # it exists; its watch event will bring it
            raise
        self.vmis[key] = created
        self._arm_boot(key)

    def _arm_boot(self, key: str) -> None:
        vmi = self.vmis.get(key)
        if vmi is None or (vmi.get("status") or {}).get("phase") != "Scheduled" or key in self._boot_timers:
            return
        delay = self.fleet.defaults.boot_seconds * self.clock.time_scale

        def due() -> None:
            self._boot_timers.pop(key, None)
            self._queue.add(("vmi", key))

        self._boot_timers[key] = asyncio.get_running_loop().call_later(delay, due)

    async def _reconcile_vmi(self, key: str) -> None:
        vmi = self.vmis.get(key)
        if vmi is None or vmi["metadata"].get("deletionTimestamp"):
            return
        status = vmi.get("status") or {}
        phase = status.get("phase")
        annotations = vmi["metadata"].get("annotations") or {}
        now = self.clock.stamp()
        if phase in ("Running", "Scheduled") and annotations.get(CRASH_ANNOTATION) == "true":
            await self._finish_vmi(key, "Failed", "GuestCrashed", "simulated guest crash (twin fault)")
            return
        if phase == "Pending" and not status.get("nodeName"):
            pod = self._pod(key, vmi)
            if pod is None:
                return
            decision = self.state.schedule(pod)
            if decision.node is None:
                old: JSON = next(
                    (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
                )
                if old.get("message") != decision.reason:
                    await self._patch_vmi(
                        key,
                        {
                            "status": {
                                "conditions": [
                                    _condition("PodScheduled", "False", "Unschedulable", decision.reason, now)
                                ]
                            }
                        },
                    )
                return
            self.state.place(Placement(pod, decision.node, decision.cpuset, decision.cell))
            transitions = [
                *status.get("phaseTransitionTimestamps", []),
                {"phase": "Scheduling", "phaseTransitionTimestamp": now},
                {"phase": "Scheduled", "phaseTransitionTimestamp": now},
            ]
            try:
                await self._patch_vmi(
                    key,
                    {
                        "status": {
                            "phase": "Scheduled",
                            "nodeName": decision.node,
                            "phaseTransitionTimestamps": transitions,
                            "conditions": [_condition("PodScheduled", "True", "", "", now)],
                            "qosClass": "Guaranteed" if pod.requests.dedicated else "Burstable",
                        }
                    },
                )
            except Exception:
                self.state.remove(key)
                raise
            self._arm_boot(key)
            return
        if phase == "Scheduled":
            if key in self._boot_timers:
                return
            started = self._phase_time(status, "Scheduled")
            elapsed = self.clock.seconds() - started if started is not None else None
            if elapsed is not None and elapsed < self.fleet.defaults.boot_seconds:
                self._arm_boot(key)
                return
            migratable, why = self._live_migratable(vmi)
            transitions = [
                *status.get("phaseTransitionTimestamps", []),
                {"phase": "Running", "phaseTransitionTimestamp": now},
            ]
            await self._patch_vmi(
                key,
                {
                    "status": {
                        "phase": "Running",
                        "phaseTransitionTimestamps": transitions,
                        "conditions": [
                            _condition("PodScheduled", "True", "", "", now),
                            _condition("Ready", "True", "", "", now),
                            _condition(
                                "LiveMigratable",
                                "True" if migratable else "False",
                                "" if migratable else "NotMigratable",
                                why,
                                now,
                            ),
                        ],
                    }
                },
            )

    def _phase_time(self, status: Mapping[str, Any], phase: str) -> float | None:
        for entry in reversed(status.get("phaseTransitionTimestamps") or []):
            if entry.get("phase") == phase:
                at = datetime.fromisoformat(entry["phaseTransitionTimestamp"].replace("Z", "+00:00"))
                return (at - self.clock.now()).total_seconds() + self.clock.seconds()
        return None

    @staticmethod
    def _live_migratable(vmi: JSON) -> tuple[bool, str]:
        spec = vmi.get("spec") or {}
        annotations = vmi["metadata"].get("annotations") or {}
        devices = (spec.get("domain") or {}).get("devices") or {}
        if annotations.get(NOT_MIGRATABLE):
            return False, str(annotations[NOT_MIGRATABLE])
        if devices.get("hostDevices") or devices.get("gpus"):
            return False, "VMI uses a host device or GPU, which cannot be live migrated"
        if any("sriov" in iface for iface in devices.get("interfaces") or []):
            return False, "VMI uses an SR-IOV interface, which cannot be live migrated"
        return True, ""

    async def _patch_vmi(self, key: str, body: JSON) -> None:
        namespace, name = key.split("/", 1)
        updated = await self.kube.patch(VIRTUAL_MACHINE_INSTANCES, namespace, name, body)
        self.vmis[key] = updated
        self._track_placement(key, updated)
        self._queue.add(("vm", key))

    async def _finish_vmi(self, key: str, phase: str, reason: str, message: str) -> None:
        vmi = self.vmis.get(key)
        if vmi is None:
            return
        status = vmi.get("status") or {}
        now = self.clock.stamp()
        transitions = [
            *status.get("phaseTransitionTimestamps", []),
            {"phase": phase, "phaseTransitionTimestamp": now},
        ]
        await self._patch_vmi(
            key,
            {
                "status": {
                    "phase": phase,
                    "reason": reason,
                    "phaseTransitionTimestamps": transitions,
                    "conditions": [_condition("Ready", "False", reason, message, now)],
                }
            },
        )
        log.info("%s: VMI %s %s: %s", BANNER, key, phase, message)

    def _fail_node(self, node: str) -> None:
        self._node_failures.pop(node, None)
        for placed in self.state.pods_on(node):
            if "@" not in placed.pod.key:
                asyncio.get_running_loop().create_task(
                    self._finish_vmi(
                        placed.pod.key,
                        "Failed",
                        "NodeUnresponsive",
                        f"simulated node {node} stopped responding",
                    )
                )

    # -- migrations ----------------------------------------------------------------------------------

    def _adopt_running_migrations(self) -> None:
        """After a twin restart, migrations that were in flight cannot resume: they fail on the next pass."""
        for key, vmim in self.vmims.items():
            if (vmim.get("status") or {}).get("phase") in IN_FLIGHT:
                self.migrations[key] = MigrationRun(key, "", "", None)

    async def _reconcile_vmim(self, key: str) -> None:
        vmim = self.vmims.get(key)
        if vmim is None:
            self.migrations.pop(key, None)
            return
        status = vmim.get("status") or {}
        run = self.migrations.get(key)
        if not status.get("phase"):
            await self._set_migration_phase(key, "Pending")
        elif status.get("phase") in IN_FLIGHT and run is not None and run.task is None and not run.vmi_key:
            await self._set_migration_phase(key, "Failed", failure="the simulated virt-handler restarted")

    async def _dispatch_migrations(self, _: str) -> None:
        cluster = self.fleet.cluster
        active = [r for r in self.migrations.values() if r.task is not None and not r.task.done()]
        outbound: dict[str, int] = {}
        for run in active:
            outbound[run.source] = outbound.get(run.source, 0) + 1
        pending = sorted(
            (
                v
                for k, v in self.vmims.items()
                if (v.get("status") or {}).get("phase") == "Pending" and k not in self.migrations
            ),
            key=lambda v: (v["metadata"].get("creationTimestamp", ""), v["metadata"]["name"]),
        )
        for vmim in pending:
            if len(active) >= cluster.parallel_migrations_per_cluster:
                return
            key = _key(vmim)
            namespace = vmim["metadata"]["namespace"]
            vmi_key = f"{namespace}/{(vmim.get('spec') or {}).get('vmiName', '')}"
            vmi = self.vmis.get(vmi_key)
            source = ((vmi or {}).get("status") or {}).get("nodeName", "")
            if vmi is not None and outbound.get(source, 0) >= cluster.parallel_outbound_migrations_per_node:
                continue
            run = MigrationRun(key, vmi_key, source)
            self.migrations[key] = run
            run.task = asyncio.create_task(self._migrate(run, vmim))
            run.task.add_done_callback(lambda _t: self._queue.add(("dispatch", "")))
            active.append(run)
            outbound[source] = outbound.get(source, 0) + 1

    async def _set_migration_phase(
        self,
        key: str,
        phase: str,
        failure: str = "",
        migration_state: JSON | None = None,
        at: float | None = None,
    ) -> None:
        """`at` (simulated seconds) stamps the transition when the model says it happened, not when a busy
        event loop got to it: a stall of the host must not show up as a slower KubeVirt."""
        vmim = self.vmims.get(key)
        if vmim is None:
            return
        namespace, name = key.split("/", 1)
        status = vmim.get("status") or {}
        transitions = [
            *status.get("phaseTransitionTimestamps", []),
            {
                "phase": phase,
                "phaseTransitionTimestamp": self.clock.stamp(None if at is None else self.clock.at(at)),
            },
        ]
        body: JSON = {"phase": phase, "phaseTransitionTimestamps": transitions}
        if migration_state is not None:
            body["migrationState"] = migration_state
        try:
            updated = await self.kube.patch(
                MIGRATIONS, namespace, name, {"status": body}, subresource="status"
            )
        except NotFound:
            return
        self.vmims[key] = updated
        if failure:
            log.info("%s: migration %s failed: %s", BANNER, key, failure)

    def _policy_for(self, vmi: JSON) -> tuple[str, JSON]:
        labels = vmi["metadata"].get("labels") or {}
        namespace_labels = self.namespace_labels.get(vmi["metadata"]["namespace"], {})
        found: list[tuple[int, str, JSON]] = []
        for name, policy in self.policies.items():
            selectors = (policy.get("spec") or {}).get("selectors") or {}
            vmi_selector = selectors.get("virtualMachineInstanceSelector") or {}
            ns_selector = selectors.get("namespaceSelector") or {}
            if matches(labels, vmi_selector) and matches(namespace_labels, ns_selector):
                found.append((len(vmi_selector) + len(ns_selector), name, policy.get("spec") or {}))
        if not found:
            return "", {}
        # KubeVirt applies the policy that matches the most labels; ties go to the first name.
        _, name, spec = min(found, key=lambda m: (-m[0], m[1]))
        return name, spec

    def _inputs(self, vmi: JSON, source_node: str) -> tuple[precopy.MigrationInputs, str]:
        cluster = self.fleet.cluster
        policy_name, policy = self._policy_for(vmi)
        annotations = vmi["metadata"].get("annotations") or {}
        requests = launcher_requests(vmi.get("spec") or {}, cluster.cpu_allocation_ratio)
        try:
            dirty = parse_bytes(
                annotations.get(TWIN_DIRTY_RATE_ANNOTATION)
                or annotations.get(DIRTY_RATE_ANNOTATION)
                or self.fleet.defaults.dirty_rate
            )
        except QuantityError:
            dirty = parse_bytes(self.fleet.defaults.dirty_rate)
        node = self.state.nodes.get(source_node)
        link = (node.bandwidth if node and node.bandwidth else None) or parse_bytes(
            self.fleet.defaults.migration_bandwidth
        )
        cap = parse_bytes(str(policy.get("bandwidthPerMigration") or cluster.bandwidth_per_migration))
        bandwidth = min(link, cap) if cap > 0 else link
        inputs = precopy.MigrationInputs(
            memory_bytes=requests.guest_memory_bytes,
            dirty_rate_bps=dirty,
            bandwidth_bps=bandwidth,
            max_downtime_s=int(policy.get("maxDowntimeMs") or cluster.max_downtime_ms) / 1000,
            allow_post_copy=bool(policy.get("allowPostCopy", cluster.allow_post_copy)),
            allow_auto_converge=bool(policy.get("allowAutoConverge", cluster.allow_auto_converge)),
            completion_timeout_per_gib=int(
                policy.get("completionTimeoutPerGiB") or cluster.completion_timeout_per_gib
            ),
            setup_s=self.fleet.defaults.migration_setup_seconds,
        )
        return inputs, policy_name

    def _injected_failure(self, vmim: JSON, vmi: JSON) -> str:
        """The phase at which this attempt is made to fail, or ""."""
        annotations = vmi["metadata"].get("annotations") or {}
        at = annotations.get(FAIL_MIGRATION_AT, "")
        if at:
            limit = annotations.get(FAIL_MIGRATIONS_COUNT)
            attempts = self._failed_attempts.get(_key(vmi), 0)
            if limit is None or attempts < int(limit):
                return str(at)
        rate = self.fleet.faults.migration_failure_rate
        if rate > 0:
            digest = hashlib.sha256(f"{self.fleet.faults.seed}:{vmim['metadata'].get('uid', '')}".encode())
            if int.from_bytes(digest.digest()[:8], "big") / 2**64 < rate:
                return "Running"
        return ""

    async def _migrate(self, run: MigrationRun, vmim: JSON) -> None:
        key, vmi_key = run.key, run.vmi_key
        vmi = self.vmis.get(vmi_key)
        target_key = f"{vmi_key}@target"
        migration_state: JSON = {}
        try:
            if vmi is None or (vmi.get("status") or {}).get("phase") != "Running":
                await self._set_migration_phase(key, "Failed", failure=f"VMI {vmi_key} is not running")
                return
            migratable, why = self._live_migratable(vmi)
            if not migratable:
                await self._set_migration_phase(key, "Failed", failure=f"VMI is not live migratable: {why}")
                return
            fail_at = self._injected_failure(vmim, vmi)
            inputs, policy_name = self._inputs(vmi, run.source)
            added = (vmim.get("spec") or {}).get("addedNodeSelector") or {}
            pod = self._pod(vmi_key, vmi, "@target", added)
            scheduling_at = self.clock.seconds()
            await self._set_migration_phase(key, "Scheduling", at=scheduling_at)
            if fail_at == "Scheduling":
                raise InjectedFailureError("Scheduling")
            waited = 0.0
            while True:
                decision = self.state.schedule(pod, exclude=[run.source]) if pod else None
                if decision is not None and decision.node:
                    break
                if waited >= self.fleet.cluster.unschedulable_timeout_seconds:
                    reason = decision.reason if decision else "no pod"
                    raise MigrationFailedError(f"target pod unschedulable: {reason}")
                await self.clock.sleep(5)
                waited += 5
            assert pod is not None
            run.target = decision.node
            self.state.place(Placement(pod, decision.node, decision.cpuset, decision.cell))
            # Follow the planned timeline from the moment scheduling succeeded (the first try, unless the
            # twin really waited for room), so neither time spent writing nor a stalled event loop
            # stretches the set-up or the copy beyond the model.
            setup_started = scheduling_at + waited
            step = inputs.setup_s / (len(SETUP_PHASES) + 1)
            for index, phase in enumerate(SETUP_PHASES, start=1):
                await self.clock.sleep(setup_started + index * step - self.clock.seconds())
                if fail_at == phase:
                    raise InjectedFailureError(phase)
                await self._set_migration_phase(key, phase, at=setup_started + index * step)
            running_at = setup_started + inputs.setup_s
            await self.clock.sleep(running_at - self.clock.seconds())
            estimate = precopy.estimate(precopy.MigrationInputs(**{**inputs.__dict__, "setup_s": 0.0}))
            migration_state = {
                "sourceNode": run.source,
                "targetNode": run.target,
                "startTimestamp": self.clock.stamp(self.clock.at(running_at)),
                "mode": "PreCopy",
                "migrationUid": vmim["metadata"].get("uid", ""),
                "targetPod": f"virt-launcher-{vmi['metadata']['name']}-target",
                "abortRequested": False,
                "completed": False,
                "failed": False,
            }
            if policy_name:
                migration_state["migrationPolicyName"] = policy_name
            await self._set_migration_phase(key, "Running", migration_state=migration_state, at=running_at)
            await self._patch_vmi(vmi_key, {"status": {"migrationState": migration_state}})
            if fail_at == "Running":
                await self.clock.sleep(estimate.duration_s / 2)
                raise InjectedFailureError("Running")
            if estimate.mode == "PostCopy":
                # Pre-copy until KubeVirt's completion timeout, then the guest runs on the target.
                await self.clock.sleep(running_at + inputs.completion_timeout_s - self.clock.seconds())
                migration_state = {**migration_state, "mode": "PostCopy"}
                await self._patch_vmi(vmi_key, {"status": {"migrationState": migration_state}})
                await self.clock.sleep(running_at + estimate.duration_s - self.clock.seconds())
            else:
                await self.clock.sleep(running_at + estimate.duration_s - self.clock.seconds())
            if not estimate.succeeded:
                raise MigrationFailedError(estimate.failure_reason)
            # Success: the VMI now runs on the target.
            done_at = running_at + estimate.duration_s
            ended = self.clock.stamp(self.clock.at(done_at))
            migration_state = {**migration_state, "completed": True, "endTimestamp": ended}
            self.state.remove(target_key)
            self.state.remove(vmi_key)
            self.state.place(
                Placement(
                    PodView(
                        vmi_key,
                        pod.namespace,
                        pod.labels,
                        pod.requests,
                        pod.node_selector,
                        pod.affinity,
                        pod.tolerations,
                        pod.spread,
                    ),
                    run.target,
                    decision.cpuset,
                    decision.cell,
                )
            )
            await self._patch_vmi(
                vmi_key, {"status": {"nodeName": run.target, "migrationState": migration_state}}
            )
            await self._set_migration_phase(key, "Succeeded", migration_state=migration_state, at=done_at)
            self._requeue_pending()
        except asyncio.CancelledError:
            self.state.remove(target_key)
            if migration_state:
                aborted = {
                    **migration_state,
                    "abortRequested": True,
                    "abortStatus": "Succeeded",
                    "completed": True,
                    "failed": True,
                    "failureReason": "migration aborted",
                    "endTimestamp": self.clock.stamp(),
                }
                asyncio.get_running_loop().create_task(
                    self._patch_vmi(vmi_key, {"status": {"migrationState": aborted}})
                )
            log.info("%s: migration %s aborted", BANNER, key)
            raise
        except (InjectedFailureError, MigrationFailedError) as failure:
            self.state.remove(target_key)
            self._failed_attempts[vmi_key] = self._failed_attempts.get(vmi_key, 0) + 1
            if migration_state:
                migration_state = {
                    **migration_state,
                    "completed": True,
                    "failed": True,
                    "failureReason": str(failure),
                    "endTimestamp": self.clock.stamp(),
                }
                await self._patch_vmi(vmi_key, {"status": {"migrationState": migration_state}})
            await self._set_migration_phase(
                key, "Failed", failure=str(failure), migration_state=migration_state or None
            )
            self._requeue_pending()


class MigrationFailedError(Exception):
    """The simulated migration failed on its own terms (timeout, no target)."""


class InjectedFailureError(Exception):
    """A failure a test asked for."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"injected failure at phase {phase} (twin fault)")


def _condition(type_: str, status: str, reason: str, message: str, now: str) -> JSON:
    condition: JSON = {"type": type_, "status": status, "lastTransitionTime": now}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition
