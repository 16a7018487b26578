"""The loop every per-object worker (a kopf daemon) runs: reconcile when woken, sleep otherwise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import kopf

IDLE_WAIT = 300.0  # nothing due: wait for an event (this bound only keeps the loop looking at `stopped`)


async def run_worker(
    trigger: asyncio.Event, stopped: kopf.DaemonStopped, reconcile: Callable[[], Awaitable[float | None]]
) -> None:
    """Reconcile whenever the trigger is set (watch events set it, so bursts coalesce into one pass);
    `reconcile` returns the seconds until something is due without an event (a backoff, a retry), or None."""
    trigger.set()
    while not stopped:
        wake_in: float | None = None
        if trigger.is_set():
            trigger.clear()
            wake_in = await reconcile()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(trigger.wait(), timeout=wake_in if wake_in is not None else IDLE_WAIT)
            continue
        if wake_in is not None:
            trigger.set()
