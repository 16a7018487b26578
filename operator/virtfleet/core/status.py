"""What every kind's reconcile shares: the object it is about, the one dump of a typed status to the wire,
and the one diff that makes a merge patch of it. The timestamps status carries are
`virtfleet.api.timestamps`' (two precisions, both RFC 3339 UTC with 'Z')."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from virtfleet.api.base import BaseStatus


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


def wire(status: BaseStatus) -> dict[str, Any]:
    """A typed status as the API stores it: camelCase, only the fields the decision set (a field it left
    alone is not written, one it set to None is removed), timestamps and numbers in their wire formats."""
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)
