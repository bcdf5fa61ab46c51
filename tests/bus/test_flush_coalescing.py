"""The NATS client's coalescing flusher (ADR 0054): commands queued by tasks over successive
loop iterations share a socket write, and every one of them arrives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kannon.bus.client import Bus

PUBLISHERS = 30
STAGGER = 3  # publisher i yields i % STAGGER times first: publishes spread over 3 iterations


async def test_publishes_over_successive_loop_iterations_share_a_write(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = bus.nc
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        await received.put(msg.data)

    await nc.subscribe("test.coalesce.*", cb=collect)
    await nc.flush()
    transport = nc._transport
    assert transport is not None
    writes: list[int] = []
    writelines = transport.writelines

    def counted(commands: list[bytes]) -> None:
        writes.append(len(commands))
        writelines(commands)

    monkeypatch.setattr(transport, "writelines", counted)

    async def publisher(i: int) -> None:
        for _ in range(i % STAGGER):
            await asyncio.sleep(0)
        await nc.publish(f"test.coalesce.{i}", str(i).encode())

    await asyncio.gather(*(publisher(i) for i in range(PUBLISHERS)))
    await nc.flush()
    got: set[bytes] = set()
    async with asyncio.timeout(10):
        while len(got) < PUBLISHERS:
            got.add(await received.get())
    assert got == {str(i).encode() for i in range(PUBLISHERS)}
    # nats-py's own flusher writes once per loop iteration that published: the first write
    # would carry only the publishers that did not yield (PUBLISHERS // STAGGER).
    assert writes[0] >= 2 * PUBLISHERS // STAGGER
