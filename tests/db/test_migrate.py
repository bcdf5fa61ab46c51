"""Migrations apply to an empty database, are a no-op the second time, and are safe to run
from two processes at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg

from kannon.db.migrate import load_migrations, migrate, status

EXPECTED_TABLES = {
    "domains",
    "api_keys",
    "messages",
    "sending_pool_emails",
    "templates",
    "stats",
    "aggregated_stats",
    "stats_keys",
    "suppressions",
    "suppression_soft_bounces",
    "kannon_migrations",
    "idempotency_keys",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
    # Issue 11 (migration 0005): DKIM keys and their rotation, anonymous engagement event ids.
    "dkim_keys",
    "anonymous_events",
    # Issue 15 (migration 0007): the dashboard's session-signing secret.
    "dashboard_keys",
}


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_applies_every_migration_to_an_empty_database(empty_database_url: str) -> None:
    pending = await status(empty_database_url)
    assert all(s.applied_at is None for s in pending)
    applied = await migrate(empty_database_url)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert await _tables(empty_database_url) == EXPECTED_TABLES
    assert all(s.applied_at is not None for s in await status(empty_database_url))


async def test_second_run_is_a_no_op(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    assert await migrate(empty_database_url) == []


async def test_original_columns_and_additions_exist(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        cols = {
            (r["table_name"], r["column_name"])
            for r in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public'"
            )
        }
    finally:
        await conn.close()
    for needed in [
        ("domains", "dkim_private_key"),
        ("domains", "dkim_public_key"),
        ("domains", "dkim_selector"),
        ("api_keys", "key_hash"),
        ("api_keys", "key_prefix"),
        ("messages", "attachments"),
        ("messages", "headers"),
        ("sending_pool_emails", "original_scheduled_time"),
        ("sending_pool_emails", "send_attempts_cnt"),
        ("sending_pool_emails", "claimed_at"),
        ("sending_pool_emails", "fields"),
        ("templates", "type"),
        ("templates", "title"),
        ("stats", "data"),
        ("aggregated_stats", "count"),
        ("stats_keys", "expiration_time"),
        # The Tracking Policy columns of the original's HEAD (spec §8).
        ("domains", "tracking"),
        ("sending_pool_emails", "tracking"),
        ("messages", "tracking"),
        ("sending_pool_emails", "reject_reason"),
        ("suppressions", "expires_at"),
    ]:
        assert needed in cols, needed


async def test_concurrent_runs_apply_each_migration_once(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(4)))
    applied_versions = sorted(m.version for result in results for m in result)
    assert applied_versions == [m.version for m in load_migrations()]


def test_two_processes_at_once(empty_database_url: str) -> None:
    code = (
        "import asyncio, sys; from kannon.db.migrate import migrate;"
        "print(len(asyncio.run(migrate(sys.argv[1]))))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    counts = sorted(int(out.strip()) for out, _ in outs)
    assert counts == [0, len(load_migrations())]
