"""Webhook storage (ADR 0032): endpoints, one delivery row per (endpoint, event), attempts.

A delivery row is the durable promise to POST one event to one endpoint: the webhooks Component
writes it when it consumes the event (then acks the event), and works the rows off with claims
(`FOR UPDATE SKIP LOCKED` plus `claimed_at`, retaken after a timeout), so retries that last a day
never hold a bus message. `UNIQUE (endpoint_id, event_id)` makes a redelivered event a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time
from kannon.model.webhooks import PENDING, Endpoint

_ENDPOINT_COLUMNS = "id, domain, url, event_types, enabled, description, created_at, updated_at"


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row["id"],
        domain=row["domain"],
        url=row["url"],
        event_types=tuple(row["event_types"]),
        enabled=row["enabled"],
        description=row["description"],
        created_at=from_db_time(row["created_at"]),
        updated_at=from_db_time(row["updated_at"]),
    )


@dataclass(frozen=True)
class EndpointTarget:
    """What the sender needs of an endpoint."""

    endpoint: Endpoint
    secret: str


async def insert_endpoint(db: Database, endpoint: Endpoint, secret: str) -> None:
    await db.execute(
        f"""INSERT INTO webhook_endpoints ({_ENDPOINT_COLUMNS}, secret)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        endpoint.id,
        endpoint.domain,
        endpoint.url,
        list(endpoint.event_types),
        endpoint.enabled,
        endpoint.description,
        to_db_time(endpoint.created_at),
        to_db_time(endpoint.updated_at),
        secret,
    )


async def list_endpoints(db: Database, domain: str) -> list[Endpoint]:
    rows = await db.fetch(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE domain = $1 ORDER BY created_at",
        domain,
    )
    return [_endpoint(row) for row in rows]


async def get_endpoint(db: Database, domain: str, endpoint_id: str) -> Endpoint | None:
    row = await db.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE domain = $1 AND id = $2",
        domain,
        endpoint_id,
    )
    return None if row is None else _endpoint(row)


async def update_endpoint(
    db: Database,
    domain: str,
    endpoint_id: str,
    *,
    now: datetime,
    url: str | None = None,
    enabled: bool | None = None,
    description: str | None = None,
    event_types: Sequence[str] | None = None,
    secret: str | None = None,
) -> Endpoint | None:
    """Change the given fields (None = keep); None when there is no such endpoint."""
    row = await db.fetchrow(
        f"""UPDATE webhook_endpoints SET
                url = COALESCE($3, url),
                enabled = COALESCE($4, enabled),
                description = COALESCE($5, description),
                event_types = COALESCE($6, event_types),
                secret = COALESCE($7, secret),
                updated_at = $8
            WHERE domain = $1 AND id = $2
            RETURNING {_ENDPOINT_COLUMNS}""",
        domain,
        endpoint_id,
        url,
        enabled,
        description,
        None if event_types is None else list(event_types),
        secret,
        to_db_time(now),
    )
    return None if row is None else _endpoint(row)


async def delete_endpoint(db: Database, domain: str, endpoint_id: str) -> Endpoint | None:
    row = await db.fetchrow(
        f"""DELETE FROM webhook_endpoints WHERE domain = $1 AND id = $2
            RETURNING {_ENDPOINT_COLUMNS}""",
        domain,
        endpoint_id,
    )
    return None if row is None else _endpoint(row)


async def enabled_endpoints(db: Database, domains: Sequence[str]) -> list[Endpoint]:
    rows = await db.fetch(
        f"""SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
            WHERE domain = ANY($1::text[]) AND enabled""",
        list(domains),
    )
    return [_endpoint(row) for row in rows]


@dataclass(frozen=True)
class NewDelivery:
    endpoint_id: str
    event_id: str
    webhook_id: str
    domain: str
    event_type: str
    event_at: datetime
    payload: bytes


async def insert_deliveries(db: Database, deliveries: Sequence[NewDelivery], now: datetime) -> int:
    """Write the deliveries due now; those already written (a redelivered event) are skipped."""
    if not deliveries:
        return 0
    db_now = to_db_time(now)
    rows = await db.fetch(
        """INSERT INTO webhook_deliveries (endpoint_id, event_id, webhook_id, domain, event_type,
                                           event_at, payload, next_attempt_at, created_at)
           SELECT e, i, w, d, t, a, p, $8, $8
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::timestamp[], $7::bytea[]) AS u(e, i, w, d, t, a, p)
           ON CONFLICT (endpoint_id, event_id) DO NOTHING
           RETURNING id""",
        [d.endpoint_id for d in deliveries],
        [d.event_id for d in deliveries],
        [d.webhook_id for d in deliveries],
        [d.domain for d in deliveries],
        [d.event_type for d in deliveries],
        [to_db_time(d.event_at) for d in deliveries],
        [d.payload for d in deliveries],
        db_now,
    )
    return len(rows)


