"""The suppression list's storage (kannon.db.suppressions) against a real PostgreSQL: one row
per (Domain, address) matched case-insensitively, which entry wins, expiry, listing filters,
bulk import, the intake lookup, soft-bounce counting and the cleanup sweeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from kannon.db import suppressions
from kannon.db.database import Database
from kannon.model.errors import Conflict, NotFound
from kannon.model.outcome import Bounced, Complained, Outcome
from kannon.model.suppression import (
    COMPLAINT,
    HARD_BOUNCE,
    MANUAL,
    Suppression,
    manual,
    suppression_for,
)
from tests.support import store_domain

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DOMAIN = "news.example.com"
OTHER = "other.example.com"


@pytest.fixture
async def pool(pool: Database) -> Database:
    for name in (DOMAIN, OTHER):
        await store_domain(pool, name, now=NOW)
    return pool


def hard_bounce(recipient: str, domain: str = DOMAIN, event_id: str = "b.1") -> Suppression:
    outcome = Outcome(
        batch_id=f"msg_x@{domain}",
        domain=domain,
        recipient=recipient,
        timestamp=NOW - timedelta(minutes=5),
        detail=Bounced(True, 550, "5.1.1 User unknown", "5.1.1", "userunknown", True),
        event_id=event_id,
    )
    found = suppression_for(outcome, NOW)
    assert found is not None
    return found


def complaint(recipient: str) -> Suppression:
    outcome = Outcome(
        batch_id=f"msg_y@{DOMAIN}",
        domain=DOMAIN,
        recipient=recipient,
        timestamp=NOW,
        detail=Complained("abuse", "isp-fbl/1.0"),
        event_id="c.1",
    )
    found = suppression_for(outcome, NOW)
    assert found is not None
    return found


async def test_an_event_adds_the_address_once_and_keeps_its_first_cause(
    pool: asyncpg.Pool,
) -> None:
    added = await suppressions.add_from_event(pool, hard_bounce("Ada@Example.org"))
    assert added is suppressions.Added.ADDED
    # The same event again (a redelivery), another spelling, another cause: nothing changes.
    assert await suppressions.add_from_event(pool, hard_bounce("Ada@Example.org")) is (
        suppressions.Added.PRESENT
    )
    assert await suppressions.add_from_event(pool, complaint("ADA@example.ORG")) is (
        suppressions.Added.PRESENT
    )
    stored = await suppressions.get(pool, DOMAIN, "ada@EXAMPLE.org", NOW)
    assert stored is not None
    assert stored == hard_bounce("Ada@Example.org")
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_an_event_for_an_unknown_domain_is_reported_not_stored(pool: asyncpg.Pool) -> None:
    added = await suppressions.add_from_event(pool, hard_bounce("a@x.org", domain="gone.example"))
    assert added is suppressions.Added.UNKNOWN_DOMAIN
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_lists_are_per_domain(pool: asyncpg.Pool) -> None:
    await suppressions.add_from_event(pool, hard_bounce("a@x.org"))
    await suppressions.add_from_event(pool, hard_bounce("a@x.org", domain=OTHER))
    assert await suppressions.get(pool, OTHER, "a@x.org", NOW) is not None
    assert await suppressions.remove(pool, DOMAIN, "A@X.org") is not None
    assert await suppressions.get(pool, DOMAIN, "a@x.org", NOW) is None
    assert await suppressions.get(pool, OTHER, "a@x.org", NOW) is not None
    assert await suppressions.remove(pool, DOMAIN, "a@x.org") is None


async def test_manual_add_refuses_duplicates_and_unknown_domains(pool: asyncpg.Pool) -> None:
    entry = manual(DOMAIN, "Bob@Example.org", NOW, note="asked us by phone")
    stored = await suppressions.add(pool, entry, NOW)
    assert stored == entry
    with pytest.raises(Conflict, match=r"^address: 'bob@example.org' is already suppressed"):
        await suppressions.add(pool, manual(DOMAIN, "bob@example.org", NOW), NOW)
    with pytest.raises(NotFound, match=r"^domain: 'gone.example' not found"):
        await suppressions.add(pool, manual("gone.example", "bob@example.org", NOW), NOW)


async def test_an_expired_entry_suppresses_nothing_and_is_replaced(pool: asyncpg.Pool) -> None:
    later = NOW + timedelta(days=1)
    temporary = manual(DOMAIN, "cy@example.org", NOW, expires_at=later)
    await suppressions.add(pool, temporary, NOW)
    assert await suppressions.suppressed_keys(pool, DOMAIN, ["cy@example.org"], NOW) == {
        "cy@example.org"
    }
    after = later + timedelta(seconds=1)
    assert await suppressions.get(pool, DOMAIN, "cy@example.org", after) is None
    assert await suppressions.suppressed_keys(pool, DOMAIN, ["cy@example.org"], after) == set()
    assert (await suppressions.list_suppressions(pool, DOMAIN, after))[1] == 0
    # A manual add after expiry replaces it; so does (before expiry) an event, for good.
    await suppressions.add(pool, manual(DOMAIN, "cy@example.org", after, note="again"), after)
    again = await suppressions.get(pool, DOMAIN, "cy@example.org", after)
    assert again is not None and again.diagnostic == "again"
    await suppressions.add(pool, manual(DOMAIN, "dee@example.org", NOW, expires_at=later), NOW)
    assert await suppressions.add_from_event(pool, hard_bounce("dee@example.org")) is (
        suppressions.Added.ADDED
    )
    now_hard = await suppressions.get(pool, DOMAIN, "dee@example.org", after)
    assert now_hard is not None and now_hard.reason == HARD_BOUNCE and now_hard.expires_at is None
    # The cleanup deletes what expired and only that.
    await suppressions.add(pool, manual(DOMAIN, "eve@example.org", NOW, expires_at=later), NOW)
    assert await suppressions.delete_expired(pool, after) == 1
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 2


async def test_listing_filters_by_reason_and_prefix_and_pages_in_address_order(
    pool: asyncpg.Pool,
) -> None:
    for name in ("carol@x.org", "Alice@x.org", "bob@y.org", "al_x@x.org", "al%@x.org"):
        await suppressions.add(pool, manual(DOMAIN, name, NOW), NOW)
    await suppressions.add_from_event(pool, complaint("alfred@z.org"))
    page, total = await suppressions.list_suppressions(pool, DOMAIN, NOW, limit=2)
    assert total == 6
    assert [s.address for s in page] == ["al%@x.org", "al_x@x.org"]
    page, _ = await suppressions.list_suppressions(pool, DOMAIN, NOW, offset=2, limit=10)
    assert [s.address for s in page] == ["alfred@z.org", "Alice@x.org", "bob@y.org", "carol@x.org"]
    page, total = await suppressions.list_suppressions(pool, DOMAIN, NOW, prefix="AL")
    assert total == 4
    # LIKE's wildcards in a prefix are plain characters.
    page, total = await suppressions.list_suppressions(pool, DOMAIN, NOW, prefix="al_")
    assert [s.address for s in page] == ["al_x@x.org"] and total == 1
    page, total = await suppressions.list_suppressions(pool, DOMAIN, NOW, prefix="al%")
    assert [s.address for s in page] == ["al%@x.org"]
    page, total = await suppressions.list_suppressions(pool, DOMAIN, NOW, reason=COMPLAINT)
    assert [s.address for s in page] == ["alfred@z.org"] and total == 1
    page, total = await suppressions.list_suppressions(
        pool, DOMAIN, NOW, reason=MANUAL, prefix="al"
    )
    assert total == 3
    assert (await suppressions.list_suppressions(pool, OTHER, NOW))[1] == 0


async def test_import_adds_new_addresses_and_keeps_existing_ones(pool: asyncpg.Pool) -> None:
    await suppressions.add_from_event(pool, hard_bounce("known@x.org"))
    items = [
        manual(DOMAIN, a, NOW, note="import")
        for a in ("a@x.org", "Known@x.org", "A@x.org", "b@x.org")
    ]
    counts = await suppressions.import_suppressions(pool, DOMAIN, items)
    assert counts == suppressions.ImportCounts(added=2, present=2)
    known = await suppressions.get(pool, DOMAIN, "known@x.org", NOW)
    assert known is not None and known.reason == HARD_BOUNCE
    with pytest.raises(NotFound):
        await suppressions.import_suppressions(
            pool, "gone.example", [manual("gone.example", "a@x.org", NOW)]
        )
    with pytest.raises(ValueError, match="one Domain and one reason"):
        await suppressions.import_suppressions(pool, DOMAIN, [manual(OTHER, "a@x.org", NOW)])


async def test_intake_lookup_finds_the_suppressed_among_many(pool: asyncpg.Pool) -> None:
    addresses = [f"user{i}@recipients.example" for i in range(5000)]
    await suppressions.import_suppressions(
        pool, DOMAIN, [manual(DOMAIN, a, NOW) for a in addresses[::10]]
    )
    await suppressions.add(pool, manual(OTHER, addresses[1], NOW), NOW)
    found = await suppressions.suppressed_keys(pool, DOMAIN, addresses, NOW)
    assert found == set(addresses[::10])
    assert await suppressions.suppressed_keys(pool, DOMAIN, [], NOW) == set()


async def test_concurrent_events_for_one_address_store_one_row(pool: asyncpg.Pool) -> None:
    results = await asyncio.gather(
        *(
            suppressions.add_from_event(pool, hard_bounce("race@x.org", event_id=f"b.{i}"))
            for i in range(8)
        )
    )
    assert results.count(suppressions.Added.ADDED) == 1
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_soft_bounces_are_counted_once_per_event_within_the_window(
    pool: asyncpg.Pool,
) -> None:
    async def record(event_id: str, at: datetime) -> int:
        return await suppressions.record_soft_bounce(
            pool,
            domain=DOMAIN,
            key="soft@x.org",
            event_id=event_id,
            bounced_at=at,
            since=NOW - timedelta(days=7),
        )

    assert await record("s.1", NOW - timedelta(days=8)) == 0  # already outside the window
    assert await record("s.2", NOW - timedelta(days=2)) == 1
    assert await record("s.2", NOW - timedelta(days=2)) == 1  # redelivered: counted once
    assert await record("s.3", NOW) == 2
    assert await suppressions.delete_soft_bounces_before(pool, NOW - timedelta(days=1)) == 1
    assert await pool.fetchval("SELECT count(*) FROM suppression_soft_bounces") == 1


async def test_concurrent_soft_bounces_of_one_address_each_see_the_others(
    pool: asyncpg.Pool,
) -> None:
    counts = await asyncio.gather(
        *(
            suppressions.record_soft_bounce(
                pool,
                domain=DOMAIN,
                key="busy@x.org",
                event_id=f"c.{i}",
                bounced_at=NOW,
                since=NOW - timedelta(days=1),
            )
            for i in range(6)
        )
    )
    # Serialised: whatever the order, the counts are 1..6, so the limit is met exactly once.
    assert sorted(counts) == [1, 2, 3, 4, 5, 6]
