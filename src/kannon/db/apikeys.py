"""Storage of API keys (the `api_keys` table): only the SHA-256 of a key and its prefix are kept."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time
from kannon.model.apikey import ApiKey
from kannon.model.errors import NotFound

_COLUMNS = "id, domain, name, key_prefix, created_at, expires_at, is_active, deactivated_at"


def _key(row: Any) -> ApiKey:
    expires = row["expires_at"]
    deactivated = row["deactivated_at"]
    return ApiKey(
        id=row["id"],
        domain=row["domain"],
        name=row["name"],
        key_prefix=row["key_prefix"],
        created_at=from_db_time(row["created_at"]),
        expires_at=None if expires is None else from_db_time(expires),
        is_active=row["is_active"],
        deactivated_at=None if deactivated is None else from_db_time(deactivated),
    )


async def insert_api_key(db: Database, key: ApiKey, key_hash: str) -> None:
    """Store a new key; NotFound when its Domain does not exist."""
    try:
        await db.execute(
            """INSERT INTO api_keys (id, domain, name, key_prefix, key_hash, created_at,
                                     expires_at, is_active)
               VALUES ($1, $2, $3, $4, $5, $6, $7, true)""",
            key.id,
            key.domain,
            key.name,
            key.key_prefix,
            key_hash,
            to_db_time(key.created_at),
            None if key.expires_at is None else to_db_time(key.expires_at),
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(f"domain: {key.domain!r} not found") from None


async def list_api_keys(
    db: Database, domain: str, *, only_active: bool, now: datetime, offset: int, limit: int
) -> tuple[list[ApiKey], int]:
    """One page of a Domain's keys, newest first, and how many match the same filter.

    `only_active` means usable now: an expired key is left out even if never deactivated.
    """
    args: list[Any] = [domain]
    where = "domain = $1"
    if only_active:
        args.append(to_db_time(now))
        where += " AND is_active AND (expires_at IS NULL OR expires_at > $2)"
    n = len(args)
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM api_keys WHERE {where}
            ORDER BY created_at DESC, id LIMIT ${n + 1} OFFSET ${n + 2}""",
        *args,
        limit,
        offset,
    )
    total = await db.fetchval(f"SELECT count(*) FROM api_keys WHERE {where}", *args)
    return [_key(row) for row in rows], int(total)


async def get_api_key(db: Database, domain: str, key_id: str) -> ApiKey | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM api_keys WHERE domain = $1 AND id = $2", domain, key_id
    )
    return None if row is None else _key(row)


async def deactivate_api_key(
    db: Database, domain: str, key_id: str, now: datetime
) -> ApiKey | None:
    """Deactivate (permanently); a key already inactive keeps its original deactivated_at."""
    row = await db.fetchrow(
        f"""UPDATE api_keys
            SET is_active = false, deactivated_at = COALESCE(deactivated_at, $3)
            WHERE domain = $1 AND id = $2 RETURNING {_COLUMNS}""",
        domain,
        key_id,
        to_db_time(now),
    )
    return None if row is None else _key(row)


async def find_key_by_hash(db: Database, domain: str, key_hash: str) -> ApiKey | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = $1 AND domain = $2", key_hash, domain
    )
    return None if row is None else _key(row)