@dataclass(frozen=True)
class DueDelivery:
    id: int
    endpoint_id: str
    url: str
    secret: str
    webhook_id: str
    event_type: str
    event_at: datetime
    payload: bytes
    attempts: int
    created_at: datetime


async def claim_due(
    db: Database,
    *,
    now: datetime,
    stale_before: datetime,
    limit: int,
    busy_endpoints: Sequence[str],
) -> list[DueDelivery]:
    """Claim up to `limit` due deliveries of enabled endpoints not in `busy_endpoints`, oldest
    due first; a claim older than `stale_before` (its holder died) is taken again."""
    rows = await db.fetch(
        """WITH due AS (
               SELECT d.id FROM webhook_deliveries d
               JOIN webhook_endpoints e ON e.id = d.endpoint_id
               WHERE d.status = 'pending' AND d.next_attempt_at <= $1
                 AND (d.claimed_at IS NULL OR d.claimed_at < $2)
                 AND e.enabled AND NOT (d.endpoint_id = ANY($3::text[]))
               ORDER BY d.next_attempt_at
               LIMIT $4
               FOR UPDATE OF d SKIP LOCKED)
           UPDATE webhook_deliveries d SET claimed_at = $1
           FROM due, webhook_endpoints e
           WHERE d.id = due.id AND e.id = d.endpoint_id
           RETURNING d.id, d.endpoint_id, e.url, e.secret, d.webhook_id, d.event_type,
                     d.event_at, d.payload, d.attempts, d.created_at""",
        to_db_time(now),
        to_db_time(stale_before),
        list(busy_endpoints),
        limit,
    )
    return [
        DueDelivery(
            id=row["id"],
            endpoint_id=row["endpoint_id"],
            url=row["url"],
            secret=row["secret"],
            webhook_id=row["webhook_id"],
            event_type=row["event_type"],
            event_at=from_db_time(row["event_at"]),
            payload=bytes(row["payload"]),
            attempts=row["attempts"],
            created_at=from_db_time(row["created_at"]),
        )
        for row in rows
    ]


async def release_claims(db: Database, ids: Sequence[int]) -> None:
    """Give claimed rows back at once (a stopping process), rather than after the timeout."""
    await db.execute(
        "UPDATE webhook_deliveries SET claimed_at = NULL WHERE id = ANY($1::bigint[])", list(ids)
    )


@dataclass(frozen=True)
class AttemptRecord:
    delivery_id: int
    endpoint_id: str
    attempted_at: datetime
    status_code: int | None
    error: str
    latency_ms: int
    response: str
    status: str
    """The delivery's state after this attempt: pending, delivered or given_up."""
    next_attempt_at: datetime | None
    created_at: datetime
    """The delivery's `created_at` when it was claimed. A replay renews it: an attempt claimed
    before the replay then no longer decides the delivery's state (see :func:`replay`)."""


async def record_attempts(db: Database, records: Sequence[AttemptRecord]) -> None:
    """Store the attempts and move their deliveries on, in one statement (atomic, and one
    round trip for the batch: ADR 0052).

    Every claim is released; a delivery replayed since its claim (`created_at` renewed) keeps
    the state the replay left it in, due now, so it is sent once more after this attempt."""
    if not records:
        return
    await db.execute(
        """WITH u AS (
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamp[], $4::int[],
                                    $5::text[], $6::int[], $7::text[], $8::text[],
                                    $9::timestamp[], $10::timestamp[])
                   AS u(id, endpoint_id, at, status_code, error, latency_ms, response, status,
                        next_at, created)
           ), logged AS (
               INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempted_at, status_code,
                                             error, latency_ms, response)
               SELECT id, endpoint_id, at, status_code, error, latency_ms, response FROM u
           )
           UPDATE webhook_deliveries d SET
               status = CASE WHEN d.created_at = u.created THEN u.status ELSE d.status END,
               attempts = CASE WHEN d.created_at = u.created THEN d.attempts + 1
                               ELSE d.attempts END,
               next_attempt_at = CASE WHEN d.created_at = u.created
                                      THEN COALESCE(u.next_at, d.next_attempt_at)
                                      ELSE d.next_attempt_at END,
               claimed_at = NULL,
               finished_at = CASE WHEN d.created_at <> u.created THEN d.finished_at
                                  WHEN u.status = 'pending' THEN NULL ELSE u.at END
           FROM u
           WHERE d.id = u.id""",
        [r.delivery_id for r in records],
        [r.endpoint_id for r in records],
        [to_db_time(r.attempted_at) for r in records],
        [r.status_code for r in records],
        [r.error[:512] for r in records],
        [r.latency_ms for r in records],
        [r.response[:512] for r in records],
        [r.status for r in records],
        [None if r.next_attempt_at is None else to_db_time(r.next_attempt_at) for r in records],
        [to_db_time(r.created_at) for r in records],
    )


