"""Coalescing of concurrent single-item calls into batched ones, for work that writes to the
database item by item: the webhooks worker's attempt results (Stats and the Dispatcher's endings
used it too, until they took their events a fetch at a time, ADR 0058). It knows nothing of the
database (ADR 0051).

The bus hands messages to handlers one at a time (bounded concurrency, one ack each). Writing
each one in its own statement or transaction cost a round trip or four per message; instead every
handler submits its item here and waits, and one writer task writes whatever has accumulated in
one call. While that call is in flight the next items accumulate, so under load batches grow by
themselves. Items that trickle in (a few hundred a second: each would find the writer idle and go
alone) are held up to `linger` seconds for company; a full batch never waits.

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

    def __init__(self, write: Write[T, R], *, max_items: int, linger: float = 0.0) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if linger < 0:
            raise ValueError("linger must not be negative")
        self._write = write
        self._max_items = max_items
        self._linger = linger
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Set while the writer lingers: resolved early once a full batch is waiting.
        self._full: asyncio.Future[None] | None = None

    async def submit(self, item: T) -> R:
        """Write `item` with whatever else is waiting; returns its result once written."""
        return await self.put(item)

    def put(self, item: T) -> asyncio.Future[R]:
        """`submit` for a caller that does not wait: the future resolves once `item` is
        written (or fails with the write). Whoever puts must look at the future's outcome."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        full = self._full
        if full is not None and len(self._pending) >= self._max_items and not full.done():
            full.set_result(None)
        if self._writer is None:
            # Scheduled after the handlers already runnable (the rest of a fetched batch), so
            # they get to add their items before the first write.
            self._writer = asyncio.create_task(self._write_pending())
        return future

    async def _write_pending(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                if self._linger and len(self._pending) < self._max_items:
                    await self._wait_for_more()
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
            self._full = None
            # Cancelled (shutdown past the grace period): no waiter may hang on a write that
            # will not happen. Their messages are redelivered, duplicates counting once.
            for _, future in batch + self._pending:
                if not future.done():
                    future.cancel()
            self._pending.clear()

    async def _wait_for_more(self) -> None:
        """Give a trickle of items `linger` seconds to make a bigger batch (a full one goes at
        once). Items that arrive one by one (events at a few hundred a second) would otherwise
        each be written alone, a round trip apiece."""
        loop = asyncio.get_running_loop()
        full: asyncio.Future[None] = loop.create_future()
        self._full = full
        timer = loop.call_later(self._linger, _resolve, full)
        try:
            await full
        finally:
            timer.cancel()
            self._full = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
