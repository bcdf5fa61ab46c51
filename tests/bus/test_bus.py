"""Publish → durable pull consume → ack over a real nats-server; redelivery after a missed ack."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from prometheus_client import REGISTRY

from kannon.bus.client import Bus, BusMessage, Claimed, ConsumerSpec, Handler, Result
from kannon.bus.subjects import (
    DEAD_LETTER_STREAM,
    SENDING_STREAM,
    SENDING_SUBJECT,
    STATS_STREAM,
    stats_subject,
)
from kannon.runtime.clock import utc_now
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
    before = utc_now()
    assert await guard.claim("42.abc") is None
    held = await guard.claim("42.abc")
    # A claim says when the server stored it, for a copy to judge its age by (ADR 0049).
    assert isinstance(held, Claimed)
    assert held.since is not None
    assert abs(held.since - before) < timedelta(seconds=5)
    await guard.release("42.abc")
    assert await guard.claim("42.abc") is None
    later = await guard.claim("42.abc")
    assert isinstance(later, Claimed)
    assert later.since is not None
    assert later.since >= held.since  # the new claim's own time, not the released one's
    # A claim stored by the previous version (the same bare value) reads the same way.
    await guard.kv.put("43.old", b"sending")
    old = await guard.claim("43.old")
    assert isinstance(old, Claimed)
    assert old.since is not None
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


async def _deliveries_while_slow(bus: Bus, durable: str, *, keep_alive: bool) -> list[int]:
    """One message whose first handling takes three and a half ack deadlines, under a consumer
    with room for a second handler: the delivery counts the handler saw by the time the slow
    one finished (or, without keep-alive, as soon as a redelivery arrived)."""
    ack_wait = timedelta(seconds=1)
    payload = durable.encode()
    await bus.publish(SENDING_SUBJECT, payload, msg_id=durable)
    deliveries: list[int] = []
    redelivered = asyncio.Event()
    stopping = asyncio.Event()

    async def slow_first(msg: BusMessage) -> Result:
        if msg.data != payload:
            return Result.ack()  # an earlier call's message, still in the stream
        deliveries.append(msg.num_delivered)
        if msg.num_delivered > 1:
            redelivered.set()
            return Result.ack()
        # The slow work itself, longer than the ack deadline: what keep-alive is for.
        await asyncio.sleep(3.5 * ack_wait.total_seconds())
        stopping.set()
        return Result.ack()

    spec = ConsumerSpec(
        durable,
        SENDING_STREAM,
        SENDING_SUBJECT,
        ack_wait=ack_wait,
        concurrency=2,
        keep_alive=keep_alive,
    )
    task = asyncio.create_task(bus.consume(spec, slow_first, stopping))
    try:
        if not keep_alive:
            await asyncio.wait_for(redelivered.wait(), 10)
            stopping.set()
        await asyncio.wait_for(asyncio.shield(task), 20)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 20)
    return deliveries


async def test_keep_alive_keeps_a_slow_handlers_message_from_being_redelivered(bus: Bus) -> None:
    """ADR 0049: progress acks while the handler runs; the message is delivered once and acked
    by its one handling. Without keep-alive the same handler sees it redelivered meanwhile."""
    assert await _deliveries_while_slow(bus, "test-keep-alive", keep_alive=True) == [1]

    async def acked() -> bool:
        info = await bus.js.consumer_info(SENDING_STREAM, "test-keep-alive")
        assert info.num_redelivered == 0
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await wait_for(acked, what="the one handling's ack")  # acks are processed asynchronously

    control = await _deliveries_while_slow(bus, "test-no-keep-alive", keep_alive=False)
    assert control[:2] == [1, 2]


async def _settled(bus: Bus, durable: str) -> None:
    """Every message acked: the server applies acks on its own time, well within ack_wait
    (after which an unacked message would show as pending again)."""

    async def nothing_pending() -> bool:
        info = await bus.js.consumer_info(SENDING_STREAM, durable)
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    await wait_for(nothing_pending, what=f"{durable} to have acked everything", timeout=5)


async def test_batches_take_what_is_waiting_and_settle_each_message_by_its_result(
    bus: Bus,
) -> None:
    for i in range(30):
        await bus.publish(SENDING_SUBJECT, f"b{i}".encode(), msg_id=f"batch-{i}")
    spec = ConsumerSpec(
        "test-batches",
        SENDING_STREAM,
        SENDING_SUBJECT,
        batch=8,
        retry_delay=timedelta(milliseconds=50),
    )
    stopping = asyncio.Event()
    sizes: list[int] = []
    seen: list[BusMessage] = []

    async def handle(msgs: Sequence[BusMessage]) -> list[Result]:
        sizes.append(len(msgs))
        seen.extend(msgs)
        # b7 is refused the first time (naked), everything else acked.
        results = [
            Result.nak(0.05) if m.data == b"b7" and m.num_delivered == 1 else Result.ack()
            for m in msgs
        ]
        if len({m.data for m in seen}) == 30 and any(m.num_delivered == 2 for m in seen):
            stopping.set()
        return results

    await asyncio.wait_for(bus.consume_batches(spec, handle, stopping), timeout=30)
    assert sorted({m.data for m in seen}) == sorted(f"b{i}".encode() for i in range(30))
    assert max(sizes) == 8, "a fetch takes up to `batch` of the waiting messages at once"
    assert [m.num_delivered for m in seen if m.data == b"b7"] == [1, 2]
    await _settled(bus, "test-batches")


async def test_a_failing_batch_comes_back_whole_and_a_trickle_is_not_held(bus: Bus) -> None:
    spec = ConsumerSpec(
        "test-batch-fail",
        SENDING_STREAM,
        SENDING_SUBJECT,
        batch=50,
        retry_delay=timedelta(milliseconds=50),
    )
    stopping = asyncio.Event()
    calls: list[list[tuple[bytes, int]]] = []
    ready = asyncio.Event()

    async def handle(msgs: Sequence[BusMessage]) -> list[Result]:
        calls.append([(m.data, m.num_delivered) for m in msgs])
        if len(calls) == 1:
            raise RuntimeError("the database is away")
        if {data for call in calls[1:] for data, _ in call} >= {b"t0", b"t1"}:
            stopping.set()
        return [Result.ack()] * len(msgs)

    consumer = asyncio.create_task(bus.consume_batches(spec, handle, stopping, on_ready=ready.set))
    await ready.wait()
    await bus.publish(SENDING_SUBJECT, b"t0", msg_id="trickle-0")
    await bus.publish(SENDING_SUBJECT, b"t1", msg_id="trickle-1")
    began = asyncio.get_running_loop().time()
    await asyncio.wait_for(consumer, timeout=30)
    # Redelivered after the failure, each once more; nothing waited for a full batch of 50.
    assert {d for d, n in calls[0]} <= {b"t0", b"t1"}
    assert all(n == 2 for d, n in calls[1] if (d, 1) in calls[0])
    assert asyncio.get_running_loop().time() - began < 5
    await _settled(bus, "test-batch-fail")


async def test_a_lingering_fetch_takes_what_trickles_in_meanwhile_as_one_batch(bus: Bus) -> None:
    spec = ConsumerSpec(
        "test-batch-linger",
        SENDING_STREAM,
        SENDING_SUBJECT,
        batch=50,
        linger=timedelta(seconds=2),  # long: the three publishes below fit in it on any machine
    )
    stopping = asyncio.Event()
    batches: list[list[bytes]] = []
    ready = asyncio.Event()

    async def handle(msgs: Sequence[BusMessage]) -> list[Result]:
        batches.append([m.data for m in msgs])
        if sum(map(len, batches)) >= 3:
            stopping.set()
        return [Result.ack()] * len(msgs)

    consumer = asyncio.create_task(bus.consume_batches(spec, handle, stopping, on_ready=ready.set))
    await ready.wait()
    for i in range(3):  # one at a time, each after the fetch began waiting
        await bus.publish(SENDING_SUBJECT, f"l{i}".encode(), msg_id=f"linger-{i}")
    await asyncio.wait_for(consumer, timeout=30)
    assert batches == [[b"l0", b"l1", b"l2"]], "one fetch held its request open for them all"
    await _settled(bus, "test-batch-linger")


async def test_a_lingering_fetch_returns_as_soon_as_its_batch_is_full(bus: Bus) -> None:
    for i in range(5):
        await bus.publish(SENDING_SUBJECT, f"f{i}".encode(), msg_id=f"full-{i}")
    spec = ConsumerSpec(
        "test-batch-full", SENDING_STREAM, SENDING_SUBJECT, batch=5, linger=timedelta(seconds=30)
    )
    stopping = asyncio.Event()
    sizes: list[int] = []

    async def handle(msgs: Sequence[BusMessage]) -> list[Result]:
        sizes.append(len(msgs))
        stopping.set()
        return [Result.ack()] * len(msgs)

    # Well before the linger: a full batch does not wait for it.
    await asyncio.wait_for(bus.consume_batches(spec, handle, stopping), timeout=10)
    assert sizes == [5]
    await _settled(bus, "test-batch-full")
