"""The suppression list's feed in the Stats Component, against real PostgreSQL and NATS:
confident hard bounces (from the MX or a DSN) and complaints suppress, soft bounces do not unless
the operator's limit is reached, unknown Domains and unreadable payloads are handled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from kannon.bus.client import Bus
from kannon.bus.subjects import (
    DEAD_LETTER_STREAM,
    STATS_DURABLE,
    STATS_STREAM,
    suppression_durable,
)
from kannon.config import NatsSettings, Settings, SuppressionSettings
from kannon.db.database import Database
from kannon.model.outcome import Bounced, Complained, Delivered, Detail, Outcome, Unsubscribed
from kannon.smtp_sender.result import SendResult, detail_for
from kannon.stats.component import StatsWorker
from kannon.wire.stats import publish_outcome
from tests.support import Clock, running, store_domain, wait_for

DOMAIN = "news.example.com"
T = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
async def pool(pool: Database) -> Database:
    await store_domain(pool, DOMAIN, now=T)
    return pool


def event(
    detail: Detail, recipient: str, *, event_id: str, domain: str = DOMAIN, at: datetime = T
) -> Outcome:
    return Outcome(
        batch_id=f"msg_feedtest@{domain}",
        domain=domain,
        recipient=recipient,
        timestamp=at,
        detail=detail,
        event_id=event_id,
    )


def added(reason: str) -> float:
    return REGISTRY.get_sample_value("kannon_suppressions_added_total", {"reason": reason}) or 0.0


async def rows(pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    found = await pool.fetch("SELECT * FROM suppressions ORDER BY address")
    return {row["address"]: dict(row) for row in found}


async def run_until_idle(bus: Bus, worker: StatsWorker, durables: list[str]) -> None:
    """Run the Stats Component until every named consumer has handled everything."""

    async def idle() -> bool:
        for durable in durables:
            info = await bus.js.consumer_info(STATS_STREAM, durable)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async with running(worker):
        await wait_for(idle, what=f"consumers {durables} idle")


FEED = [suppression_durable(t) for t in ("bounced", "complained", "unsubscribed")]


def worker(pool: asyncpg.Pool, bus: Bus, **suppression: Any) -> StatsWorker:
    settings = Settings(
        nats=NatsSettings(ack_wait=timedelta(seconds=7), max_deliver=3),
        suppression=SuppressionSettings(**suppression),
    )
    return StatsWorker(settings, pool, bus, clock=Clock(T + timedelta(minutes=1)))


async def test_hard_bounces_and_complaints_suppress_soft_bounces_do_not(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    # What the SMTPSender publishes for a synchronous "550 5.1.1 User unknown" at RCPT...
    mx_550 = detail_for(
        SendResult.refused(
            550, "5.1.1 <mx@x.org>: Recipient address rejected: User unknown", "mx", command="RCPT"
        ),
        True,
    )
    # ...and for policy refusals, which must never suppress.
    mx_spam = detail_for(
        SendResult.refused(554, "5.7.1 Message rejected as spam", "mx", command="DATA"), True
    )
    assert isinstance(mx_550, Bounced) and mx_550.hard_bounce
    assert isinstance(mx_spam, Bounced) and not mx_spam.hard_bounce
    dsn_hard = Bounced(True, 550, "user unknown", "5.1.1", "userunknown", True, from_dsn=True)
    dsn_uncertain = Bounced(True, 550, "5.1.1", "5.1.1", "userunknown", False, from_dsn=True)
    dsn_full = Bounced(True, 552, "mailbox full", "5.2.2", "mailboxfull", False, from_dsn=True)
    events = [
        event(mx_550, "MX@X.org", event_id="b.1"),
        event(dsn_hard, "dsn@x.org", event_id="b.2"),
        event(Complained("abuse", "isp-fbl/1.0", "192.0.2.7"), "Spam@x.org", event_id="c.1"),
        event(mx_spam, "policy@x.org", event_id="b.3"),
        event(dsn_uncertain, "unsure@x.org", event_id="b.4"),
        event(dsn_full, "full@x.org", event_id="b.5"),
        event(Delivered(), "fine@x.org", event_id="d.1"),
        event(dsn_hard, "dsn@x.org", event_id="b.6", domain="gone.example.com"),
    ]
    hard_before, complaints_before = added("hard_bounce"), added("complaint")
    for outcome in events:
        await publish_outcome(bus, outcome)
    await run_until_idle(bus, worker(pool, bus), [*FEED, STATS_DURABLE])

    stored = await rows(pool)
    assert set(stored) == {"MX@x.org", "dsn@x.org", "Spam@x.org"}
    mx = stored["MX@x.org"]
    assert (mx["domain"], mx["reason"], mx["event_type"]) == (DOMAIN, "hard_bounce", "bounced")
    assert (mx["status"], mx["reply_code"]) == ("5.1.1", 550)
    assert "User unknown" in mx["diagnostic"]
    assert (mx["message_id"], mx["event_id"], mx["event_at"]) == (
        f"msg_feedtest@{DOMAIN}",
        "b.1",
        T.replace(tzinfo=None),
    )
    assert mx["created_at"] == (T + timedelta(minutes=1)).replace(tzinfo=None)
    spam = stored["Spam@x.org"]
    assert (spam["reason"], spam["status"], spam["diagnostic"]) == (
        "complaint",
        "abuse",
        "isp-fbl/1.0",
    )
    assert added("hard_bounce") == hard_before + 2
    assert added("complaint") == complaints_before + 1
    # The events themselves are stored as always.
    assert await pool.fetchval("SELECT count(*) FROM stats") == len(events)


async def test_an_unsubscribe_suppresses_with_reason_unsubscribe(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    """The Tracker's one-click unsubscribe (ADR 0034) reaches the list through its event."""
    before = added("unsubscribe")
    await publish_outcome(bus, event(Unsubscribed(), "Leaver@x.org", event_id="u.1"))
    await publish_outcome(bus, event(Unsubscribed(), "Leaver@x.org", event_id="u.2"))
    await run_until_idle(bus, worker(pool, bus), [*FEED, STATS_DURABLE])
    stored = await rows(pool)
    assert set(stored) == {"Leaver@x.org"}
    assert (stored["Leaver@x.org"]["reason"], stored["Leaver@x.org"]["event_type"]) == (
        "unsubscribe",
        "unsubscribed",
    )
    assert added("unsubscribe") == before + 1


