"""Publishing Opened/Clicked events without making the reader wait for the bus.

The pixel or redirect is answered whatever happens to the event (a reader cannot retry a pixel,
and a broken link is worse than a missed count), so there is nothing to gain from holding the
response until the PubAck arrives. Events are published in the background instead, with at most
``limit`` in flight: beyond that a hit waits for a slot, which pushes back on clients rather than
queueing without bound while the bus is slow. ``drain()`` waits for the stragglers at shutdown.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from kannon.model.outcome import Outcome
from kannon.wire.stats import Publisher, publish_outcome

log = logging.getLogger("kannon.tracker")

PUBLISH_FAILURES = Counter(
    "kannon_tracker_publish_failures_total",
    "Opened/Clicked events that could not be published (the hit was still answered)",
    ["type"],
)


class EventSink:
    def __init__(self, publisher: Publisher, *, limit: int = 1024) -> None:
        self._publisher = publisher
        self._slots = asyncio.Semaphore(limit)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, outcome: Outcome) -> None:
        """Start publishing ``outcome``; returns once it is in flight, not when it is stored."""
        await self._slots.acquire()
        task = asyncio.create_task(self._publish(outcome))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def publish_now(self, outcome: Outcome) -> None:
        """Publish and wait for the PubAck (for events a client must see stored, or retry)."""
        await publish_outcome(self._publisher, outcome)

    async def _publish(self, outcome: Outcome) -> None:
        try:
            await publish_outcome(self._publisher, outcome)
        except Exception as exc:
            PUBLISH_FAILURES.labels(outcome.type).inc()
            log.warning(
                "publishing a tracking event failed",
                extra={
                    "kv": {
                        "type": outcome.type,
                        "batch_id": outcome.batch_id,
                        "event_id": outcome.event_id,
                        "error": repr(exc),
                    }
                },
            )
        finally:
            self._slots.release()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for in-flight publishes, then cancel what is left."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "tracking events still unpublished at shutdown were dropped",
                extra={"kv": {"count": len(pending)}},
            )
            await asyncio.gather(*pending, return_exceptions=True)
