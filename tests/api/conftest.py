"""Fixtures of the API tests: a migrated database, a pool on it, and a real gRPC API server on
a free loopback port (api.port = 0), with an admin token unless a test asks otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.api.api_test_support import RunningApi, make_settings, running_api


@pytest.fixture
async def api(pool: asyncpg.Pool) -> AsyncIterator[RunningApi]:
    async with running_api(make_settings(), pool) as running:
        yield running
