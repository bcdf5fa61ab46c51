"""gRPC health follows the database: an API that cannot reach PostgreSQL reports NOT_SERVING, so a
Kubernetes gRPC probe takes it out of rotation, and SERVING again once it can. The outage is real:
the database stops accepting connections and the API's sessions are terminated."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import asyncpg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kannon.api import component
from kannon.db.database import open_database
from tests.api.api_test_support import make_settings, running_api

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_grpc_health_follows_the_database(
    database_url: str, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(component, "HEALTH_INTERVAL", 0.05)
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_admin_url)
    pool = await open_database(database_url, min_size=1, max_size=2)
    try:
        async with running_api(make_settings(), pool) as api:
            stub = health_pb2_grpc.HealthStub(api.channel)

            async def status_becomes(expected: int) -> None:
                for _ in range(300):
                    response = await stub.Check(health_pb2.HealthCheckRequest())
                    if response.status == expected:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"health never became {expected}")

            await status_becomes(SERVING)
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await status_becomes(NOT_SERVING)
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await status_becomes(SERVING)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await pool.close()
