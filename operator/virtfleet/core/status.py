"""What the status of every kind shares: the one diff that makes a merge patch, and the timestamps
status and records carry (RFC 3339, UTC, with 'Z')."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


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
