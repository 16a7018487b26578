"""The timestamps our objects carry: RFC 3339, UTC, with 'Z', at one of two documented precisions.

- to the second (`TimeToSecond`, `stamp_seconds`): how Kubernetes writes metav1.Time; conditions'
  lastTransitionTime.
- to the millisecond (`TimeToMillisecond`, `stamp`): a plan's startedAt/finishedAt, its per-VM times and
  cold-move records, which durations are computed from (a second would swallow a short cold move).

The annotated types parse any RFC 3339 time and write it back in their format, so a status model dumped
with `mode="json"` writes the same strings the formatters do. They change no CRD schema: the serializer
only applies when dumping to JSON (the schema is generated in validation mode).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer


def stamp(at: datetime | None) -> str | None:
    """A timestamp to the millisecond: a plan's times, which its durations are computed from."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if at else None


def stamp_seconds(at: datetime) -> str:
    """A timestamp to the second, as Kubernetes writes metav1.Time: conditions' lastTransitionTime."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


TimeToSecond = Annotated[datetime, PlainSerializer(stamp_seconds, return_type=str, when_used="json")]
TimeToMillisecond = Annotated[datetime, PlainSerializer(stamp, return_type=str, when_used="json")]
