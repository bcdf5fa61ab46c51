"""Helpers shared by the Tracker tests: constants and readers of the events on the real bus."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from kannon.bus.client import Bus
from kannon.bus.subjects import STATS_STREAM
from kannon.model.outcome import Outcome
from kannon.tracker.component import Tracker
from kannon.wire.stats import decode

# Requests from this loopback address come "through a proxy"; from 127.0.0.1 they do not.
PROXY_ADDRESS = "127.0.0.2"
DOMAIN = "k.example.com"
TOKEN_TTL = timedelta(days=90)

# start_tracker(**Tracker keyword arguments, pool=...) -> a running Tracker
StartTracker = Callable[..., Awaitable[Tracker]]


async def read_events(bus: Bus, subject: str, count: int, timeout: float = 15.0) -> list[Outcome]:
    """The first ``count`` events on ``subject``, waiting for them to be stored."""
    sub = await bus.js.pull_subscribe(subject, stream=STATS_STREAM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    events: list[Outcome] = []
    try:
        while len(events) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"expected {count} events on {subject}, got {len(events)}")
            try:
                msgs = await sub.fetch(count - len(events), timeout=remaining)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                events.append(decode(msg.data, (msg.headers or {}).get("Nats-Msg-Id")))
    finally:
        await sub.unsubscribe()
    return events


async def stored_events(bus: Bus) -> int:
    """How many events the stats stream holds (the bus fixture starts it empty)."""
    info = await bus.js.stream_info(STATS_STREAM)
    return int(info.state.messages)
