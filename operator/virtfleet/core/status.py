"""What every kind's reconcile shares: the object it is about, the one diff that makes a merge patch of
its status, and the timestamps status and records carry (RFC 3339, UTC, with 'Z')."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class ObjectInputs:
    """The object one reconcile is about, as kopf's body shows it; each kind's inputs add what its
    decision reads from kopf's indexes."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]


def differing(desired: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level fields of `desired` that differ from `current`: what a merge patch must write, and
    nothing when they agree (a no-op reconcile writes nothing). A None value removes a field."""
    return {k: v for k, v in desired.items() if current.get(k) != v}


def stamp(at: datetime | None) -> str | None:
    """A timestamp to the millisecond: a plan's times, which its durations are computed from."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if at else None


def stamp_seconds(at: datetime) -> str:
    """A timestamp to the second, as Kubernetes writes metav1.Time: conditions' lastTransitionTime."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
