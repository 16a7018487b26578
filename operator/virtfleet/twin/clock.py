"""The twin's clock: simulated seconds run `1 / time_scale` times faster than real ones."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class Clock:
    """Simulated time. time_scale = real seconds per simulated second (0.01: a 40 s step takes 0.4 s)."""

    def __init__(self, time_scale: float = 1.0, start: datetime | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._epoch = start or datetime.now(UTC)
        self._origin = time.monotonic()

    def seconds(self) -> float:
        """Simulated seconds since the clock started."""
        return (time.monotonic() - self._origin) / self.time_scale

    def now(self) -> datetime:
        return self.at(self.seconds())

    def at(self, simulated_seconds: float) -> datetime:
        """The moment `simulated_seconds` after the clock started."""
        return self._epoch + timedelta(seconds=simulated_seconds)

    def stamp(self, at: datetime | None = None) -> str:
        """RFC 3339 with microseconds, so scaled-down steps stay distinguishable."""
        return (at or self.now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def sleep(self, simulated_seconds: float) -> None:
        await asyncio.sleep(max(0.0, simulated_seconds) * self.time_scale)
