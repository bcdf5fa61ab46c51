"""What the Stats worker writes: outcome events into `stats`, hourly counters into
`aggregated_stats`, and the retention sweep of both `stats` and expired `stats_keys`.

Recording is idempotent: the event row is inserted with ON CONFLICT DO NOTHING against both
unique indexes (the event id, and the original's (email, message_id, domain, type, timestamp)),
and the hourly counter is bumped in the same transaction only when the row was new. A redelivered
or re-published event therefore counts once, and a crash between the two writes cannot leave
them disagreeing (the original Nak-looped on duplicates and double-counted aggregates, spec §3.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from kannon.model.outcome import Outcome


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def hour_bucket(timestamp: datetime) -> datetime:
    """Start of the UTC hour holding `timestamp` (naive UTC, as aggregated_stats stores it)."""
    return _naive_utc(timestamp).replace(minute=0, second=0, microsecond=0)


async def record_event(pool: asyncpg.Pool, outcome: Outcome, data: Mapping[str, Any]) -> bool:
    """Store one outcome event and count it; False when it was already stored (a duplicate).

    `data` is the protojson of the event's StatsData (`kannon.wire.stats.data_json`);
    `outcome.event_id` (the bus message's Nats-Msg-Id) may be empty when the publisher set none.
    """
    timestamp = _naive_utc(outcome.timestamp)
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            """
            INSERT INTO stats (type, email, message_id, domain, timestamp, data, event_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT DO NOTHING
            RETURNING id
            """,
            outcome.type,
            outcome.recipient,
            outcome.batch_id,
            outcome.domain,
            timestamp,
            dict(data),
            outcome.event_id or None,
        )
        if inserted is None:
            return False
        await conn.execute(
            """
            INSERT INTO aggregated_stats (domain, timestamp, type, count) VALUES ($1, $2, $3, 1)
            ON CONFLICT (domain, timestamp, type)
            DO UPDATE SET count = aggregated_stats.count + 1
            """,
            outcome.domain,
            hour_bucket(timestamp),
            outcome.type,
        )
    return True


async def delete_stats_before(pool: asyncpg.Pool, cutoff: datetime, *, page: int = 10_000) -> int:
    """Delete `stats` rows older than `cutoff`, `page` rows per transaction so a large backlog
    never holds long locks; returns how many were deleted. Aggregates are kept (as the
    original does): they are small and are the long-term history."""
    naive = _naive_utc(cutoff)
    total = 0
    while True:
        status = await pool.execute(
            """
            DELETE FROM stats WHERE id IN (
                SELECT id FROM stats WHERE timestamp < $1 LIMIT $2
            )
            """,
            naive,
            page,
        )
        deleted = int(status.rsplit(" ", 1)[-1])
        total += deleted
        if deleted < page:
            return total


async def delete_expired_stats_keys(pool: asyncpg.Pool, now: datetime) -> int:
    """Delete tracking-token keys that expired (no token they signed can still verify)."""
    status = await pool.execute(
        "DELETE FROM stats_keys WHERE expiration_time < $1", _naive_utc(now)
    )
    return int(status.rsplit(" ", 1)[-1])
