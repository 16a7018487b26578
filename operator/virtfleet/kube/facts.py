"""Compact facts the operator keeps in kopf indexes, parsed from the API's objects: small frozen records,
never whole objects, so thousands of VMs cost kilobytes, not megabytes. Every parser of an object the
API returns lives here; the records themselves are the core's types."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from virtfleet.api.labels import (
    ATTEMPT_LABEL,
    COLD_MOVE_ANNOTATION,
    DIRTY_RATE_ANNOTATION,
    HOSTNAME_LABEL,
    ORDINAL_LABEL,
    POOL_HASH_ANNOTATION,
    PRIORITY_ANNOTATION,
    REVISION_LABEL,
    VM_ANNOTATION,
)
from virtfleet.api.migrationplan import ColdStage
from virtfleet.api.quantity import QuantityError, parse_bytes, parse_millicores
from virtfleet.core import plan_executor
from virtfleet.core.capacity import Placed
from virtfleet.core.kubevirt import SpecError, launcher_requests
from virtfleet.core.plan_executor import Attempt, ColdMove
from virtfleet.core.pools import Member

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# virt-launcher pods are the VMIs themselves, counted from the VMI (placed_of) before their pod exists.
LAUNCHER = ("kubevirt.io", "virt-launcher")
POD_DONE = ("Succeeded", "Failed")


def parse_time(text: str | None) -> datetime:
    if not text:
        return EPOCH
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def other_pod_of(body: Mapping[str, Any]) -> tuple[str, tuple[int, int]] | None:
    """(node, (cpu millicores, memory bytes)) a bound pod that is not a VM requests, as kube-scheduler
    counts it; None for VMs' launcher pods, pods not bound or finished, and pods that request nothing."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (meta.get("labels") or {}).get(LAUNCHER[0]) == LAUNCHER[1]:
        return None
    if (body.get("status") or {}).get("phase") in POD_DONE:
        return None
    cpu, memory = pod_requests(spec)
    return (str(node), (cpu, memory)) if cpu or memory else None


def pod_requests(spec: Mapping[str, Any]) -> tuple[int, int]:
    """A pod's effective requests: its containers and sidecars, or its largest init step if larger, plus
    its runtime overhead; pod-level resources win where set (Kubernetes' PodRequests)."""
    pod_level = _requests((spec.get("resources") or {}).get("requests") or {})
    app = [0, 0]
    for container in spec.get("containers") or []:
        app = _add(app, _container_requests(container))
    sidecars, init_peak = [0, 0], [0, 0]
    for container in spec.get("initContainers") or []:
        needs = _container_requests(container)
        if container.get("restartPolicy") == "Always":
            sidecars = _add(sidecars, needs)
        else:
            init_peak = [max(a, b) for a, b in zip(init_peak, _add(sidecars, needs), strict=True)]
    effective = [max(a, b) for a, b in zip(_add(app, sidecars), init_peak, strict=True)]
    effective = [level or own for level, own in zip(pod_level, effective, strict=True)]
    cpu, memory = _add(effective, _requests(spec.get("overhead") or {}))
    return cpu, memory


def _container_requests(container: Mapping[str, Any]) -> list[int]:
    return _requests((container.get("resources") or {}).get("requests") or {})


def _requests(requests: Mapping[str, Any]) -> list[int]:
    try:
        return [
            parse_millicores(str(requests.get("cpu", "0"))),
            parse_bytes(str(requests.get("memory", "0"))),
        ]
    except QuantityError:
        return [0, 0]  # the API server validated it; a form we cannot read counts as nothing, not a crash


