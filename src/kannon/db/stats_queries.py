"""Read-only queries behind the Stats API: raw outcome events and hourly aggregates.

The Stats worker writes both tables (`stats` rows with the protojson of StatsData in `data`,
`aggregated_stats` counters per Domain, hour bucket and type); this module only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time


@dataclass(frozen=True)
class StatRow:
    type: str
    email: str
    message_id: str
    domain: str
    timestamp: datetime  # aware, UTC
    data: dict[str, Any]  # protojson of StatsData
    tracking_mode: int = 0  # the wire's TrackingMode number (engagement events)


@dataclass(frozen=True)
class Bucket:
    type: str
    timestamp: datetime  # bucket start, aware UTC
    count: int


async def list_stats(
    db: Database, domain: str, start: datetime, end: datetime, *, offset: int, limit: int
) -> tuple[list[StatRow], int]:
    """Events of `domain` with start <= timestamp < end, newest first, and their number."""
    rows = await db.fetch(
        """SELECT type, email, message_id, domain, timestamp, data, tracking_mode FROM stats
           WHERE domain = $1 AND timestamp >= $2 AND timestamp < $3
           ORDER BY timestamp DESC, id DESC LIMIT $4 OFFSET $5""",
        domain,
        to_db_time(start),
        to_db_time(end),
        limit,
        offset,
    )
    total = await db.fetchval(
        """SELECT count(*) FROM stats
           WHERE domain = $1 AND timestamp >= $2 AND timestamp < $3""",
        domain,
        to_db_time(start),
        to_db_time(end),
    )
    return [
        StatRow(
            type=row["type"],
            email=row["email"],
            message_id=row["message_id"],
            domain=row["domain"],
            timestamp=from_db_time(row["timestamp"]),
            data=row["data"] if isinstance(row["data"], dict) else {},
            tracking_mode=row["tracking_mode"],
        )
        for row in rows
    ], int(total)


async def aggregated_stats(
    db: Database, domain: str, start: datetime, end: datetime
) -> list[Bucket]:
    """Hourly buckets of `domain` overlapping [start, end), oldest first, then by type.

    The bucket holding `start` is included: asking from 10:30 still shows the 10:00 hour rather
    than silently dropping the events of 10:30-10:59.
    """
    rows = await db.fetch(
        """SELECT type, timestamp, count FROM aggregated_stats
           WHERE domain = $1 AND timestamp >= date_trunc('hour', $2::timestamp)
                 AND timestamp < $3
           ORDER BY timestamp, type""",
        domain,
        to_db_time(start),
        to_db_time(end),
    )
    return [
        Bucket(type=row["type"], timestamp=from_db_time(row["timestamp"]), count=row["count"])
        for row in rows
    ]
