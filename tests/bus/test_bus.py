"""Publish → durable pull consume → ack over a real nats-server; redelivery after a missed ack."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import REGISTRY

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Handler, Result
from kannon.bus.subjects import (
    DEAD_LETTER_STREAM,
    SENDING_STREAM,
    SENDING_SUBJECT,
    STATS_STREAM,
    stats_subject,
)
from tests.support import wait_for


async def _consume_until(
    bus: Bus,
    spec: ConsumerSpec,
    handler: Handler,
    expected: int,
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


async def _dead_letters(bus: Bus) -> list[tuple[str, dict[str, str], bytes]]:
    info = await bus.js.stream_info(DEAD_LETTER_STREAM)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(DEAD_LETTER_STREAM, seq)
        assert msg.subject is not None
        found.append((msg.subject, dict(msg.headers or {}), msg.data or b""))
    return found


async def test_a_message_the_handler_refuses_goes_to_the_dead_letter_stream(bus: Bus) -> None:
    await bus.publish(stats_subject("delivered"), b"garbage", msg_id="bad-1")
    seen: list[BusMessage] = []

    async def refuse(msg: BusMessage) -> Result:
        return Result.term()

    before = REGISTRY.get_sample_value(
        "kannon_bus_dead_letters_total", {"durable": "test-refuse", "reason": "refused"}
    )
    spec = ConsumerSpec("test-refuse", STATS_STREAM, stats_subject("delivered"))
    await _consume_until(bus, spec, refuse, 1, seen)
    [(subject, headers, data)] = await _dead_letters(bus)
    assert subject == "kannon.deadletter.test-refuse"
    assert data == b"garbage"
    assert headers["Kannon-Subject"] == "kannon.stats.delivered"
    assert headers["Kannon-Seq"] == str(seen[0].stream_seq)
    assert headers["Kannon-Msg-Id"] == "bad-1"
    assert headers["Kannon-Reason"] == "refused"
    after = REGISTRY.get_sample_value(
        "kannon_bus_dead_letters_total", {"durable": "test-refuse", "reason": "refused"}
    )
    assert (after or 0) - (before or 0) == 1
    info = await bus.js.consumer_info(STATS_STREAM, "test-refuse")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_an_outage_is_retried_past_max_deliver_and_a_failing_handler_is_dead_lettered(
    bus: Bus,
) -> None:
    """Failures that mean "not now" never exhaust a message; other failures do, after
    max_deliver tries, and then the message is kept in the dead-letter stream, not dropped."""
    await bus.publish(stats_subject("delivered"), b"outage", msg_id="o-1")
    await bus.publish(stats_subject("delivered"), b"bug", msg_id="b-1")
    outage_tries = 0
    seen: list[BusMessage] = []
    done = asyncio.Event()
    stopping = asyncio.Event()

    async def handler(msg: BusMessage) -> Result:
        nonlocal outage_tries
        seen.append(msg)
        if msg.data == b"outage":
            outage_tries += 1
            if outage_tries <= 6:  # twice max_deliver
                raise ConnectionRefusedError("database unreachable")
            done.set()
            return Result.ack()
        raise KeyError("a bug")

    spec = ConsumerSpec(
        "test-failures",
        STATS_STREAM,
        stats_subject("delivered"),
        max_deliver=3,
        retry_delay=timedelta(milliseconds=10),
        max_retry_delay=timedelta(milliseconds=40),
        concurrency=2,
    )
    task = asyncio.create_task(bus.consume(spec, handler, stopping))
    try:
        await asyncio.wait_for(done.wait(), 30)

        async def dead_lettered() -> bool:
            info = await bus.js.stream_info(DEAD_LETTER_STREAM)
            return bool(info.state.messages == 1)

        await wait_for(dead_lettered, what="the failing message in the dead-letter stream")
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
    assert outage_tries == 7
    assert [m.num_delivered for m in seen if m.data == b"bug"] == [1, 2, 3]
    [(_, headers, data)] = await _dead_letters(bus)
    assert data == b"bug"
    assert headers["Kannon-Reason"] == "failing"
    assert headers["Kannon-Error"] == "KeyError: 'a bug'"
    assert headers["Kannon-Deliveries"] == "3"
    info = await bus.js.consumer_info(STATS_STREAM, "test-failures")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert info.config.max_deliver == -1  # the server never drops a message on its own


def test_the_retry_delay_doubles_up_to_its_cap() -> None:
    spec = ConsumerSpec("x", STATS_STREAM, "kannon.stats.x", retry_delay=timedelta(seconds=5))
    assert [spec.backoff(n) for n in (1, 2, 3, 4, 5, 50)] == [5, 10, 20, 40, 60, 60]
    assert spec.backoff(1, 0.2) == 6.0
