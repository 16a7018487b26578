"""A keyed work queue like client-go's: a key is never processed twice at once, and changes that arrive
while it is processed make it run once more afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, retry_delay: float = 1.0) -> None:
        self.retry_delay = retry_delay
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._again: set[K] = set()

    def add(self, key: K) -> None:
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def __len__(self) -> int:
        return len(self._queued) + len(self._active)

    async def serve(
        self, handle: Callable[[K], Awaitable[None]], on_error: Callable[[K, Exception], None]
    ) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await handle(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # one bad object must not stop the loop
                on_error(key, error)
                asyncio.get_running_loop().call_later(self.retry_delay, self.add, key)
            finally:
                self._active.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)
