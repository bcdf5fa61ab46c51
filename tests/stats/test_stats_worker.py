"""The Stats worker against real PostgreSQL and NATS: events land in `stats` and hourly
`aggregated_stats`, duplicates of every kind count once, bad payloads are terminated, and
retention deletes old events only."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from kannon.bus.client import Bus, BusMessage, Result, Verdict
from kannon.bus.subjects import STATS_DURABLE, STATS_STREAM, stats_subject
from kannon.config import NatsSettings, Settings, StatsSettings
from kannon.db import stats_store
from kannon.model.outcome import (
    Accepted,
    Bounced,
    Clicked,
    Delivered,
    Detail,
    Errored,
    Failed,
    Opened,
    Outcome,
    Rejected,
)
from kannon.stats.component import StatsWorker
from kannon.wire.stats import encode, publish_outcome
from tests.support import Clock, running

BATCH = "msg_statstest@k.example.com"
DOMAIN = "k.example.com"
T = datetime(2025, 6, 1, 10, 15, 30, 123456, tzinfo=UTC)


def make_worker(
    pool: asyncpg.Pool, bus: Bus, *, now: datetime = T, retention: timedelta = timedelta(hours=8760)
) -> StatsWorker:
    settings = Settings(
        stats=StatsSettings(retention=retention),
        nats=NatsSettings(ack_wait=timedelta(seconds=7), max_deliver=9),
    )
    return StatsWorker(settings, pool, bus, clock=Clock(now))


def outcome(
    detail: Detail, *, email: str = "a@x.io", at: datetime = T, event_id: str = ""
) -> Outcome:
    return Outcome(
        batch_id=BATCH,
        domain=DOMAIN,
        recipient=email,
        timestamp=at,
        detail=detail,
        event_id=event_id or f"{detail.type}.{email}.{at.isoformat()}",
    )


async def run_until_handled(
    worker: StatsWorker,
    count: int,
    wrap: Callable[[BusMessage, Callable[[BusMessage], Awaitable[Result]]], Awaitable[Result]]
    | None = None,
) -> list[tuple[BusMessage, Result]]:
    """Run the worker's real consume loop until `count` messages were handled, then stop it.
    `wrap` sees each message of a fetch on its own, with a handler of one message."""
    handled: list[tuple[BusMessage, Result]] = []
    enough = asyncio.Event()
    real = worker.handle_batch

    async def alone(msg: BusMessage) -> Result:
        [result] = await real([msg])
        assert isinstance(result, Result), result
        return result

    async def observed(msgs: Sequence[BusMessage]) -> list[Result | Exception]:
        if wrap:
            results: list[Result | Exception] = [await wrap(msg, alone) for msg in msgs]
        else:
            results = await real(msgs)
        for msg, result in zip(msgs, results, strict=True):
            assert isinstance(result, Result), result
            handled.append((msg, result))
        if len(handled) >= count:
            enough.set()
        return results

    worker.handle_batch = observed  # type: ignore[method-assign]  # the real one, watched
    async with running(worker):
        await asyncio.wait_for(enough.wait(), 20)
    return handled


async def stats_rows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT type, email, message_id, domain, timestamp, data, event_id FROM stats ORDER BY id"
    )
    return [dict(row) for row in rows]


async def aggregates(pool: asyncpg.Pool) -> dict[tuple[str, datetime, str], int]:
    rows = await pool.fetch("SELECT domain, timestamp, type, count FROM aggregated_stats")
    return {(r["domain"], r["timestamp"], r["type"]): r["count"] for r in rows}


async def ack_state(bus: Bus) -> tuple[int, int]:
    info = await bus.js.consumer_info(STATS_STREAM, STATS_DURABLE)
    return info.num_pending, info.num_ack_pending


async def test_events_from_the_bus_land_in_both_tables(pool: asyncpg.Pool, bus: Bus) -> None:
    later = T.replace(minute=59)
    next_hour = T + timedelta(hours=1)
    events = [
        outcome(Accepted()),
        outcome(Accepted(), email="b@x.io", at=later),
        outcome(Accepted(), email="c@x.io", at=next_hour),
        outcome(Rejected("invalid address: the address is empty"), email=""),
        outcome(Delivered()),
        outcome(Bounced(permanent=True, code=550, message="no such user"), email="b@x.io"),
        outcome(Errored(451, "greylisted"), email="c@x.io"),
        outcome(Failed("retry budget exhausted"), email="c@x.io", at=next_hour),
        outcome(Opened("Mozilla", "192.0.2.1")),
        outcome(Clicked("Mozilla", "192.0.2.1", "https://example.com/x")),
    ]
    for event in events:
        await publish_outcome(bus, event)
    worker = make_worker(pool, bus)
    handled = await run_until_handled(worker, len(events))
    assert all(result.verdict is Verdict.ACK for _, result in handled)

    rows = await stats_rows(pool)
    assert len(rows) == len(events)
    by_id = {row["event_id"]: row for row in rows}
    first = by_id[events[0].event_id]
    assert first == {
        "type": "accepted",
        "email": "a@x.io",
        "message_id": BATCH,
        "domain": DOMAIN,
        "timestamp": T.replace(tzinfo=None),  # naive UTC, microseconds kept
        "data": {"accepted": {}},
        "event_id": events[0].event_id,
    }
    assert by_id[events[3].event_id]["data"] == {
        "rejected": {"reason": "invalid address: the address is empty"}
    }
    assert by_id[events[5].event_id]["data"] == {
        "bounced": {"permanent": True, "code": 550, "msg": "no such user"}
    }
    assert by_id[events[6].event_id]["data"] == {"error": {"code": 451, "msg": "greylisted"}}
    assert by_id[events[6].event_id]["type"] == "error"
    assert by_id[events[7].event_id]["data"] == {"failed": {"reason": "retry budget exhausted"}}
    assert by_id[events[9].event_id]["data"] == {
        "clicked": {"userAgent": "Mozilla", "ip": "192.0.2.1", "url": "https://example.com/x"}
    }

    ten, eleven = datetime(2025, 6, 1, 10), datetime(2025, 6, 1, 11)
    assert await aggregates(pool) == {
        (DOMAIN, ten, "accepted"): 2,  # 10:15 and 10:59 share the hour
        (DOMAIN, eleven, "accepted"): 1,
        (DOMAIN, ten, "rejected"): 1,
        (DOMAIN, ten, "delivered"): 1,
        (DOMAIN, ten, "bounced"): 1,
        (DOMAIN, ten, "error"): 1,
        (DOMAIN, eleven, "failed"): 1,
        (DOMAIN, ten, "opened"): 1,
        (DOMAIN, ten, "clicked"): 1,
    }
    assert await ack_state(bus) == (0, 0)
    info = await bus.js.consumer_info(STATS_STREAM, STATS_DURABLE)
    # The server never drops a message: failures are counted (and dead-lettered) by the bus.
    assert (info.config.ack_wait, info.config.max_deliver) == (7, -1)


async def test_same_content_under_two_message_ids_counts_once(pool: asyncpg.Pool, bus: Bus) -> None:
    payload = encode(outcome(Delivered()))
    await bus.publish(stats_subject("delivered"), payload, msg_id="first-publisher")
    await bus.publish(stats_subject("delivered"), payload, msg_id="second-publisher")
    assert (await bus.js.stream_info(STATS_STREAM)).state.messages == 2
    handled = await run_until_handled(make_worker(pool, bus), 2)
    # Both acked (the original Nak-looped on the unique index until MaxDeliver).
    assert [result.verdict for _, result in handled] == [Verdict.ACK, Verdict.ACK]
    # Handled concurrently: either copy may be the one stored, but only one is.
    rows = await stats_rows(pool)
    assert len(rows) == 1
    assert rows[0]["event_id"] in {"first-publisher", "second-publisher"}
    assert await aggregates(pool) == {(DOMAIN, datetime(2025, 6, 1, 10), "delivered"): 1}
    assert await ack_state(bus) == (0, 0)


async def test_same_message_id_is_deduplicated_by_the_stream(pool: asyncpg.Pool, bus: Bus) -> None:
    event = outcome(Accepted(), event_id="accepted.once")
    await publish_outcome(bus, event)
    await publish_outcome(bus, event)
    assert (await bus.js.stream_info(STATS_STREAM)).state.messages == 1
    await run_until_handled(make_worker(pool, bus), 1)
    assert len(await stats_rows(pool)) == 1


async def test_a_republish_after_the_duplicate_window_counts_once(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    # A Validator redo long after a crash: same event id, new timestamp. The stream no longer
    # remembers the id; the event-id index does.
    worker = make_worker(pool, bus)
    first = outcome(Accepted(), event_id="accepted.redo")
    redo = outcome(Accepted(), at=T + timedelta(hours=2), event_id="accepted.redo")
    for i, event in enumerate([first, redo], start=1):
        msg = BusMessage(
            subject=stats_subject("accepted"),
            data=encode(event),
            msg_id=event.event_id,
            num_delivered=1,
            stream_seq=i,
        )
        assert (await worker.handle(msg)).verdict is Verdict.ACK
    rows = await stats_rows(pool)
    assert [row["timestamp"] for row in rows] == [T.replace(tzinfo=None)]
    assert await aggregates(pool) == {(DOMAIN, datetime(2025, 6, 1, 10), "accepted"): 1}


async def test_a_redelivery_after_a_lost_ack_counts_once(pool: asyncpg.Pool, bus: Bus) -> None:
    await publish_outcome(bus, outcome(Delivered()))

    async def lose_first_ack(
        msg: BusMessage, real: Callable[[BusMessage], Awaitable[Result]]
    ) -> Result:
        result = await real(msg)  # the event is recorded...
        if msg.num_delivered == 1:
            return Result.nak()  # ...but the server never hears the ack: it redelivers
        return result

    handled = await run_until_handled(make_worker(pool, bus), 2, wrap=lose_first_ack)
    assert [msg.num_delivered for msg, _ in handled] == [1, 2]
    assert len(await stats_rows(pool)) == 1
    assert await aggregates(pool) == {(DOMAIN, datetime(2025, 6, 1, 10), "delivered"): 1}
    assert await ack_state(bus) == (0, 0)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"", b"\x0a\x03abc"])
async def test_an_undecodable_payload_is_terminated(
    pool: asyncpg.Pool, bus: Bus, payload: bytes
) -> None:
    await bus.publish(stats_subject("delivered"), payload, msg_id="garbage")
    await publish_outcome(bus, outcome(Delivered()))
    handled = await run_until_handled(make_worker(pool, bus), 2)
    verdicts = {msg.msg_id: result.verdict for msg, result in handled}
    assert verdicts["garbage"] is Verdict.TERM
    assert len(await stats_rows(pool)) == 1
    assert await ack_state(bus) == (0, 0)  # terminated, not waiting for redelivery


async def test_a_missing_domain_is_taken_from_the_batch_id(pool: asyncpg.Pool, bus: Bus) -> None:
    event = Outcome(BATCH, "", "a@x.io", T, Delivered(), "no-domain")
    msg = BusMessage(stats_subject("delivered"), encode(event), "no-domain", 1, 1)
    assert (await make_worker(pool, bus).handle(msg)).verdict is Verdict.ACK
    assert (await stats_rows(pool))[0]["domain"] == DOMAIN


async def test_retention_deletes_old_events_and_expired_keys_only(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    now = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
    h = timedelta(hours=1)
    ages = {
        "old1": 50 * h,
        "old2": 30 * h,
        "old3": 24 * h + timedelta(minutes=1),
        "edge": 24 * h,
        "new": h,
    }
    for name, age in ages.items():
        event = outcome(Delivered(), email=f"{name}@x.io", at=now - age)
        assert await stats_store.record_event(pool, event, {"delivered": {}})
    for kid, expires in (
        ("key_gone", now - timedelta(seconds=1)),
        ("key_live", now + timedelta(days=1)),
    ):
        await pool.execute(
            "INSERT INTO stats_keys (id, private_key, public_key, expiration_time)"
            " VALUES ($1, 's', 'hmac-sha256', $2)",
            kid,
            expires.replace(tzinfo=None),
        )
    worker = make_worker(pool, bus, now=now, retention=timedelta(hours=24))
    counts = await worker.cleanup()
    assert (counts.stats, counts.stats_keys) == (3, 1)
    assert sorted(row["email"] for row in await stats_rows(pool)) == ["edge@x.io", "new@x.io"]
    assert [r["id"] for r in await pool.fetch("SELECT id FROM stats_keys")] == ["key_live"]
    # Aggregates are the long-term history: untouched.
    assert sum((await aggregates(pool)).values()) == 5
    again = await worker.cleanup()
    assert (again.stats, again.stats_keys) == (0, 0)


async def test_retention_deletes_in_pages(pool: asyncpg.Pool) -> None:
    for i in range(7):
        await stats_store.record_event(pool, outcome(Opened("ua", "ip"), email=f"{i}@x.io"), {})
    cutoff = T + timedelta(seconds=1)
    assert await stats_store.delete_stats_before(pool, cutoff, page=3) == 7
    assert await stats_rows(pool) == []


async def test_cleanup_runs_once_at_start(pool: asyncpg.Pool, bus: Bus) -> None:
    now = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
    old = outcome(Delivered(), at=now - timedelta(days=400))
    assert await stats_store.record_event(pool, old, {"delivered": {}})
    worker = make_worker(pool, bus, now=now)  # default retention 8760h
    cleaned = asyncio.Event()
    real = worker.cleanup

    async def observed() -> Any:
        result = await real()
        cleaned.set()
        return result

    worker.cleanup = observed  # type: ignore[method-assign]  # the real one, watched
    async with running(worker):
        await asyncio.wait_for(cleaned.wait(), 10)
    assert await stats_rows(pool) == []


async def test_a_batch_counts_each_new_event_once(pool: asyncpg.Pool) -> None:
    stored = outcome(Delivered(), email="old@x.io", event_id="delivered.old")
    assert await stats_store.record_event(pool, stored, {"delivered": {}})
    same_content = outcome(Delivered(), email="twin@x.io", event_id="delivered.twin-1")
    batch = [
        outcome(Accepted(), email="a@x.io"),
        stored,  # stored earlier
        outcome(Accepted(), email="b@x.io", at=T + timedelta(hours=1)),
        same_content,
        outcome(Delivered(), email="twin@x.io", event_id="delivered.twin-2"),  # same content
        outcome(Accepted(), email="a@x.io"),  # same event id as the first
        outcome(Opened("ua", "ip"), email="a@x.io", event_id="opened.a"),
    ]
    results = await stats_store.record_events(pool, [(e, {}) for e in batch])
    assert results == [True, False, True, True, False, False, True]
    assert len(await stats_rows(pool)) == 5
    ten, eleven = datetime(2025, 6, 1, 10), datetime(2025, 6, 1, 11)
    assert await aggregates(pool) == {
        (DOMAIN, ten, "accepted"): 1,
        (DOMAIN, eleven, "accepted"): 1,
        (DOMAIN, ten, "delivered"): 2,  # old@ and one twin
        (DOMAIN, ten, "opened"): 1,
    }
    # The whole batch again: nothing is new, nothing is counted.
    assert await stats_store.record_events(pool, [(e, {}) for e in batch]) == [False] * 7
    assert sum((await aggregates(pool)).values()) == 5
    assert await stats_store.record_events(pool, []) == []


async def test_an_event_the_database_refuses_fails_alone(pool: asyncpg.Pool, bus: Bus) -> None:
    # PostgreSQL text cannot hold NUL: this event can never be stored. Handled together with
    # good ones, it must not take them down with it.
    events = [
        outcome(Accepted(), email="a@x.io"),
        outcome(Rejected("invalid address"), email="nul\x00@x.io"),
        outcome(Accepted(), email="b@x.io"),
    ]
    worker = make_worker(pool, bus)
    messages = [
        BusMessage(stats_subject(e.type), encode(e), e.event_id, 1, i)
        for i, e in enumerate(events, start=1)
    ]
    results = await worker.handle_batch(messages)  # one fetch: one statement, refused
    assert isinstance(results[1], stats_store.EventRefused)
    assert [results[0], results[2]] == [Result.ack(), Result.ack()]
    assert sorted(row["email"] for row in await stats_rows(pool)) == ["a@x.io", "b@x.io"]
    assert await aggregates(pool) == {(DOMAIN, datetime(2025, 6, 1, 10), "accepted"): 2}


async def test_a_backlog_is_recorded_in_batches_and_acked(
    pool: asyncpg.Pool, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 600  # more than one fetch and more than one statement
    for i in range(count):
        await publish_outcome(bus, outcome(Delivered(), email=f"{i}@x.io"))
    worker = make_worker(pool, bus)
    sizes: list[int] = []
    real = stats_store.record_events

    async def counted(p: asyncpg.Pool, events: Any) -> list[bool]:
        sizes.append(len(events))
        return await real(p, events)

    monkeypatch.setattr(stats_store, "record_events", counted)
    handled = await run_until_handled(worker, count)
    assert all(result.verdict is Verdict.ACK for _, result in handled)
    assert sum(sizes) == count
    assert len(sizes) < count / 10  # batched, not one statement per event
    assert await aggregates(pool) == {(DOMAIN, datetime(2025, 6, 1, 10), "delivered"): count}
    assert await ack_state(bus) == (0, 0)


async def test_a_fetch_whose_statement_fails_comes_back_whole_and_is_stored_once(
    pool: asyncpg.Pool, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [outcome(Delivered(), email=f"{i}@x.io") for i in range(5)]
    for event in events:
        await publish_outcome(bus, event)
    worker = make_worker(pool, bus)
    # Redelivered quickly rather than after the production backoff.
    spec = dataclasses.replace(worker.consumer, retry_delay=timedelta(milliseconds=50))
    monkeypatch.setattr(StatsWorker, "consumer", property(lambda _: spec))
    real = stats_store.record_events
    calls: list[int] = []

    async def down_once(p: asyncpg.Pool, batch: Any) -> list[bool]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ConnectionRefusedError("the database is down")  # an outage: nothing stored
        return await real(p, batch)

    monkeypatch.setattr(stats_store, "record_events", down_once)
    handled = await run_until_handled(worker, len(events))
    assert sorted(msg.num_delivered for msg, _ in handled) == [2] * len(events)
    assert all(result.verdict is Verdict.ACK for _, result in handled)
    assert calls[0] == len(events), "the fetch went in one statement"
    assert len(await stats_rows(pool)) == len(events)
    assert await aggregates(pool) == {(DOMAIN, datetime(2025, 6, 1, 10), "delivered"): 5}
    assert await ack_state(bus) == (0, 0)
