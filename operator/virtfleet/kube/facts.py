"""Compact facts the operator keeps in kopf indexes: small frozen records, never whole objects, so
thousands of VMs cost kilobytes, not megabytes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from virtfleet.api.labels import (
    DIRTY_RATE_ANNOTATION,
    HOSTNAME_LABEL,
    ORDINAL_LABEL,
    POOL_HASH_ANNOTATION,
    PRIORITY_ANNOTATION,
    REVISION_LABEL,
)
from virtfleet.core.kubevirt import LauncherRequests, SpecError, launcher_requests
from virtfleet.core.pools import Member

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str | None) -> datetime:
    if not text:
        return EPOCH
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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


@dataclass(frozen=True)
class Placed:
    """A VMI's footprint: where it runs (None: not yet) and what it requests, plus what a migration plan
    needs to know of it."""

    key: str
    node: str | None
    requests: LauncherRequests
    labels: tuple[tuple[str, str], ...] = ()
    live_migratable: bool = True
    annotations: tuple[tuple[str, str], ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    anti_affinity: bool = False  # a required pod anti-affinity on the hostname
    spread: tuple[str, int] | None = None  # the first DoNotSchedule topology spread: (key, maxSkew)
    running: bool = False  # status.phase Running (a placed VMI may still be Scheduled, booting)


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


@dataclass(frozen=True)
class TemplateFacts:
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    current_revision: str | None


@dataclass(frozen=True)
class RevisionFacts:
    name: str
    template: str
    digest: str
    number: int
    spec: Mapping[str, Any]
