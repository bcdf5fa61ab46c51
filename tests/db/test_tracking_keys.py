"""Tracking keys: reused while they outlive new tokens, rotated before expiry, old ones verify."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from kannon.db.database import open_database
from kannon.db.tracking_keys import signing_key, verification_keys

TTL = timedelta(days=90)


async def test_rotation_and_verification(database_url: str) -> None:
    pool = await open_database(database_url)
    try:
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        first = await signing_key(pool, t0, TTL)
        assert (await signing_key(pool, t0 + timedelta(days=30), TTL)) == first
        # 91 days later the first key would expire before a new token does: rotate.
        later = t0 + timedelta(days=91)
        second = await signing_key(pool, later, TTL)
        assert second.kid != first.kid
        keys = await verification_keys(pool, later)
        assert keys[first.kid] == first.secret and keys[second.kid] == second.secret
        # Once expired, the first key no longer verifies.
        assert first.kid not in await verification_keys(pool, t0 + timedelta(days=181))
    finally:
        await pool.close()


async def test_concurrent_signers_share_one_key(database_url: str) -> None:
    pool = await open_database(database_url, max_size=5)
    try:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        keys = await asyncio.gather(*(signing_key(pool, now, TTL) for _ in range(5)))
        assert len({k.kid for k in keys}) == 1
    finally:
        await pool.close()
