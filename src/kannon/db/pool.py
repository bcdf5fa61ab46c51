"""Creation of the process-wide asyncpg pool, with JSON codecs and a health check.

Connections carry no session state from one acquisition to the next: every transaction is a
managed `conn.transaction()` block, advisory locks are transaction-level
(`pg_advisory_xact_lock`, released at commit) or live on a dedicated connection (the migrations
runner's session lock), and nothing LISTENs, SETs session variables or keeps cursors open.
So a released connection does not need asyncpg's default reset query (advisory unlock all,
CLOSE ALL, UNLISTEN *, RESET ALL): that was one extra round trip per release, about 6 % of the
standalone process's CPU in the pipeline benchmark. asyncpg still rolls back a transaction left
open on release (it does that before calling our reset), so an aborted handler cannot leak one.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns (fields, headers, attachments, stats data) are exchanged as Python objects.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release hook: nothing to undo (see the module docstring), so no round trip."""


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool; raises the driver's error when the server cannot be reached."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
    )
    return pool


async def check_pool(pool: asyncpg.Pool) -> None:
    """Health check: one round trip; raises when the database does not answer."""
    async with pool.acquire(timeout=5) as conn:
        value: Any = await conn.fetchval("SELECT 1", timeout=5)
    if value != 1:
        raise RuntimeError(f"database answered SELECT 1 with {value!r}")
