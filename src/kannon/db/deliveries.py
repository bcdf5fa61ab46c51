"""The Pool's state transitions (`sending_pool_emails`): the only code that changes a row's status.

Claims take rows with `FOR UPDATE SKIP LOCKED`, so any number of Validators and Dispatchers can
claim concurrently without blocking each other and without claiming a row twice, and stamp
`claimed_at`, so a claim abandoned by a crashed worker is reclaimed after a timeout instead of
stranding the Delivery (ADR 0005).

Every function takes the Database and, where the clock matters, `now` from the caller, so
tests can move time. Datetimes go in timezone-aware (naive ones are taken as UTC) and come out
timezone-aware UTC; the columns hold naive UTC, as the original's did (`times.py`).

Status guards make each transition idempotent: a transition applies only to rows in the state it
expects, and reports how many rows (or whether the row) it changed, so a redelivered event or a
worker that lost its claim to a Reclaim changes nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time
from kannon.db.wakeups import SCHEDULED_CHANNEL, notify
from kannon.model.delivery import (
    IN_FLIGHT_STATUSES,
    QUEUED,
    SCHEDULED,
    SENDING,
    TO_VALIDATE,
    VALIDATING,
    PoolDelivery,
)
from kannon.model.ip_pool import DEFAULT_POOL
from kannon.model.tracking import DEFAULT_CEILING, TrackingPolicy

_NAMES = (
    "id",
    "message_id",
    "email",
    "domain",
    "status",
    "send_attempts_cnt",
    "original_scheduled_time",
    "scheduled_time",
    "fields",
    "claimed_at",
    "last_reply_code",
    "last_reply_msg",
    "queued_at",
    "envelope_seq",
    "tracking",
    "reject_reason",
)
_COLUMNS = ", ".join(_NAMES)
_P_COLUMNS = ", ".join("p." + name for name in _NAMES)  # RETURNING of an UPDATE ... FROM


@dataclass(frozen=True)
class ReclaimCounts:
    """How many abandoned claims `reclaim_stale` returned to the queue, per status."""

    validating: int
    sending: int

    @property
    def total(self) -> int:
        return self.validating + self.sending


def _fields(value: Any) -> Mapping[str, str]:
    # The pool's codec decodes jsonb; a raw connection without it hands over the JSON text.
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _delivery(row: asyncpg.Record) -> PoolDelivery:
    claimed_at = row["claimed_at"]
    queued_at = row["queued_at"]
    return PoolDelivery(
        id=row["id"],
        message_id=row["message_id"],
        email=row["email"],
        domain=row["domain"],
        status=row["status"],
        send_attempts_cnt=row["send_attempts_cnt"],
        original_scheduled_time=from_db_time(row["original_scheduled_time"]),
        scheduled_time=from_db_time(row["scheduled_time"]),
        fields=_fields(row["fields"]),
        claimed_at=from_db_time(claimed_at) if claimed_at is not None else None,
        last_reply_code=row["last_reply_code"],
        last_reply_msg=row["last_reply_msg"],
        queued_at=from_db_time(queued_at) if queued_at is not None else None,
        envelope_seq=row["envelope_seq"],
        tracking=TrackingPolicy.from_json(
            json.loads(tracking) if isinstance(tracking := row["tracking"], str) else tracking,
            DEFAULT_CEILING,
        ),
        reject_reason=row["reject_reason"],
    )


def _count(status: str) -> int:
    """Row count of an asyncpg command tag such as 'UPDATE 3' or 'DELETE 0'."""
    return int(status.rsplit(" ", 1)[-1])


async def claim_for_validation(db: Database, limit: int, now: datetime) -> list[PoolDelivery]:
    """Claim up to `limit` Deliveries waiting for validation (to_validate → validating)."""
    rows = await db.fetch(
        f"""
        WITH picked AS (
            SELECT id FROM sending_pool_emails
            WHERE status = $1
            ORDER BY scheduled_time
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        UPDATE sending_pool_emails AS p
        SET status = $3, claimed_at = $4
        FROM picked
        WHERE p.id = picked.id
        RETURNING {_P_COLUMNS}
        """,
        TO_VALIDATE,
        limit,
        VALIDATING,
        to_db_time(now),
    )
    return [_delivery(row) for row in rows]


async def _move(db: Database, ids: Sequence[int], source: str, target: str) -> int:
    """source → target for the given rows still in `source`; returns how many moved."""
    if not ids:
        return 0
    status = await db.execute(
        """
        UPDATE sending_pool_emails SET status = $1, claimed_at = NULL
        WHERE id = ANY($2::int[]) AND status = $3
        """,
        target,
        list(ids),
        source,
    )
    return _count(status)


async def mark_validated(db: Database, ids: Sequence[int]) -> int:
    """validating → scheduled; returns how many rows were still claimed for validation. The
    Dispatcher is woken when any moved (ADR 0036)."""
    moved = await _move(db, ids, VALIDATING, SCHEDULED)
    if moved:
        await notify(db, SCHEDULED_CHANNEL)
    return moved


async def delete(db: Database, ids: Sequence[int]) -> int:
    """Remove Deliveries that end here (a Rejected address); returns how many existed."""
    if not ids:
        return 0
    status = await db.execute(
        "DELETE FROM sending_pool_emails WHERE id = ANY($1::int[])", list(ids)
    )
    return _count(status)


async def release_validation(db: Database, ids: Sequence[int]) -> int:
    """validating → to_validate now, for claims the Validator could not finish (e.g. the bus
    refused the event), rather than waiting for the Reclaim timeout."""
    return await _move(db, ids, VALIDATING, TO_VALIDATE)


async def claim_for_dispatch(db: Database, limit: int, now: datetime) -> list[PoolDelivery]:
    """Claim up to `limit` due Deliveries, oldest due first (scheduled → sending)."""
    db_now = to_db_time(now)
    rows = await db.fetch(
        f"""
        WITH picked AS (
            SELECT id FROM sending_pool_emails
            WHERE status = $1 AND scheduled_time <= $2
            ORDER BY scheduled_time
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        UPDATE sending_pool_emails AS p
        SET status = $4, claimed_at = $2
        FROM picked
        WHERE p.id = picked.id
        RETURNING {_P_COLUMNS}
        """,
        SCHEDULED,
        db_now,
        limit,
        SENDING,
    )
    return [_delivery(row) for row in rows]


async def release_dispatch(db: Database, ids: Sequence[int], at: datetime | None = None) -> int:
    """sending → scheduled, same attempt count, due at `at` (None: keep its due time), for claims
    a Dispatcher could not finish: its database or bus failed before the Envelope was built, or
    the publish failed. No attempt is charged, and the retry publishes the same `Nats-Msg-Id`,
    so should the failed publish have been stored after all, the stream drops the second copy."""
    if not ids:
        return 0
    status = await db.execute(
        """
        UPDATE sending_pool_emails
        SET status = $1, claimed_at = NULL,
            scheduled_time = COALESCE($4::timestamp, scheduled_time)
        WHERE id = ANY($2::int[]) AND status = $3
        """,
        SCHEDULED,
        list(ids),
        SENDING,
        to_db_time(at) if at is not None else None,
    )
    return _count(status)


async def mark_queued(
    db: Database,
    published: Sequence[tuple[int, int, int]],
    now: datetime,
    ip_pool: str = DEFAULT_POOL,
) -> int:
    """sending → queued for Deliveries whose Envelope the stream has stored on IP db
    `ip_pool`'s subject.

    `published` holds (row id, attempt, stream sequence) per Envelope. A row changes only while it
    is still claimed for that attempt: an outcome may already have ended or rescheduled it (the
    SMTPSender can be faster than this update). Returns how many rows moved.
    """
    if not published:
        return 0
    status = await db.execute(
        """
        UPDATE sending_pool_emails AS p
        SET status = $1, claimed_at = NULL, queued_at = $2, envelope_seq = t.seq,
            envelope_pool = $7
        FROM unnest($3::int[], $4::int[], $5::bigint[]) AS t(id, attempt, seq)
        WHERE p.id = t.id AND p.status = $6 AND p.send_attempts_cnt = t.attempt
        """,
        QUEUED,
        to_db_time(now),
        [row_id for row_id, _, _ in published],
        [attempt for _, attempt, _ in published],
        [seq for _, _, seq in published],
        SENDING,
        ip_pool,
    )
    return _count(status)


async def reschedule(
    db: Database,
    key: int | tuple[str, str],
    at: datetime,
    reply_code: int | None,
    reply_msg: str | None,
    *,
    attempt: int | None = None,
) -> bool:
    """sending|queued → scheduled at `at`, one more attempt counted; False when no attempt of the
    Delivery is under way (gone, or already rescheduled by an earlier copy of the same event).

    `key` is the row id or `(message_id, email)`; `attempt`, when given, must be the row's
    current attempt (the one that failed). `reply_code`/`reply_msg` record what a remote server
    last answered; pass None when none answered (connection failure, build failure) so the last
    real reply is kept: it decides between Bounced and Failed when the budget is spent.
    """
    args: list[object]
    if isinstance(key, int):
        where, args = "id = $7", [key]
    else:
        where, args = "message_id = $7 AND email = $8", [key[0], key[1]]
    status = await db.execute(
        f"""
        UPDATE sending_pool_emails
        SET status = $1, scheduled_time = $2, send_attempts_cnt = send_attempts_cnt + 1,
            claimed_at = NULL, queued_at = NULL, envelope_seq = NULL,
            last_reply_code = CASE WHEN $3::int IS NULL THEN last_reply_code ELSE $3::int END,
            last_reply_msg = CASE WHEN $3::int IS NULL THEN last_reply_msg ELSE $4::varchar END
        WHERE {where} AND status = ANY($5::varchar[])
            AND ($6::int IS NULL OR send_attempts_cnt = $6::int)
        """,
        SCHEDULED,
        to_db_time(at),
        reply_code,
        reply_msg,
        sorted(IN_FLIGHT_STATUSES),
        attempt,
        *args,
    )
    return _count(status) == 1


async def delete_by_recipient(db: Database, message_id: str, email: str) -> bool:
    """Remove a Delivery that ended (Delivered, Bounced, Failed); False when already gone."""
    status = await db.execute(
        "DELETE FROM sending_pool_emails WHERE message_id = $1 AND email = $2", message_id, email
    )
    return _count(status) == 1


async def delete_by_recipients(db: Database, recipients: Sequence[tuple[str, str]]) -> list[bool]:
    """`delete_by_recipient` for many (message_id, email) pairs in one statement; per pair,
    whether it removed a row (a pair given twice removes it once)."""
    if not recipients:
        return []
    rows = await db.fetch(
        """
        DELETE FROM sending_pool_emails AS p
        USING unnest($1::varchar[], $2::varchar[]) AS t(message_id, email)
        WHERE p.message_id = t.message_id AND p.email = t.email
        RETURNING p.message_id, p.email
        """,
        [message_id for message_id, _ in recipients],
        [email for _, email in recipients],
    )
    gone = {(row["message_id"], row["email"]) for row in rows}
    result = []
    for pair in recipients:
        result.append(pair in gone)
        gone.discard(pair)
    return result


# Claims in status $1 older than $2 (or never stamped), at most $3, back to status $4.
_RECLAIM = """
    WITH stale AS (
        SELECT id FROM sending_pool_emails
        WHERE status = $1 AND (claimed_at IS NULL OR claimed_at < $2)
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    UPDATE sending_pool_emails AS p SET status = $4, claimed_at = NULL
    FROM stale WHERE p.id = stale.id
"""


async def reclaim_stale(
    db: Database,
    now: datetime,
    validating_timeout: timedelta | None,
    sending_timeout: timedelta | None,
    *,
    limit: int = 1000,
) -> ReclaimCounts:
    """Return abandoned claims to the queue: validating → to_validate after
    `validating_timeout`, sending → scheduled (same attempt; due at once, its time is past) after
    `sending_timeout`. A None timeout leaves that status alone (each Component reclaims its own).

    At most `limit` rows per status per call (short transactions); call again while the counts
    reach `limit`. A reclaimed dispatch claim keeps its attempt: if its Envelope was published
    after all, dispatching it again publishes the same `Nats-Msg-Id`, which the stream drops
    (claims are reclaimed well inside its duplicate window); `queued` rows are never touched.
    """
    db_now = to_db_time(now)
    validating = sending = "UPDATE 0"
    async with db.acquire() as conn, conn.transaction():
        if validating_timeout is not None:
            validating = await conn.execute(
                _RECLAIM, VALIDATING, db_now - validating_timeout, limit, TO_VALIDATE
            )
        if sending_timeout is not None:
            sending = await conn.execute(
                _RECLAIM, SENDING, db_now - sending_timeout, limit, SCHEDULED
            )
    return ReclaimCounts(validating=_count(validating), sending=_count(sending))


async def reclaim_all_stale(
    db: Database,
    now: datetime,
    validating_timeout: timedelta | None,
    sending_timeout: timedelta | None,
    *,
    page: int = 1000,
) -> ReclaimCounts:
    """`reclaim_stale` page after page until no status fills a page; the summed counts."""
    validating = sending = 0
    while True:
        counts = await reclaim_stale(db, now, validating_timeout, sending_timeout, limit=page)
        validating += counts.validating
        sending += counts.sending
        if counts.validating < page and counts.sending < page:
            return ReclaimCounts(validating=validating, sending=sending)


async def lost_in_queue(
    db: Database,
    queued_before: datetime,
    acked_up_to: Mapping[str, int],
    first_in_stream: int,
    limit: int,
) -> list[PoolDelivery]:
    """Queued Deliveries whose Envelope can no longer be sent: the sender nodes of its IP db
    have acknowledged every Envelope of the pool up to `acked_up_to[pool]` (that pool's consumer's
    ack floor), or the stream no longer holds it (below `first_in_stream`). Only rows queued
    before `queued_before` are considered; a pool missing from `acked_up_to` has acked nothing."""
    rows = await db.fetch(
        f"""
        SELECT {_P_COLUMNS} FROM sending_pool_emails AS p
        LEFT JOIN unnest($3::varchar[], $4::bigint[]) AS f(ip_pool, floor)
            ON f.ip_pool = COALESCE(p.envelope_pool, $6)
        WHERE p.status = $1 AND p.queued_at < $2
            AND (p.envelope_seq <= COALESCE(f.floor, 0) OR p.envelope_seq < $5)
        ORDER BY p.queued_at
        LIMIT $7
        """,
        QUEUED,
        to_db_time(queued_before),
        list(acked_up_to),
        list(acked_up_to.values()),
        first_in_stream,
        DEFAULT_POOL,
        limit,
    )
    return [_delivery(row) for row in rows]


async def get(db: Database, message_id: str, email: str) -> PoolDelivery | None:
    """The Delivery of `email` in Batch `message_id`, or None when it is not in the Pool."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM sending_pool_emails WHERE message_id = $1 AND email = $2",
        message_id,
        email,
    )
    return _delivery(row) if row is not None else None


async def get_by_id(db: Database, delivery_id: int) -> PoolDelivery | None:
    """The Delivery with this row id, or None."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM sending_pool_emails WHERE id = $1", delivery_id
    )
    return _delivery(row) if row is not None else None


async def count_by_status(db: Database) -> dict[str, int]:
    """Rows per status (for metrics and tests)."""
    rows = await db.fetch("SELECT status, count(*) AS n FROM sending_pool_emails GROUP BY status")
    return {row["status"]: int(row["n"]) for row in rows}
