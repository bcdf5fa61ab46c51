"""Storage of the suppression list (`suppressions`) and of the soft bounces counted towards the
operator's limit (`suppression_soft_bounces`).

One row per (Domain, address), matched on `lower(address)` (`kannon.model.suppression`). An
expired row (`expires_at` passed) suppresses nothing: every read ignores it, and a new
suppression of the same address replaces it. Which row wins when the address is already on the
list:

* an event (hard bounce, complaint, ...) or an import keeps an existing permanent row (the first
  cause is the one on record, and a redelivered event changes nothing) and replaces a temporary
  one (an event is permanent evidence);
* a manual Add of an address already on the list is a Conflict.

Every write to a Domain that does not exist is refused (NotFound) or, for events, reported, so a
Domain's list never holds rows nobody can see.

`kannon_suppressions_added_total{reason}` counts every address added, here where every addition
is written (the Stats Component's feed, the API and the CLI).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from prometheus_client import Counter

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time
from kannon.model.errors import Conflict, NotFound
from kannon.model.suppression import Suppression

_COLUMNS = (
    "domain",
    "address",
    "reason",
    "event_type",
    "event_at",
    "status",
    "reply_code",
    "diagnostic",
    "message_id",
    "event_id",
    "created_at",
    "expires_at",
)
_SELECT = ", ".join(_COLUMNS)

ADDED = Counter(
    "kannon_suppressions_added_total",
    "Addresses added to a suppression list, by reason (events, API, CLI and imports)",
    ["reason"],
)
_ACTIVE = "(expires_at IS NULL OR expires_at > {now})"
# The arrays of `_unnest`, one per column, in `_COLUMNS` order.
_TYPES = (
    "varchar[]",
    "varchar[]",
    "varchar[]",
    "varchar[]",
    "timestamp[]",
    "varchar[]",
    "int[]",
    "varchar[]",
    "varchar[]",
    "varchar[]",
    "timestamp[]",
    "timestamp[]",
)


class Added(enum.Enum):
    ADDED = "added"
    PRESENT = "present"
    """The address was already suppressed (nothing changed)."""
    UNKNOWN_DOMAIN = "unknown_domain"


@dataclass(frozen=True)
class ImportCounts:
    added: int
    present: int


def _optional_time(value: datetime | None) -> datetime | None:
    return None if value is None else to_db_time(value)


def _suppression(row: Any) -> Suppression:
    return Suppression(
        domain=row["domain"],
        address=row["address"],
        reason=row["reason"],
        created_at=from_db_time(row["created_at"]),
        expires_at=None if row["expires_at"] is None else from_db_time(row["expires_at"]),
        event_type=row["event_type"],
        event_at=None if row["event_at"] is None else from_db_time(row["event_at"]),
        status=row["status"],
        reply_code=row["reply_code"],
        diagnostic=row["diagnostic"],
        message_id=row["message_id"],
        event_id=row["event_id"] or "",
    )


def _arrays(items: Sequence[Suppression]) -> list[list[Any]]:
    return [
        [s.domain for s in items],
        [s.address for s in items],
        [s.reason for s in items],
        [s.event_type for s in items],
        [_optional_time(s.event_at) for s in items],
        [s.status for s in items],
        [s.reply_code for s in items],
        [s.diagnostic for s in items],
        [s.message_id for s in items],
        [s.event_id or None for s in items],
        [to_db_time(s.created_at) for s in items],
        [_optional_time(s.expires_at) for s in items],
    ]


# Insert rows whose Domain exists; an address already listed is kept unless its row expires
# (then the new one replaces it). Rows are inserted in a fixed order (Domain, address) so that
# concurrent writers take their locks in the same order. Returns the rows written.
_UPSERT = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"${i + 1}::{t}" for i, t in enumerate(_TYPES))})
        AS t({_SELECT})
), deduplicated AS (
    SELECT DISTINCT ON (domain, lower(address)) * FROM input
    ORDER BY domain, lower(address)
)
INSERT INTO suppressions ({_SELECT})
SELECT {_SELECT} FROM deduplicated
WHERE EXISTS (SELECT 1 FROM domains d WHERE d.domain = deduplicated.domain)
ORDER BY domain, lower(address)
ON CONFLICT (domain, lower(address)) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[2:])}
WHERE suppressions.expires_at IS NOT NULL
RETURNING domain, lower(address) AS key
"""


async def _upsert(conn: Database | asyncpg.Connection, items: Sequence[Suppression]) -> int:
    if not items:
        return 0
    return len(await conn.fetch(_UPSERT, *_arrays(items)))


async def domain_exists(conn: Database | asyncpg.Connection, domain: str) -> bool:
    found = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM domains WHERE domain = $1)", domain)
    return bool(found)


async def add_from_event(db: Database, suppression: Suppression) -> Added:
    """Suppress an address because of an event (idempotent: a second copy changes nothing)."""
    if await _upsert(db, [suppression]):
        ADDED.labels(suppression.reason).inc()
        return Added.ADDED
    if not await domain_exists(db, suppression.domain):
        return Added.UNKNOWN_DOMAIN
    return Added.PRESENT


