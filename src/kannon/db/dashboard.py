"""Read-only queries behind the dashboard's pages, and its session-signing secret.

The overview reads only `aggregated_stats` (hourly counters; its primary key serves a Domain's
range), so it costs the same for a thousand events as for millions. The Bounces and Engagement
pages read `stats` rows of one type of one Domain over the chosen range, through the
(domain, type, timestamp) index of migration 0007, and every list is bounded.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time

# Longest list any page shows: pages are for looking, GetStats is for exporting.
MAX_ROWS = 200


@dataclass(frozen=True)
class Counted:
    label: str
    count: int


@dataclass(frozen=True)
class BounceRow:
    timestamp: datetime
    email: str
    message_id: str
    code: int
    status: str
    reason: str
    hard: bool
    diagnostic: str


@dataclass(frozen=True)
class PoolStatus:
    status: str
    count: int
    oldest: datetime | None  # created_at of its oldest row, aware UTC


async def session_secret(db: Database) -> bytes:
    """The secret signing session cookies: created by the first caller, shared by every replica."""
    await db.execute(
        "INSERT INTO dashboard_keys (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        secrets.token_bytes(32),
    )
    secret = await db.fetchval("SELECT secret FROM dashboard_keys WHERE id = 1")
    return bytes(secret)


async def domain_names(db: Database) -> list[str]:
    rows = await db.fetch("SELECT domain FROM domains ORDER BY domain")
    return [row["domain"] for row in rows]


async def totals(db: Database, domain: str, start: datetime, end: datetime) -> dict[str, int]:
    """Events per type of `domain` in the hours overlapping [start, end), from the aggregates."""
    rows = await db.fetch(
        """SELECT type, sum(count)::bigint AS total FROM aggregated_stats
           WHERE domain = $1 AND timestamp >= date_trunc('hour', $2::timestamp)
                 AND timestamp < $3
           GROUP BY type""",
        domain,
        to_db_time(start),
        to_db_time(end),
    )
    return {row["type"]: int(row["total"]) for row in rows}


async def _counted(
    db: Database,
    label: str,
    event_type: str,
    *,
    domain: str,
    start: datetime,
    end: datetime,
    limit: int = MAX_ROWS,
) -> list[Counted]:
    """`stats` rows of one type of `domain` in [start, end) counted by `label` (an SQL
    expression over the row, one of this module's), most first, `MAX_ROWS` at most."""
    rows = await db.fetch(
        f"""SELECT {label} AS label, count(*) AS n
           FROM stats WHERE domain = $1 AND type = $2
                AND timestamp >= $3 AND timestamp < $4
           GROUP BY 1 ORDER BY n DESC, label LIMIT $5""",
        domain,
        event_type,
        to_db_time(start),
        to_db_time(end),
        min(limit, MAX_ROWS),
    )
    return [Counted(label=row["label"] or "", count=int(row["n"])) for row in rows]


async def bounce_reasons(
    db: Database, domain: str, start: datetime, end: datetime
) -> list[Counted]:
    """Bounces by reason: the classified category, else the enhanced status, else the code."""
    return await _counted(
        db,
        """COALESCE(NULLIF(data->'bounced'->>'reason', ''),
                    NULLIF(data->'bounced'->>'status', ''),
                    data->'bounced'->>'code', 'unknown')""",
        "bounced",
        domain=domain,
        start=start,
        end=end,
    )


async def bounce_domains(
    db: Database, domain: str, start: datetime, end: datetime
) -> list[Counted]:
    """Bounces by the Recipient's domain."""
    return await _counted(
        db, "lower(split_part(email, '@', 2))", "bounced", domain=domain, start=start, end=end
    )


async def latest_bounces(
    db: Database, domain: str, start: datetime, end: datetime, limit: int = 50
) -> list[BounceRow]:
    rows = await db.fetch(
        """SELECT timestamp, email, message_id, data->'bounced' AS b FROM stats
           WHERE domain = $1 AND type = 'bounced' AND timestamp >= $2 AND timestamp < $3
           ORDER BY timestamp DESC, id DESC LIMIT $4""",
        domain,
        to_db_time(start),
        to_db_time(end),
        min(limit, MAX_ROWS),
    )
    found: list[BounceRow] = []
    for row in rows:
        bounced = row["b"] if isinstance(row["b"], dict) else {}
        found.append(
            BounceRow(
                timestamp=from_db_time(row["timestamp"]),
                email=row["email"],
                message_id=row["message_id"],
                code=int(bounced.get("code", 0)),
                status=str(bounced.get("status", "")),
                reason=str(bounced.get("reason", "")),
                hard=bool(bounced.get("hardBounce", False)),
                diagnostic=str(bounced.get("msg", "")),
            )
        )
    return found


async def top_links(
    db: Database, domain: str, start: datetime, end: datetime, limit: int = 50
) -> list[Counted]:
    """Most-clicked links (clicks recorded with a row: anonymous clicks are only counted)."""
    return await _counted(
        db, "data->'clicked'->>'url'", "clicked", domain=domain, start=start, end=end, limit=limit
    )


async def pool_statuses(db: Database, domain: str | None) -> list[PoolStatus]:
    """Deliveries in the Pool by status with the creation time of the oldest; all Domains'
    when `domain` is None."""
    rows = await db.fetch(
        """SELECT status, count(*) AS n, min(created_at) AS oldest FROM sending_pool_emails
           WHERE $1::varchar IS NULL OR domain = $1
           GROUP BY status ORDER BY status""",
        domain,
    )
    return [
        PoolStatus(
            status=row["status"],
            count=int(row["n"]),
            oldest=None if row["oldest"] is None else from_db_time(row["oldest"]),
        )
        for row in rows
    ]


async def recent_rates(db: Database, domain: str | None, since: datetime) -> dict[str, int]:
    """Events per type since `since` (the last minute), from the `stats` rows' time index."""
    rows = await db.fetch(
        """SELECT type, count(*) AS n FROM stats
           WHERE timestamp >= $1 AND ($2::varchar IS NULL OR domain = $2)
           GROUP BY type""",
        to_db_time(since),
        domain,
    )
    return {row["type"]: int(row["n"]) for row in rows}
