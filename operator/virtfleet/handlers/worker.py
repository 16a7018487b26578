"""The loop every per-object worker (a kopf daemon) runs: reconcile when woken, sleep otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import TypeVar

import kopf

from virtfleet import metrics

IDLE_WAIT = 300.0  # nothing due: wait for an event (this bound only keeps the loop looking at `stopped`)
RETRY_AFTER_FAILURE = 5.0  # a failed write: try again shortly, without a storm
WAKE_SLACK = 0.05  # wake just after a due time, so what was due is due

Result = TypeVar("Result")


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


async def measured(kind: str, logger: kopf.Logger, attempt: Awaitable[Result]) -> Result | None:
    """Run one reconcile pass, counted and timed in the metrics; None when it failed (logged, and the
    caller retries in RETRY_AFTER_FAILURE)."""
    started = time.monotonic()
    try:
        outcome = await attempt
    except Exception as error:
        metrics.RECONCILES.labels(kind, "error").inc()
        logger.warning(f"reconcile failed, retrying in {RETRY_AFTER_FAILURE:g}s: {error}")
        return None
    metrics.RECONCILES.labels(kind, "ok").inc()
    metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)
    return outcome


def post_events(body: kopf.Body, events: Iterable[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message)


def seconds_until(at: datetime | None, now: datetime) -> float | None:
    """A reconcile's wake-up time as the worker's timeout (None: wait for an event)."""
    if at is None:
        return None
    return max(0.0, (at - now).total_seconds()) + WAKE_SLACK