def _add(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


def member_of(body: Mapping[str, Any]) -> Member | None:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        ordinal = int(labels.get(ORDINAL_LABEL, "-1"))
    except ValueError:
        return None
    if ordinal < 0:
        return None
    status = body.get("status") or {}
    return Member(
        name=str(meta.get("name", "")),
        ordinal=ordinal,
        revision=str(labels.get(REVISION_LABEL, "")),
        pool_hash=str((meta.get("annotations") or {}).get(POOL_HASH_ANNOTATION, "")),
        ready=bool(status.get("ready")),
        created=parse_time(meta.get("creationTimestamp")),
        uid=str(meta.get("uid", "")),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def placed_of(body: Mapping[str, Any], cpu_allocation_ratio: float) -> Placed | None:
    status = body.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    meta = body.get("metadata") or {}
    try:
        requests = launcher_requests(body.get("spec") or {}, cpu_allocation_ratio)
    except SpecError:
        return None
    migratable = next(
        (
            c.get("status") != "False"
            for c in status.get("conditions") or []
            if c.get("type") == "LiveMigratable"
        ),
        True,
    )
    wanted = {DIRTY_RATE_ANNOTATION, PRIORITY_ANNOTATION}
    spec = body.get("spec") or {}
    anti = ((spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or []
    spread = next(
        ((str(c.get("topologyKey")), int(c.get("maxSkew") or 1))
         for c in spec.get("topologySpreadConstraints") or [] if c.get("whenUnsatisfiable") == "DoNotSchedule"),
        None,
    )  # fmt: skip
    return Placed(
        f"{meta.get('namespace')}/{meta.get('name')}",
        status.get("nodeName") or None,
        requests,
        labels=tuple(sorted((meta.get("labels") or {}).items())),
        live_migratable=migratable,
        annotations=tuple(sorted((k, v) for k, v in (meta.get("annotations") or {}).items() if k in wanted)),
        node_selector=tuple(sorted((spec.get("nodeSelector") or {}).items())),
        anti_affinity=any(t.get("topologyKey") == HOSTNAME_LABEL for t in anti),
        spread=spread,
        running=status.get("phase") == "Running",
    )


# -- a MigrationPlan's migrations and cold moves ------------------------------------------------------


def attempt_of(body: Mapping[str, Any]) -> Attempt | None:
    """A plan's VirtualMachineInstanceMigration as the executor needs it."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        number = int(labels.get(ATTEMPT_LABEL, ""))
    except ValueError:
        return None
    vm = (meta.get("annotations") or {}).get(VM_ANNOTATION) or (body.get("spec") or {}).get("vmiName")
    if not vm:
        return None
    status = body.get("status") or {}
    stamps: dict[str, datetime] = {}
    for transition in status.get("phaseTransitionTimestamps") or []:
        stamps.setdefault(
            str(transition.get("phase")), parse_time(transition.get("phaseTransitionTimestamp"))
        )
    phase = str(status.get("phase") or "")
    migration = status.get("migrationState") or {}
    return Attempt(
        vm=str(vm),
        number=number,
        name=str(meta.get("name", "")),
        phase=phase,
        created=parse_time(meta.get("creationTimestamp")),
        started=stamps.get("Scheduling"),
        copying=stamps.get("Running"),
        finished=stamps.get(phase) if phase in plan_executor.VMIM_DONE else None,
        failure=str(migration.get("failureReason") or ("the migration failed" if phase == "Failed" else "")),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def in_flight_of(body: Mapping[str, Any]) -> str | None:
    """Any migration KubeVirt has not finished: `namespace/vmi`, for KubeVirt's cluster-wide limits."""
    phase = (body.get("status") or {}).get("phase") or ""
    if phase in plan_executor.VMIM_DONE:
        return None
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{(body.get('spec') or {}).get('vmiName', '')}"


def cold_move_of(body: Mapping[str, Any]) -> tuple[str, ColdMove] | None:
    """(plan UID, the move) from a VM's cold-move annotation."""
    meta = body.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(COLD_MOVE_ANNOTATION)
    try:
        record = json.loads(raw or "")
        move = ColdMove(
            vm=str(meta.get("name", "")),
            attempt=int(record["attempt"]),
            target=str(record["target"]),
            run_strategy=str(record["runStrategy"]),
            started=parse_time(record["startedAt"]),
            # A stage we never write (a hand edit) reads as a move still starting, as it always has.
            stage=ColdStage(record["stage"]) if record["stage"] in set(ColdStage) else ColdStage.STARTING,
            failure=str(record.get("failure", "")),
            finished=parse_time(record["finishedAt"]) if record.get("finishedAt") else None,
            halted=(body.get("spec") or {}).get("runStrategy") == "Halted",
            abandon=str(record.get("abandon", "")),
        )
        return str(record["plan"]), move
    except (ValueError, KeyError, TypeError):
        return None
