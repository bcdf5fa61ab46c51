"""The shared asyncpg pool against a real PostgreSQL: a release costs no reset round trip (so
session state would survive it, which is why no code may keep any), yet a transaction left open
is still rolled back before the connection is handed out again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from kannon.db.database import open_database


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # One connection: the second acquire is guaranteed to get the first one back.
    pool = await open_database(database_url, min_size=1, max_size=1)
    yield pool
    await pool.close()


async def test_release_runs_no_reset_query(one_connection: asyncpg.Pool) -> None:
    async with one_connection.acquire() as conn:
        await conn.execute("SET application_name = 'kannon-pool-test'")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
    async with one_connection.acquire() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == backend
        # asyncpg's default reset would have run RESET ALL here.
        assert await conn.fetchval("SHOW application_name") == "kannon-pool-test"


async def test_an_open_transaction_is_rolled_back_on_release(
    one_connection: asyncpg.Pool,
) -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with one_connection.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int) ON COMMIT DROP")
    finally:
        loop.set_exception_handler(previous)
    assert any("active transaction" in str(c.get("message")) for c in reported)
    async with one_connection.acquire() as conn:
        assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
        assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