@dataclass(frozen=True)
class AttemptRow:
    webhook_id: str
    event_id: str
    event_type: str
    attempted_at: datetime
    status_code: int | None
    error: str
    latency_ms: int
    response: str
    delivery_status: str


async def list_attempts(
    db: Database, domain: str, endpoint_id: str, *, offset: int, limit: int
) -> tuple[list[AttemptRow], int]:
    """An endpoint's attempts, newest first, with the total."""
    rows = await db.fetch(
        """SELECT d.webhook_id, d.event_id, d.event_type, a.attempted_at, a.status_code, a.error,
                  a.latency_ms, a.response, d.status, count(*) OVER () AS total
           FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
           WHERE a.endpoint_id = $1 AND d.domain = $2
           ORDER BY a.attempted_at DESC, a.id DESC
           OFFSET $3 LIMIT $4""",
        endpoint_id,
        domain,
        offset,
        limit,
    )
    total = rows[0]["total"] if rows else 0
    return [
        AttemptRow(
            webhook_id=row["webhook_id"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            attempted_at=from_db_time(row["attempted_at"]),
            status_code=row["status_code"],
            error=row["error"],
            latency_ms=row["latency_ms"],
            response=row["response"],
            delivery_status=row["status"],
        )
        for row in rows
    ], int(total)


async def replay(
    db: Database,
    domain: str,
    endpoint_id: str,
    *,
    now: datetime,
    stale_before: datetime,
    event_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """Make recorded deliveries due again (a fresh retry window, the same webhook-id): one event
    by event id or webhook-id, or every event of the endpoint in [start, end).

    A claim is left in place: a delivery being POSTed right now is not claimed a second time
    (two POSTs racing), and since its `created_at` is renewed here, that POST's result does not
    overwrite the replay (:func:`record_attempts`): the event goes out once more after it. A
    claim older than `stale_before` (its holder died) is released, so the replay goes out now."""
    db_now = to_db_time(now)
    if event_id is not None:
        result = await db.execute(
            """UPDATE webhook_deliveries SET status = 'pending', attempts = 0,
                   finished_at = NULL, next_attempt_at = $4, created_at = $4,
                   claimed_at = CASE WHEN claimed_at < $5 THEN NULL ELSE claimed_at END
               WHERE domain = $1 AND endpoint_id = $2 AND (event_id = $3 OR webhook_id = $3)""",
            domain,
            endpoint_id,
            event_id,
            db_now,
            to_db_time(stale_before),
        )
    else:
        assert start is not None and end is not None
        result = await db.execute(
            """UPDATE webhook_deliveries SET status = 'pending', attempts = 0,
                   finished_at = NULL, next_attempt_at = $5, created_at = $5,
                   claimed_at = CASE WHEN claimed_at < $6 THEN NULL ELSE claimed_at END
               WHERE domain = $1 AND endpoint_id = $2 AND event_at >= $3 AND event_at < $4""",
            domain,
            endpoint_id,
            to_db_time(start),
            to_db_time(end),
            db_now,
            to_db_time(stale_before),
        )
    return int(result.split()[-1])


async def delete_finished_before(db: Database, before: datetime) -> int:
    """Retention: deliveries (and their attempts) created before `before` and no longer pending."""
    result = await db.execute(
        "DELETE FROM webhook_deliveries WHERE created_at < $1 AND status <> $2",
        to_db_time(before),
        PENDING,
    )
    return int(result.split()[-1])
