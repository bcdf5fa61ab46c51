"""Publish → durable pull consume → ack over a real nats-server; redelivery after a missed ack."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result
from kannon.bus.subjects import SENDING_STREAM, SENDING_SUBJECT, STATS_STREAM, stats_subject


async def _consume_until(
    bus: Bus,
    spec: ConsumerSpec,
    handler,
    expected: int,  # type: ignore[no-untyped-def]
    seen: list[BusMessage],
) -> None:
    stopping = asyncio.Event()

    async def wrapped(msg: BusMessage) -> Result:
        result: Result = await handler(msg)
        seen.append(msg)
        if len(seen) >= expected:
            stopping.set()
        return result

    await asyncio.wait_for(bus.consume(spec, wrapped, stopping), timeout=30)


async def test_publish_consume_ack_round_trip(bus: Bus) -> None:
    for i in range(5):
        await bus.publish(SENDING_SUBJECT, f"m{i}".encode(), msg_id=f"id-{i}")
    seen: list[BusMessage] = []

    async def ok(msg: BusMessage) -> Result:
        return Result.ack()

    spec = ConsumerSpec("test-roundtrip", SENDING_STREAM, SENDING_SUBJECT, concurrency=3)
    await _consume_until(bus, spec, ok, 5, seen)
    assert sorted(m.data for m in seen) == [f"m{i}".encode() for i in range(5)]
    assert {m.msg_id for m in seen} == {f"id-{i}" for i in range(5)}
    info = await bus.js.consumer_info(SENDING_STREAM, "test-roundtrip")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_duplicate_msg_id_is_stored_once(bus: Bus) -> None:
    first = await bus.publish(stats_subject("delivered"), b"x", msg_id="same")
    second = await bus.publish(stats_subject("delivered"), b"x", msg_id="same")
    assert first == second
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1


async def test_missed_ack_is_redelivered(bus: Bus) -> None:
    await bus.publish(SENDING_SUBJECT, b"payload", msg_id="once")
    seen: list[BusMessage] = []
    calls = 0

    async def fail_first(msg: BusMessage) -> Result:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler crashed before acking")
        return Result.ack()

    spec = ConsumerSpec(
        "test-redeliver", SENDING_STREAM, SENDING_SUBJECT, retry_delay=timedelta(milliseconds=50)
    )
    await _consume_until(bus, spec, fail_first, 1, seen)
    assert seen[0].data == b"payload"
    assert seen[0].num_delivered == 2


async def test_ack_wait_expiry_redelivers(bus: Bus) -> None:
    """A consumer that dies without acking: the message comes back after ack_wait."""
    await bus.publish(SENDING_SUBJECT, b"lost", msg_id="lost-1")
    spec = ConsumerSpec(
        "test-ackwait", SENDING_STREAM, SENDING_SUBJECT, ack_wait=timedelta(seconds=1)
    )
    await bus.js.add_consumer(
        SENDING_STREAM,
        __import__("nats").js.api.ConsumerConfig(
            durable_name=spec.durable, name=spec.durable, filter_subject=spec.subject, ack_wait=1.0
        ),
    )
    sub = await bus.js.pull_subscribe_bind(durable=spec.durable, stream=SENDING_STREAM)
    first = await sub.fetch(1, timeout=5)
    assert first[0].data == b"lost"
    await sub.unsubscribe()  # never acked
    seen: list[BusMessage] = []

    async def ok(msg: BusMessage) -> Result:
        return Result.ack()

    await _consume_until(bus, spec, ok, 1, seen)
    assert seen[0].num_delivered == 2


async def test_sent_guard_claims_once(bus: Bus) -> None:
    guard = await bus.sent_guard()
    assert await guard.claim("42.abc") is None
    assert await guard.claim("42.abc") == guard.CLAIMED
    await guard.record("42.abc", b"outcome")
    assert await guard.claim("42.abc") == b"outcome"
    await guard.release("42.abc")
    assert await guard.claim("42.abc") is None


async def test_ensure_streams_is_idempotent(bus: Bus) -> None:
    await bus.ensure_streams()
    await bus.ensure_streams()
    names = {s.config.name for s in await bus.js.streams_info()}
    assert {SENDING_STREAM, STATS_STREAM} <= names


async def test_concurrency_is_a_hard_limit(bus: Bus) -> None:
    for i in range(30):
        await bus.publish(SENDING_SUBJECT, b"x", msg_id=f"c-{i}")
    busy = peak = 0
    seen: list[BusMessage] = []

    async def slow(msg: BusMessage) -> Result:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0.01)  # hold the slot while others are fetched
        busy -= 1
        return Result.ack()

    spec = ConsumerSpec("test-limit", SENDING_STREAM, SENDING_SUBJECT, concurrency=3, batch=10)
    await _consume_until(bus, spec, slow, 30, seen)
    assert len(seen) == 30
    assert peak <= 3