async def test_the_soft_bounce_limit_suppresses_the_nth_within_the_window(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    full = Bounced(True, 552, "5.2.2 mailbox full", "5.2.2", "mailboxfull", False)
    events = [
        event(full, "twice@x.org", event_id="s.1", at=T - timedelta(minutes=30)),
        event(full, "Twice@X.org", event_id="s.2"),
        event(full, "once@x.org", event_id="s.3"),
        # Outside the hour: counts for nothing.
        event(full, "old@x.org", event_id="s.4", at=T - timedelta(hours=3)),
        event(full, "old@x.org", event_id="s.5"),
    ]
    for outcome in events:
        await publish_outcome(bus, outcome)
    await run_until_idle(bus, worker(pool, bus, soft_bounce_limit=2, soft_bounce_window="1h"), FEED)
    # Handled concurrently: the second of the two to be counted suppresses, in its spelling.
    [(address, row)] = (await rows(pool)).items()
    assert address.lower() == "twice@x.org"
    assert (row["reason"], row["status"], row["reply_code"]) == ("soft_bounce_limit", "5.2.2", 552)
    assert row["event_id"] in ("s.1", "s.2")
    counted = await pool.fetch("SELECT address FROM suppression_soft_bounces")
    assert sorted(r["address"] for r in counted) == [
        "old@x.org",
        "once@x.org",
        "twice@x.org",
        "twice@x.org",
    ]


async def test_by_default_soft_bounces_are_not_even_counted(pool: asyncpg.Pool, bus: Bus) -> None:
    full = Bounced(True, 552, "5.2.2 mailbox full", "5.2.2", "mailboxfull", False)
    for i in range(3):
        await publish_outcome(bus, event(full, "full@x.org", event_id=f"s.{i}"))
    await run_until_idle(bus, worker(pool, bus), FEED)
    assert await rows(pool) == {}
    assert await pool.fetchval("SELECT count(*) FROM suppression_soft_bounces") == 0


async def test_an_unreadable_payload_goes_to_the_dead_letters(pool: asyncpg.Pool, bus: Bus) -> None:
    await bus.publish("kannon.stats.complained", b"\xff not a protobuf", "garbage.1")
    await run_until_idle(bus, worker(pool, bus), FEED)
    info = await bus.js.stream_info(DEAD_LETTER_STREAM, subjects_filter=">")
    assert f"kannon.deadletter.{suppression_durable('complained')}" in (info.state.subjects or {})


async def test_expired_suppressions_are_swept_by_the_cleanup(pool: asyncpg.Pool, bus: Bus) -> None:
    await pool.execute(
        """INSERT INTO suppressions (domain, address, reason, expires_at)
           VALUES ($1, 'a@x.org', 'manual', $2), ($1, 'b@x.org', 'manual', NULL)""",
        DOMAIN,
        T.replace(tzinfo=None),
    )
    counts = await worker(pool, bus).cleanup()
    assert (counts.suppressions, counts.soft_bounces) == (1, 0)
    assert list(await rows(pool)) == ["b@x.org"]
