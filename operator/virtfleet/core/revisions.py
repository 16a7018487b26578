"""Template revisions: an immutable, content-addressed snapshot of a VMTemplate spec."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HASH_LENGTH = 10


def canonical(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def revision_hash(spec: Mapping[str, Any]) -> str:
    """10 hex digits of SHA-256 over the canonical JSON of the normalised spec."""
    return hashlib.sha256(canonical(spec).encode()).hexdigest()[:HASH_LENGTH]


def revision_name(template: str, digest: str) -> str:
    return f"{template}-{digest}"


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