async def add(db: Database, suppression: Suppression, now: datetime) -> Suppression:
    """Add a manual Suppression; NotFound for an unknown Domain, Conflict when the address is
    already suppressed (an expired row is replaced)."""
    async with db.acquire() as conn, conn.transaction():
        if not await domain_exists(conn, suppression.domain):
            raise NotFound(f"domain: {suppression.domain!r} not found")
        await conn.execute(
            """DELETE FROM suppressions WHERE domain = $1 AND lower(address) = lower($2)
               AND expires_at IS NOT NULL AND expires_at <= $3""",
            suppression.domain,
            suppression.address,
            to_db_time(now),
        )
        row = await conn.fetchrow(
            f"""INSERT INTO suppressions ({_SELECT})
                SELECT * FROM unnest({", ".join(f"${i + 1}::{t}" for i, t in enumerate(_TYPES))})
                ON CONFLICT (domain, lower(address)) DO NOTHING
                RETURNING {_SELECT}""",
            *_arrays([suppression]),
        )
    if row is None:
        raise Conflict(
            f"address: {suppression.address!r} is already suppressed for {suppression.domain!r}"
        )
    ADDED.labels(suppression.reason).inc()
    return _suppression(row)


async def import_suppressions(
    db: Database, domain: str, items: Sequence[Suppression]
) -> ImportCounts:
    """Add many Suppressions of one Domain and one reason in one transaction; addresses
    already suppressed for good are kept as they are and counted as `present` (as are repeats
    within `items`), temporary ones are replaced."""
    if any(item.domain != domain or item.reason != items[0].reason for item in items):
        raise ValueError("an import holds Suppressions of one Domain and one reason")
    async with db.acquire() as conn, conn.transaction():
        if not await domain_exists(conn, domain):
            raise NotFound(f"domain: {domain!r} not found")
        added = await _upsert(conn, items)
    if items:
        ADDED.labels(items[0].reason).inc(added)
    return ImportCounts(added=added, present=len(items) - added)


async def get(db: Database, domain: str, address: str, now: datetime) -> Suppression | None:
    row = await db.fetchrow(
        f"""SELECT {_SELECT} FROM suppressions
            WHERE domain = $1 AND lower(address) = lower($2) AND {_ACTIVE.format(now="$3")}""",
        domain,
        address,
        to_db_time(now),
    )
    return None if row is None else _suppression(row)


async def remove(db: Database, domain: str, address: str) -> Suppression | None:
    """Delete the Suppression of `address` (expired or not); None when there was none."""
    row = await db.fetchrow(
        f"""DELETE FROM suppressions WHERE domain = $1 AND lower(address) = lower($2)
            RETURNING {_SELECT}""",
        domain,
        address,
    )
    return None if row is None else _suppression(row)


def _like_prefix(prefix: str) -> str:
    escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


async def list_suppressions(
    db: Database,
    domain: str,
    now: datetime,
    *,
    reason: str = "",
    prefix: str = "",
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Suppression], int]:
    """One page of a Domain's active Suppressions in address order, and how many match."""
    where = [f"domain = $1 AND {_ACTIVE.format(now='$2')}"]
    args: list[Any] = [domain, to_db_time(now)]
    if reason:
        args.append(reason)
        where.append(f"reason = ${len(args)}")
    if prefix:
        args.append(_like_prefix(prefix))
        where.append(f"lower(address) LIKE ${len(args)}")
    condition = " AND ".join(where)
    total = await db.fetchval(f"SELECT count(*) FROM suppressions WHERE {condition}", *args)
    rows = await db.fetch(
        f"""SELECT {_SELECT} FROM suppressions WHERE {condition}
            ORDER BY lower(address) LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
        *args,
        limit,
        offset,
    )
    return [_suppression(row) for row in rows], int(total)


async def suppressed_keys(
    db: Database | asyncpg.Connection, domain: str, keys: Sequence[str], now: datetime
) -> set[str]:
    """Which of `keys` (`suppression_key`s: canonical, lower-cased) the Domain suppresses now."""
    if not keys:
        return set()
    rows = await db.fetch(
        f"""SELECT lower(address) AS key FROM suppressions
            WHERE domain = $1 AND lower(address) = ANY($2::text[])
              AND {_ACTIVE.format(now="$3")}""",
        domain,
        keys,
        to_db_time(now),
    )
    return {row["key"] for row in rows}


async def record_soft_bounce(
    db: Database,
    *,
    domain: str,
    key: str,
    event_id: str,
    bounced_at: datetime,
    since: datetime,
) -> int:
    """Remember one soft bounce of `key` (once per event id) and return how many of its soft
    bounces happened at or after `since`. Older ones of the same address are dropped.

    Concurrent calls for one address are serialised (a transaction-scoped advisory lock on the
    address): otherwise two bounces handled at once would each count only itself, and the
    limit would be missed.
    """
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || ' ' || $2, 0))", domain, key
        )
        await conn.execute(
            """INSERT INTO suppression_soft_bounces (event_id, domain, address, bounced_at)
               VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING""",
            event_id,
            domain,
            key,
            to_db_time(bounced_at),
        )
        await conn.execute(
            """DELETE FROM suppression_soft_bounces
               WHERE domain = $1 AND address = $2 AND bounced_at < $3""",
            domain,
            key,
            to_db_time(since),
        )
        count = await conn.fetchval(
            "SELECT count(*) FROM suppression_soft_bounces WHERE domain = $1 AND address = $2",
            domain,
            key,
        )
    return int(count)


async def delete_expired(db: Database, now: datetime) -> int:
    """Delete Suppressions whose `expires_at` has passed."""
    status = await db.execute(
        "DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= $1",
        to_db_time(now),
    )
    return int(status.rsplit(" ", 1)[-1])


async def delete_soft_bounces_before(db: Database, cutoff: datetime) -> int:
    """Forget soft bounces older than the window (they can no longer count)."""
    status = await db.execute(
        "DELETE FROM suppression_soft_bounces WHERE bounced_at < $1", to_db_time(cutoff)
    )
    return int(status.rsplit(" ", 1)[-1])
