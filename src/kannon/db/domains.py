"""Storage of Domains (the `domains` table), and the timestamp convention of the API's tables.

Timestamps are stored as UTC wall-clock in `timestamp without time zone` columns (spec §2.4).
Values are always written explicitly from Python rather than by column defaults, because the
database's `now()` follows the server's TimeZone setting, which is not ours to assume.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from kannon.db.times import from_db_time, to_db_time
from kannon.model.domain import Domain
from kannon.model.errors import Conflict


def _domain(row: Any) -> Domain:
    return Domain(
        name=row["domain"],
        dkim_public_key=row["dkim_public_key"],
        dkim_selector=row["dkim_selector"],
        created_at=from_db_time(row["created_at"]),
    )


_COLUMNS = "domain, dkim_public_key, dkim_selector, created_at"


async def insert_domain(
    pool: asyncpg.Pool,
    *,
    name: str,
    dkim_private_key: str,
    dkim_public_key: str,
    dkim_selector: str,
    now: datetime,
) -> Domain:
    """Create a Domain; Conflict when the name is taken."""
    try:
        row = await pool.fetchrow(
            f"""INSERT INTO domains (domain, dkim_private_key, dkim_public_key, dkim_selector,
                                     created_at)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
            name,
            dkim_private_key,
            dkim_public_key,
            dkim_selector,
            to_db_time(now),
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"domain: {name!r} already exists") from None
    return _domain(row)


async def get_domain(pool: asyncpg.Pool | asyncpg.Connection, name: str) -> Domain | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM domains WHERE domain = $1", name)
    return None if row is None else _domain(row)


async def list_domains(pool: asyncpg.Pool) -> list[Domain]:
    rows = await pool.fetch(f"SELECT {_COLUMNS} FROM domains ORDER BY id")
    return [_domain(row) for row in rows]
