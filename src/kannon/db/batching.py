"""Coalescing of concurrent single-row writes into batched statements, for bus handlers that
write to the database: the Stats worker (events) and the Dispatcher (ended Deliveries).

The bus hands messages to handlers one at a time (bounded concurrency, one ack each). Writing
each one in its own statement or transaction cost a round trip or four per message; instead every
handler submits its item here and waits, and one writer task writes whatever has accumulated in
one call. While that call is in flight the next items accumulate, so under load batches grow by
themselves and at idle a lone item is written at once: there is no timer, hence no added latency.

A handler's `submit` returns only after the write holding its item finished, so the handler acks
after the commit, as before. A failed write fails every item of that batch (each handler then
raises and its message is redelivered), unless `write` reports per-item failures itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Write = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Coalescer(Generic[T, R]):
    """Runs `write` over the items submitted concurrently, at most `max_items` per call and one
    call at a time. `write` returns one result per item, in order; an exception in that list
    is raised by that item's `submit` only."""

    def __init__(self, write: Write[T, R], *, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._write = write
        self._max_items = max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write `item` with whatever else is waiting; returns its result once written."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None:
            # Scheduled after the handlers already runnable (the rest of a fetched batch), so
            # they get to add their items before the first write.
            self._writer = asyncio.create_task(self._write_pending())
        return await future

    async def _write_pending(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_items]
                del self._pending[: self._max_items]
                try:
                    results = await self._write([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(
                            f"write returned {len(results)} results for {len(batch)} items"
                        )
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if future.done():
                            continue  # its handler was cancelled meanwhile
                        if isinstance(result, BaseException):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
                batch = []
        finally:
            self._writer = None
            # Cancelled (shutdown past the grace period): no waiter may hang on a write that
            # will not happen. Their messages are redelivered, duplicates counting once.
            for _, future in batch + self._pending:
                if not future.done():
                    future.cancel()
            self._pending.clear()
