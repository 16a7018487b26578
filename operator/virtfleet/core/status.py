"""What every kind's reconcile shares: the object it is about and the one diff that makes a merge patch of
its status. The timestamps status carries are `virtfleet.api.timestamps`' (two precisions, both RFC 3339
UTC with 'Z')."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
