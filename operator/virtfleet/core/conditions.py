"""Kubernetes conditions, kstatus style, computed without I/O.

lastTransitionTime only moves when a condition's status changes, so re-computing the same state yields
the same list and a no-op reconcile writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from virtfleet.api.timestamps import stamp_seconds

Status = Literal["True", "False", "Unknown"]

# Condition types shared by every kind.
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
# kstatus: True means the object cannot make progress without a change by a person.
STALLED = "Stalled"
# kstatus: True while the controller is working towards the spec.
RECONCILING = "Reconciling"
# Run-to-completion kinds (MigrationPlan): Unknown while running, then True or False for good.
SUCCEEDED = "Succeeded"


@dataclass(frozen=True)
class Desired:
    """A condition the reconciler wants; the time fields are filled in by merge()."""

    type: str
    status: Status
    reason: str
    message: str = ""


def merge(
    current: Iterable[Mapping[str, Any]] | None,
    desired: Iterable[Desired],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions list after applying `desired`: other types are kept, order is stable."""
    existing = {c["type"]: dict(c) for c in current or () if "type" in c}
    result = dict(existing)
    for want in desired:
        before = existing.get(want.type)
        if before is not None and before.get("status") == want.status and before.get("lastTransitionTime"):
            transition = before["lastTransitionTime"]
        else:
            transition = stamp_seconds(now)
        entry: dict[str, Any] = {
            "type": want.type,
            "status": want.status,
            "reason": want.reason,
            "message": want.message,
            "lastTransitionTime": transition,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        result[want.type] = entry
    return [result[t] for t in sorted(result)]


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None
