"""The Validator against real PostgreSQL and NATS: verdicts and reasons, events on the bus,
backlog draining by cycle(), Reclaim of abandoned claims, publish-before-update recovery."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from kannon.bus.client import Bus
from kannon.bus.subjects import STATS_STREAM
from kannon.config import Settings, ValidatorSettings
from kannon.db import deliveries
from kannon.db.database import Database
from kannon.model.delivery import SCHEDULED, TO_VALIDATE, VALIDATING
from kannon.model.event_ids import delivery_event_id as event_id
from kannon.model.outcome import Accepted, Outcome, Rejected
from kannon.validator.component import Validator, judge
from kannon.wire.stats import decode, publish_outcome
from tests.support import Clock, running, store_batch_row

T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
BATCH = "msg_validatortest@k.example.com"
DOMAIN = "k.example.com"

VALID = [
    "John.Doe@Example.COM",  # mixed case: the original's lowercase regex rejected this
    "a@x.COM",
    "user@bücher.de",  # IDN domain
    "user@例え.テスト",
    "first.o'brien+tag@sub.example.org",
]
INVALID = {
    "jösé@example.com": "the local part has non-ASCII characters (SMTPUTF8 is not supported)",
    '"john"@example.com': "quoted local parts are not accepted",
    "user@localhost": "the domain has no top-level domain",
    "a@b.com bar": "the address contains whitespace",
    "foo a@b.com": "the address contains whitespace",
    "a@b.com>": "the domain label 'com>' is not a valid host name label",
    "<a@b.com>": "the local part has characters or dots that are not allowed",
    "a@@b.com": "the address has more than one @",
    "a@b@c.com": "the address has more than one @",
    "": "the address is empty",
    "a@b.com\r\nBcc: x@y.com": "the address contains whitespace",
    "a@[1.2.3.4]": "address literals are not accepted",
}


@pytest.fixture
async def pool(pool: Database) -> Database:
    await store_batch_row(pool, BATCH, DOMAIN)
    return pool


async def add(pool: asyncpg.Pool, emails: list[str]) -> None:
    """Insert Deliveries as the API does: status to_validate."""
    await pool.execute(
        """
        INSERT INTO sending_pool_emails (email, status, scheduled_time, original_scheduled_time,
            message_id, domain)
        SELECT e, 'to_validate', $2, $2, $3, $4 FROM unnest($1::text[]) AS e
        """,
        emails,
        T0.replace(tzinfo=None),
        BATCH,
        DOMAIN,
    )


async def statuses(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT email, status FROM sending_pool_emails")
    return {row["email"]: row["status"] for row in rows}


async def stream_events(bus: Bus) -> list[tuple[str, str, Outcome]]:
    """Every event in the stats stream: (subject, Nats-Msg-Id, decoded outcome)."""
    info = await bus.js.stream_info(STATS_STREAM)
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await bus.js.get_msg(STATS_STREAM, seq)
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        assert msg.subject is not None and msg.data is not None
        events.append((msg.subject, msg_id, decode(msg.data, msg_id)))
    return events


def validator(
    pool: asyncpg.Pool,
    bus: Bus,
    clock: Clock,
    *,
    batch_size: int = 500,
    claim_timeout: timedelta = timedelta(minutes=5),
) -> Validator:
    settings = Settings(
        validator=ValidatorSettings(
            batch_size=batch_size,
            idle_interval=timedelta(milliseconds=10),
            claim_timeout=claim_timeout,
        )
    )
    return Validator(settings, pool, bus, clock=clock)


async def test_valid_addresses_are_scheduled_and_invalid_ones_rejected_with_a_reason(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, VALID + list(INVALID))
    worker = validator(pool, bus, Clock(T0))
    assert await worker.cycle() == len(VALID) + len(INVALID)
    assert await worker.cycle() == 0

    # The Pool: valid ones wait for the Dispatcher, invalid ones are gone.
    assert await statuses(pool) == dict.fromkeys(VALID, SCHEDULED)

    # The bus: one event per Delivery, on the right subject, with its deterministic id.
    events = await stream_events(bus)
    assert len(events) == len(VALID) + len(INVALID)
    by_recipient = {
        outcome.recipient: (subject, msg_id, outcome) for subject, msg_id, outcome in events
    }
    for email in VALID:
        subject, msg_id, outcome = by_recipient[email]
        assert subject == "kannon.stats.accepted"
        assert outcome.detail == Accepted()
        assert msg_id == event_id("accepted", BATCH, email)
        assert (outcome.batch_id, outcome.domain, outcome.timestamp) == (BATCH, DOMAIN, T0)
    for email, reason in INVALID.items():
        subject, msg_id, outcome = by_recipient[email]
        assert subject == "kannon.stats.rejected"
        assert outcome.detail == Rejected(f"invalid address: {reason}")
        assert msg_id == event_id("rejected", BATCH, email)
        assert "\r" not in msg_id and "\n" not in msg_id and " " not in msg_id


async def test_a_recipient_refused_at_intake_is_rejected_with_its_reason_even_after_reclaim(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    # Intake writes a suppressed Recipient with reject_reason (ADR 0027); its address is valid.
    await add(pool, ["kept@example.com", "gone@example.com"])
    await pool.execute(
        "UPDATE sending_pool_emails SET reject_reason = 'suppressed' WHERE email = $1",
        "gone@example.com",
    )
    clock = Clock(T0)
    worker = validator(pool, bus, clock, claim_timeout=timedelta(minutes=5))
    # A Validator claims both and dies; the reclaimed row keeps its reason.
    await deliveries.claim_for_validation(pool, 10, T0)
    clock.now = T0 + timedelta(minutes=6)
    assert await worker.reclaim() == 2
    assert await worker.cycle() == 2
    assert await statuses(pool) == {"kept@example.com": SCHEDULED}
    by_recipient = {
        outcome.recipient: (subject, outcome) for subject, _, outcome in await stream_events(bus)
    }
    assert by_recipient["gone@example.com"] == (
        "kannon.stats.rejected",
        Outcome(
            batch_id=BATCH,
            domain=DOMAIN,
            recipient="gone@example.com",
            timestamp=clock.now,
            detail=Rejected("suppressed"),
            event_id=event_id("rejected", BATCH, "gone@example.com"),
        ),
    )
    assert by_recipient["kept@example.com"][1].detail == Accepted()


async def test_a_backlog_of_1000_drains_by_repeated_cycles(pool: asyncpg.Pool, bus: Bus) -> None:
    emails = [f"user{i}@example.com" for i in range(1000)]
    await add(pool, emails)
    worker = validator(pool, bus, Clock(T0), batch_size=150)
    done = []
    while (n := await worker.cycle()) > 0:
        done.append(n)
    assert done == [150] * 6 + [100]
    assert await deliveries.count_by_status(pool) == {SCHEDULED: 1000}
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1000


async def test_an_abandoned_claim_is_reclaimed_after_the_timeout(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["a@example.com", "b@example.com"])
    clock = Clock(T0)
    worker = validator(pool, bus, clock, claim_timeout=timedelta(minutes=5))
    # Another Validator claims both and dies.
    await deliveries.claim_for_validation(pool, 10, T0)
    assert await worker.cycle() == 0

    clock.now = T0 + timedelta(minutes=5)
    assert await worker.reclaim() == 0  # not older than the timeout yet
    clock.now = T0 + timedelta(minutes=5, seconds=1)
    assert await worker.reclaim() == 2
    assert set((await statuses(pool)).values()) == {TO_VALIDATE}
    assert await worker.cycle() == 2
    assert await statuses(pool) == {"a@example.com": SCHEDULED, "b@example.com": SCHEDULED}


async def test_reclaim_leaves_dispatcher_claims_alone(pool: asyncpg.Pool, bus: Bus) -> None:
    await add(pool, ["a@example.com"])
    await pool.execute(
        "UPDATE sending_pool_emails SET status = 'sending', claimed_at = $1",
        T0.replace(tzinfo=None),
    )
    worker = validator(pool, bus, Clock(T0 + timedelta(days=1)))
    assert await worker.reclaim() == 0
    assert await statuses(pool) == {"a@example.com": "sending"}


async def test_a_crash_between_publish_and_update_publishes_once_and_schedules(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["a@example.com", "bad@@example.com"])
    clock = Clock(T0)
    # A Validator claims and publishes, then dies before updating the Pool.
    claimed = await deliveries.claim_for_validation(pool, 10, T0)
    for delivery in claimed:
        await publish_outcome(bus, judge(delivery, T0))
    assert set((await statuses(pool)).values()) == {VALIDATING}

    clock.now = T0 + timedelta(minutes=6)
    worker = validator(pool, bus, clock)
    assert await worker.reclaim() == 2
    assert await worker.cycle() == 2
    assert await statuses(pool) == {"a@example.com": SCHEDULED}
    # The redo's events carry the same ids: the stream stored each Delivery's event once.
    events = await stream_events(bus)
    assert sorted((s, o.recipient) for s, _, o in events) == [
        ("kannon.stats.accepted", "a@example.com"),
        ("kannon.stats.rejected", "bad@@example.com"),
    ]


class RefusingBus:
    """The real bus, except that publishing the event of one Recipient fails."""

    def __init__(self, bus: Bus, refused: str) -> None:
        self.bus = bus
        self.refused_id = event_id("accepted", BATCH, refused)

    async def publish_stat(self, stat_type: str, payload: bytes, msg_id: str) -> int:
        if msg_id == self.refused_id:
            raise ConnectionError("no PubAck")
        return await self.bus.publish_stat(stat_type, payload, msg_id)


async def test_a_refused_publish_releases_the_claim_and_raises(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["a@example.com", "b@example.com", "c@@example.com"])
    settings = Settings(validator=ValidatorSettings(batch_size=10))
    worker = Validator(settings, pool, RefusingBus(bus, "b@example.com"), clock=Clock(T0))
    with pytest.raises(ConnectionError):
        await worker.cycle()
    # The others went through; the refused one is waiting again, not stranded in a claim.
    assert await statuses(pool) == {"a@example.com": SCHEDULED, "b@example.com": TO_VALIDATE}
    assert await validator(pool, bus, Clock(T0)).cycle() == 1
    assert await statuses(pool) == {"a@example.com": SCHEDULED, "b@example.com": SCHEDULED}


async def test_run_reports_ready_drains_the_pool_and_stops(pool: asyncpg.Pool, bus: Bus) -> None:
    await add(pool, [f"u{i}@example.com" for i in range(50)] + ["nope"])
    worker = validator(pool, bus, Clock(T0), batch_size=20)
    idle = asyncio.Event()
    cycle = worker.cycle
    sizes: list[int] = []

    async def observed_cycle() -> int:
        n = await cycle()
        sizes.append(n)
        if n == 0:
            idle.set()
        return n

    worker.cycle = observed_cycle  # type: ignore[method-assign]  # the real one, watched
    async with running(worker):
        await asyncio.wait_for(idle.wait(), 10)
        # Back-to-back cycles while there was work; idle only once the Pool was empty.
        assert sizes[:4] == [20, 20, 11, 0]
    assert await deliveries.count_by_status(pool) == {SCHEDULED: 50}
    assert (await bus.js.stream_info(STATS_STREAM)).state.messages == 51
