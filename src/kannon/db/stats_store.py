"""What the Stats worker writes: outcome events into `stats`, hourly counters into
`aggregated_stats`, and the retention sweep of both `stats` and expired `stats_keys`.

Recording is idempotent: the event row is inserted with ON CONFLICT DO NOTHING against both
unique indexes (the event id, and the original's (email, message_id, domain, type, timestamp)),
and the hourly counter is bumped in the same statement (so the same transaction) only when the
row was new. A redelivered or re-published event therefore counts once, and a crash between
the two writes cannot leave them disagreeing (the original Nak-looped on duplicates and
double-counted aggregates; ADR 0006).

Events are recorded a batch at a time, in one statement per batch: one transaction per event
(two events per Delivery) made the Stats worker a fifth of standalone's CPU.

Engagement events recorded under the ``anonymous`` Tracking Mode (ADR 0033) get no `stats` row:
they are only counted. Their ids go into `anonymous_events` (with Domain, type and time, never a
Recipient), which plays the unique index's part so a redelivered one still counts once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from kannon.db.database import Database
from kannon.db.times import to_db_time
from kannon.model.outcome import Outcome
from kannon.model.tracking import TrackingMode

_ANONYMOUS = int(TrackingMode.ANONYMOUS)


def hour_bucket(timestamp: datetime) -> datetime:
    """Start of the UTC hour holding `timestamp` (naive UTC, as aggregated_stats stores it)."""
    return to_db_time(timestamp).replace(minute=0, second=0, microsecond=0)


class EventRefused(Exception):
    """PostgreSQL refused an event's data (e.g. a NUL character in a text column): retrying the
    same statement cannot succeed. Raised by `record_events` instead of the driver's error so a
    caller can isolate the offending event from the others of its batch."""


# One statement, so one round trip and an implicit transaction: the event rows go in with
# ON CONFLICT DO NOTHING (against both unique indexes; an event repeated within the batch is
# skipped like one stored earlier), and the hourly counters grow by the number of rows that
# really went in. Rows are inserted, and counters upserted, in a fixed order so that two Stats
# replicas writing overlapping batches take their row locks in the same order.
_RECORD_EVENTS = """
WITH input AS (
    SELECT * FROM unnest(
        $1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::timestamp[],
        $6::jsonb[], $7::varchar[], $8::smallint[]
    ) WITH ORDINALITY
        AS t(type, email, message_id, domain, timestamp, data, event_id, tracking_mode, ord)
), inserted AS (
    INSERT INTO stats (type, email, message_id, domain, timestamp, data, event_id, tracking_mode)
    SELECT type, email, message_id, domain, timestamp, data, event_id, tracking_mode
    FROM input WHERE tracking_mode <> $9 ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING type, email, message_id, domain, timestamp
), anonymous AS (
    INSERT INTO anonymous_events (event_id, domain, type, timestamp)
    SELECT COALESCE(event_id, 'anonymous.' || gen_random_uuid()::text), domain, type, timestamp
    FROM input WHERE tracking_mode = $9 ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING event_id, domain, type, timestamp
), counted AS (
    INSERT INTO aggregated_stats (domain, timestamp, type, count)
    SELECT domain, date_trunc('hour', timestamp), type, count(*) FROM (
        SELECT domain, timestamp, type FROM inserted
        UNION ALL SELECT domain, timestamp, type FROM anonymous
    ) AS new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (domain, timestamp, type)
    DO UPDATE SET count = aggregated_stats.count + EXCLUDED.count
)
SELECT type, email, message_id, domain, timestamp, NULL::varchar AS event_id FROM inserted
UNION ALL
SELECT type, NULL, NULL, domain, timestamp, event_id FROM anonymous
"""

EventKey = tuple[str, str, str, str, datetime]


async def record_events(
    db: Database, events: Sequence[tuple[Outcome, Mapping[str, Any]]]
) -> list[bool]:
    """Store outcome events and count them, all or none; per event, False when it was already
    stored (a duplicate; of several copies within one call, one counts).

    Each `data` is the protojson of the event's StatsData (`kannon.wire.stats.data_json`);
    `outcome.event_id` (the bus message's Nats-Msg-Id) may be empty when the publisher set none.
    Raises EventRefused when PostgreSQL refuses the data of some event, the driver's error when
    the database fails.
    """
    if not events:
        return []
    # Sorted by event id: with the ORDER BY above, concurrent writers lock index entries in
    # the same order. `order` maps the sorted position back to the caller's.
    order = sorted(range(len(events)), key=lambda i: events[i][0].event_id)
    rows = [events[i] for i in order]
    keys: list[EventKey] = [
        (o.type, o.recipient, o.batch_id, o.domain, to_db_time(o.timestamp)) for o, _ in rows
    ]
    try:
        stored = await db.fetch(
            _RECORD_EVENTS,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            [k[4] for k in keys],
            [dict(data) for _, data in rows],
            [o.event_id or None for o, _ in rows],
            [int(o.tracking_mode) for o, _ in rows],
            _ANONYMOUS,
        )
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        raise EventRefused(str(exc)) from exc
    # A stored row is identified by the unique (type, email, message_id, domain, timestamp), an
    # anonymous event by its id (one without an id was given a fresh one: it is always new).
    new = {
        (r["type"], r["email"], r["message_id"], r["domain"], r["timestamp"])
        for r in stored
        if r["event_id"] is None
    }
    new_anonymous = {r["event_id"] for r in stored if r["event_id"] is not None}
    result = [False] * len(events)
    for position, key, (outcome, _) in zip(order, keys, rows, strict=True):
        if outcome.tracking_mode is TrackingMode.ANONYMOUS:
            if not outcome.event_id:
                result[position] = True
            elif outcome.event_id in new_anonymous:
                new_anonymous.discard(outcome.event_id)
                result[position] = True
        elif key in new:
            new.discard(key)  # a repeat of the key within this call is the duplicate
            result[position] = True
    return result


async def record_event(db: Database, outcome: Outcome, data: Mapping[str, Any]) -> bool:
    """Store one outcome event and count it; False when it was already stored (a duplicate).

    See `record_events`, of which this is the one-event case.
    """
    return (await record_events(db, [(outcome, data)]))[0]


async def delete_stats_before(db: Database, cutoff: datetime, *, page: int = 10_000) -> int:
    """Delete `stats` rows older than `cutoff`, `page` rows per transaction so a large backlog
    never holds long locks; returns how many were deleted. Aggregates are kept (as the
    original does): they are small and are the long-term history."""
    naive = to_db_time(cutoff)
    total = 0
    while True:
        status = await db.execute(
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
            break
    status = await db.execute("DELETE FROM anonymous_events WHERE timestamp < $1", naive)
    return total + int(status.rsplit(" ", 1)[-1])


async def delete_expired_stats_keys(db: Database, now: datetime) -> int:
    """Delete tracking-token keys that expired (no token they signed can still verify)."""
    status = await db.execute("DELETE FROM stats_keys WHERE expiration_time < $1", to_db_time(now))
    return int(status.rsplit(" ", 1)[-1])
