"""Pool transitions (kannon.db.deliveries) against a real PostgreSQL: claims, status guards,
reschedule bookkeeping, Reclaim, and the concurrent-claim contract (each row claimed once)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from kannon.db import deliveries
from kannon.db.database import Database
from kannon.model.delivery import QUEUED, SCHEDULED, SENDING, TO_VALIDATE, VALIDATING
from tests.support import store_batch_row

NOW = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
BATCH = "msg_testbatch@k.example.com"


@pytest.fixture
async def pool(pool: Database) -> Database:
    await store_batch_row(pool, BATCH, "k.example.com")
    return pool


async def add(
    pool: asyncpg.Pool,
    emails: list[str],
    *,
    status: str = TO_VALIDATE,
    scheduled: datetime = NOW,
    claimed_at: datetime | None = None,
    attempts: int = 0,
    fields: dict[str, str] | None = None,
) -> list[int]:
    """Insert Pool rows the way the API does (plus state for the later stages)."""
    naive = scheduled.astimezone(UTC).replace(tzinfo=None)
    claimed = claimed_at.astimezone(UTC).replace(tzinfo=None) if claimed_at else None
    rows = await pool.fetch(
        """
        INSERT INTO sending_pool_emails (email, status, scheduled_time, original_scheduled_time,
            message_id, fields, domain, claimed_at, send_attempts_cnt)
        SELECT e, $2, $3, $3, $4, $5, 'k.example.com', $6, $7 FROM unnest($1::text[]) AS e
        RETURNING id
        """,
        emails,
        status,
        naive,
        BATCH,
        fields or {},
        claimed,
        attempts,
    )
    return [row["id"] for row in rows]


async def statuses(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT email, status FROM sending_pool_emails")
    return {row["email"]: row["status"] for row in rows}


async def test_claim_for_validation_takes_only_waiting_rows_and_stamps_the_claim(
    pool: asyncpg.Pool,
) -> None:
    await add(pool, ["a@x.io", "b@x.io", "c@x.io"], fields={"name": "Ann"})
    await add(pool, ["s@x.io"], status=SCHEDULED)
    claimed = await deliveries.claim_for_validation(pool, 2, NOW)
    assert len(claimed) == 2
    for d in claimed:
        assert d.status == VALIDATING
        assert d.claimed_at == NOW
        assert d.fields == {"name": "Ann"}
        assert d.message_id == BATCH and d.domain == "k.example.com"
        assert d.original_scheduled_time == NOW and d.scheduled_time.tzinfo is UTC
    rest = await deliveries.claim_for_validation(pool, 10, NOW)
    assert [d.email for d in rest] == sorted(
        {"a@x.io", "b@x.io", "c@x.io"} - {d.email for d in claimed}
    )
    assert await deliveries.claim_for_validation(pool, 10, NOW) == []
    assert (await statuses(pool))["s@x.io"] == SCHEDULED


async def test_mark_validated_and_delete_apply_only_to_validation_claims(
    pool: asyncpg.Pool,
) -> None:
    ids = await add(pool, ["a@x.io", "b@x.io", "bad"])
    waiting = await add(pool, ["w@x.io"])
    claimed = {d.email: d.id for d in await deliveries.claim_for_validation(pool, 3, NOW)}
    assert set(claimed.values()) == set(ids)
    assert (
        await deliveries.mark_validated(pool, [claimed["a@x.io"], claimed["b@x.io"], *waiting]) == 2
    )
    assert await deliveries.mark_validated(pool, [claimed["a@x.io"]]) == 0  # already scheduled
    assert await deliveries.delete(pool, [claimed["bad"]]) == 1
    assert await deliveries.delete(pool, [claimed["bad"]]) == 0
    assert await deliveries.mark_validated(pool, []) == 0
    assert await deliveries.delete(pool, []) == 0
    assert await statuses(pool) == {"a@x.io": SCHEDULED, "b@x.io": SCHEDULED, "w@x.io": TO_VALIDATE}
    a = await deliveries.get(pool, BATCH, "a@x.io")
    assert a is not None and a.claimed_at is None


async def test_release_validation_returns_claims_at_once(pool: asyncpg.Pool) -> None:
    await add(pool, ["a@x.io", "b@x.io"])
    claimed = await deliveries.claim_for_validation(pool, 1, NOW)
    assert await deliveries.release_validation(pool, [d.id for d in claimed]) == 1
    assert set((await statuses(pool)).values()) == {TO_VALIDATE}
    assert len(await deliveries.claim_for_validation(pool, 5, NOW)) == 2


async def test_claim_for_dispatch_takes_due_scheduled_rows_oldest_first(
    pool: asyncpg.Pool,
) -> None:
    await add(pool, ["late@x.io"], status=SCHEDULED, scheduled=NOW - timedelta(minutes=1))
    await add(pool, ["early@x.io"], status=SCHEDULED, scheduled=NOW - timedelta(hours=1))
    await add(pool, ["now@x.io"], status=SCHEDULED, scheduled=NOW)
    await add(pool, ["future@x.io"], status=SCHEDULED, scheduled=NOW + timedelta(seconds=1))
    await add(pool, ["new@x.io"])  # not validated yet
    first = await deliveries.claim_for_dispatch(pool, 1, NOW)
    assert [d.email for d in first] == ["early@x.io"]
    assert first[0].status == SENDING and first[0].claimed_at == NOW
    rest = await deliveries.claim_for_dispatch(pool, 10, NOW)
    assert {d.email for d in rest} == {"late@x.io", "now@x.io"}
    assert await deliveries.claim_for_dispatch(pool, 10, NOW) == []
    later = await deliveries.claim_for_dispatch(pool, 10, NOW + timedelta(seconds=1))
    assert [d.email for d in later] == ["future@x.io"]


async def test_dispatch_claim_returns_what_the_dispatcher_needs(pool: asyncpg.Pool) -> None:
    original = NOW - timedelta(hours=2)
    await add(
        pool,
        ["a@x.io"],
        status=SCHEDULED,
        scheduled=original,
        attempts=3,
        fields={"name": "Ann", "n": "1"},
    )
    await pool.execute(
        "UPDATE sending_pool_emails SET last_reply_code = 451, last_reply_msg = 'try later'"
    )
    (d,) = await deliveries.claim_for_dispatch(pool, 5, NOW)
    assert (d.email, d.message_id, d.domain) == ("a@x.io", BATCH, "k.example.com")
    assert d.fields == {"name": "Ann", "n": "1"}
    assert d.send_attempts_cnt == 3
    assert d.original_scheduled_time == original == d.scheduled_time
    assert (d.last_reply_code, d.last_reply_msg) == (451, "try later")


async def test_reschedule_counts_the_attempt_and_keeps_the_last_real_reply(
    pool: asyncpg.Pool,
) -> None:
    await add(pool, ["a@x.io", "b@x.io"], status=SCHEDULED, scheduled=NOW)
    claimed = {d.email: d for d in await deliveries.claim_for_dispatch(pool, 5, NOW)}
    at = NOW + timedelta(minutes=5)

    # By id, with a remote reply.
    assert await deliveries.reschedule(pool, claimed["a@x.io"].id, at, 451, "greylisted")
    a = await deliveries.get(pool, BATCH, "a@x.io")
    assert a is not None
    assert (a.status, a.scheduled_time, a.send_attempts_cnt) == (SCHEDULED, at, 1)
    assert (a.claimed_at, a.last_reply_code, a.last_reply_msg) == (None, 451, "greylisted")
    # The same event again (a redelivery): the Delivery is no longer being sent.
    assert not await deliveries.reschedule(pool, claimed["a@x.io"].id, at, 451, "greylisted")
    a2 = await deliveries.get(pool, BATCH, "a@x.io")
    assert a2 is not None and a2.send_attempts_cnt == 1

    # Next attempt: nobody answers; the last real reply stays.
    (again,) = await deliveries.claim_for_dispatch(pool, 5, at)
    assert again.email == "a@x.io"
    assert await deliveries.reschedule(pool, (BATCH, "a@x.io"), at + timedelta(hours=1), None, None)
    a3 = await deliveries.get(pool, BATCH, "a@x.io")
    assert a3 is not None
    assert (a3.send_attempts_cnt, a3.last_reply_code, a3.last_reply_msg) == (2, 451, "greylisted")
    assert a3.scheduled_time == at + timedelta(hours=1)

    # By recipient, with a reply.
    assert await deliveries.reschedule(pool, (BATCH, "b@x.io"), at, 421, "busy")
    b = await deliveries.get_by_id(pool, claimed["b@x.io"].id)
    assert b is not None and (b.last_reply_code, b.send_attempts_cnt) == (421, 1)
    assert not await deliveries.reschedule(pool, (BATCH, "nobody@x.io"), at, None, None)


async def test_delete_by_recipient_reports_whether_it_removed_a_row(pool: asyncpg.Pool) -> None:
    await add(pool, ["a@x.io", "b@x.io"], status=SENDING)
    assert await deliveries.delete_by_recipient(pool, BATCH, "a@x.io")
    assert not await deliveries.delete_by_recipient(pool, BATCH, "a@x.io")
    assert await deliveries.get(pool, BATCH, "a@x.io") is None
    assert await deliveries.get(pool, BATCH, "b@x.io") is not None
    assert await deliveries.count_by_status(pool) == {SENDING: 1}


async def test_delete_by_recipients_removes_many_in_one_call(pool: asyncpg.Pool) -> None:
    await add(pool, ["a@x.io", "b@x.io", "c@x.io"], status=SENDING)
    pairs = [(BATCH, "a@x.io"), (BATCH, "gone@x.io"), (BATCH, "c@x.io"), (BATCH, "a@x.io")]
    assert await deliveries.delete_by_recipients(pool, pairs) == [True, False, True, False]
    assert await deliveries.count_by_status(pool) == {SENDING: 1}
    assert await deliveries.get(pool, BATCH, "b@x.io") is not None
    assert await deliveries.delete_by_recipients(pool, pairs) == [False] * 4
    assert await deliveries.delete_by_recipients(pool, []) == []


async def test_reclaim_returns_only_stale_claims(pool: asyncpg.Pool) -> None:
    await add(pool, ["v-stale@x.io"], status=VALIDATING, claimed_at=NOW - timedelta(minutes=6))
    await add(pool, ["v-fresh@x.io"], status=VALIDATING, claimed_at=NOW - timedelta(minutes=4))
    await add(
        pool,
        ["s-stale@x.io"],
        status=SENDING,
        claimed_at=NOW - timedelta(minutes=11),
        scheduled=NOW - timedelta(minutes=12),
        attempts=2,
    )
    await add(pool, ["s-fresh@x.io"], status=SENDING, claimed_at=NOW - timedelta(minutes=9))
    await add(pool, ["s-null@x.io"], status=SENDING)  # claimed by something that did not stamp
    await add(pool, ["waiting@x.io"], scheduled=NOW - timedelta(days=1))
    await add(pool, ["queued@x.io"], status=QUEUED)  # published: never a stale claim
    counts = await deliveries.reclaim_stale(pool, NOW, timedelta(minutes=5), timedelta(minutes=10))
    assert (counts.validating, counts.sending, counts.total) == (1, 2, 3)
    assert await statuses(pool) == {
        "v-stale@x.io": TO_VALIDATE,
        "v-fresh@x.io": VALIDATING,
        "s-stale@x.io": SCHEDULED,
        "s-fresh@x.io": SENDING,
        "s-null@x.io": SCHEDULED,
        "waiting@x.io": TO_VALIDATE,
        "queued@x.io": QUEUED,
    }
    v = await deliveries.get(pool, BATCH, "v-stale@x.io")
    s = await deliveries.get(pool, BATCH, "s-stale@x.io")
    assert v is not None and (v.send_attempts_cnt, v.claimed_at) == (0, None)
    # The same attempt: a reclaimed claim's Envelope, if published after all, is the same one.
    assert s is not None and (s.send_attempts_cnt, s.claimed_at) == (2, None)
    # Due at once: the next dispatch claim takes it.
    assert "s-stale@x.io" in {d.email for d in await deliveries.claim_for_dispatch(pool, 10, NOW)}
    again = await deliveries.reclaim_stale(pool, NOW, timedelta(minutes=5), timedelta(minutes=10))
    assert again.total == 0


async def test_reclaim_pages(pool: asyncpg.Pool) -> None:
    await add(
        pool,
        [f"v{i}@x.io" for i in range(5)],
        status=VALIDATING,
        claimed_at=NOW - timedelta(hours=1),
    )
    first = await deliveries.reclaim_stale(
        pool, NOW, timedelta(minutes=5), timedelta(minutes=5), limit=3
    )
    second = await deliveries.reclaim_stale(
        pool, NOW, timedelta(minutes=5), timedelta(minutes=5), limit=3
    )
    assert (first.validating, second.validating) == (3, 2)
    assert await deliveries.count_by_status(pool) == {TO_VALIDATE: 5}


async def test_naive_datetimes_are_taken_as_utc(pool: asyncpg.Pool) -> None:
    await add(pool, ["a@x.io"], status=SCHEDULED, scheduled=NOW)
    naive_before = (NOW - timedelta(seconds=1)).replace(tzinfo=None)
    assert await deliveries.claim_for_dispatch(pool, 5, naive_before) == []
    (d,) = await deliveries.claim_for_dispatch(pool, 5, NOW.replace(tzinfo=None))
    assert d.claimed_at == NOW


@pytest.mark.parametrize("stage", ["validation", "dispatch"])
async def test_concurrent_claimers_claim_each_row_exactly_once(
    pool: asyncpg.Pool, stage: str
) -> None:
    status = TO_VALIDATE if stage == "validation" else SCHEDULED
    ids = await add(
        pool,
        [f"r{i}@x.io" for i in range(200)],
        status=status,
        scheduled=NOW - timedelta(minutes=1),
    )
    claim = (
        deliveries.claim_for_validation if stage == "validation" else deliveries.claim_for_dispatch
    )
    start = asyncio.Event()

    async def claimer() -> list[int]:
        got: list[int] = []
        await start.wait()
        while batch := await claim(pool, 7, NOW):
            got.extend(d.id for d in batch)
        return got

    tasks = [asyncio.create_task(claimer()) for _ in range(4)]
    start.set()
    results = await asyncio.gather(*tasks)
    claimed = [i for result in results for i in result]
    assert sorted(claimed) == sorted(ids)  # every row, none twice
    assert sum(1 for result in results if result) >= 2  # the claimers really overlapped
    expected = VALIDATING if stage == "validation" else SENDING
    assert await deliveries.count_by_status(pool) == {expected: 200}


async def test_reclaim_leaves_a_status_alone_when_its_timeout_is_none(pool: asyncpg.Pool) -> None:
    await add(pool, ["v@x.io"], status=VALIDATING, claimed_at=NOW - timedelta(days=1))
    await add(pool, ["s@x.io"], status=SENDING, claimed_at=NOW - timedelta(days=1))
    only_validating = await deliveries.reclaim_stale(pool, NOW, timedelta(minutes=5), None)
    assert (only_validating.validating, only_validating.sending) == (1, 0)
    only_sending = await deliveries.reclaim_stale(pool, NOW, None, timedelta(minutes=5))
    assert (only_sending.validating, only_sending.sending) == (0, 1)
    assert await statuses(pool) == {"v@x.io": TO_VALIDATE, "s@x.io": SCHEDULED}


async def test_publish_moves_a_claim_to_queued_only_for_the_attempt_it_published(
    pool: asyncpg.Pool,
) -> None:
    await add(pool, ["a@x.io", "b@x.io", "c@x.io"], status=SCHEDULED)
    claimed = {d.email: d for d in await deliveries.claim_for_dispatch(pool, 10, NOW)}
    # b's outcome came first and rescheduled it (attempt 1); c's claim went back to the Pool.
    assert await deliveries.reschedule(pool, claimed["b@x.io"].id, NOW, 451, "later", attempt=0)
    assert await deliveries.release_dispatch(pool, [claimed["c@x.io"].id]) == 1
    published = [(claimed[e].id, 0, seq) for seq, e in enumerate(["a@x.io", "b@x.io", "c@x.io"])]
    assert await deliveries.mark_queued(pool, published, NOW) == 1
    a = await deliveries.get(pool, BATCH, "a@x.io")
    assert a is not None
    assert (a.status, a.claimed_at, a.queued_at, a.envelope_seq) == (QUEUED, None, NOW, 0)
    assert await statuses(pool) == {"a@x.io": QUEUED, "b@x.io": SCHEDULED, "c@x.io": SCHEDULED}
    # An error about another attempt than the row's changes nothing; about its own, it retries.
    assert not await deliveries.reschedule(pool, a.id, NOW, 451, "x", attempt=1)
    assert await deliveries.reschedule(pool, a.id, NOW, 451, "x", attempt=0)
    a = await deliveries.get(pool, BATCH, "a@x.io")
    assert a is not None
    assert (a.status, a.send_attempts_cnt, a.envelope_seq) == (SCHEDULED, 1, None)
    assert a.queued_at is None


async def test_a_released_publish_keeps_its_attempt_and_comes_due_later(
    pool: asyncpg.Pool,
) -> None:
    await add(pool, ["a@x.io"], status=SCHEDULED, attempts=3)
    [d] = await deliveries.claim_for_dispatch(pool, 10, NOW)
    later = NOW + timedelta(seconds=10)
    assert await deliveries.release_dispatch(pool, [d.id], later) == 1
    again = await deliveries.get(pool, BATCH, "a@x.io")
    assert again is not None
    assert (again.status, again.send_attempts_cnt, again.scheduled_time) == (SCHEDULED, 3, later)
    assert await deliveries.claim_for_dispatch(pool, 10, NOW) == []


async def test_lost_in_queue_lists_only_envelopes_that_can_no_longer_be_sent(
    pool: asyncpg.Pool,
) -> None:
    await add(pool, ["acked@x.io", "pending@x.io", "gone@x.io", "young@x.io"], status=QUEUED)
    for email, seq, age in [
        ("acked@x.io", 5, 120),
        ("pending@x.io", 9, 120),
        ("gone@x.io", 2, 120),
        ("young@x.io", 4, 10),
    ]:
        await pool.execute(
            "UPDATE sending_pool_emails SET queued_at = $1, envelope_seq = $2 WHERE email = $3",
            (NOW - timedelta(seconds=age)).replace(tzinfo=None),
            seq,
            email,
        )
    cutoff = NOW - timedelta(minutes=1)
    # The SMTPSender acknowledged everything up to 5 (young@ too, but it may still hear back).
    lost = await deliveries.lost_in_queue(pool, cutoff, {"default": 5}, 1, 10)
    assert sorted(d.email for d in lost) == ["acked@x.io", "gone@x.io"]
    # Nothing acknowledged, but the stream no longer holds anything below 3.
    lost = await deliveries.lost_in_queue(pool, cutoff, {"default": 0}, 3, 10)
    assert [d.email for d in lost] == ["gone@x.io"]
    # No consumer of the default pool at all: it acknowledged nothing.
    lost = await deliveries.lost_in_queue(pool, cutoff, {}, 1, 10)
    assert lost == []


async def test_lost_in_queue_compares_each_envelope_with_its_own_pools_ack_floor(
    pool: asyncpg.Pool,
) -> None:
    """Each IP pool's consumer acks its own subject's Envelopes: an `eu` Envelope below the
    default pool's floor may still be waiting for an `eu` sender (ADR 0039)."""
    await add(pool, ["eu@x.io", "default@x.io"], status=SCHEDULED)
    claimed = await deliveries.claim_for_dispatch(pool, 10, NOW)
    by_email = {d.email: d for d in claimed}
    for email, ip_pool, seq in [("eu@x.io", "eu", 4), ("default@x.io", "default", 6)]:
        d = by_email[email]
        assert await deliveries.mark_queued(pool, [(d.id, d.send_attempts_cnt, seq)], NOW, ip_pool)
    later = NOW + timedelta(minutes=5)
    lost = await deliveries.lost_in_queue(pool, later, {"default": 9, "eu": 3}, 1, 10)
    assert [d.email for d in lost] == ["default@x.io"]
    lost = await deliveries.lost_in_queue(pool, later, {"default": 5, "eu": 4}, 1, 10)
    assert [d.email for d in lost] == ["eu@x.io"]
