"""Real servers for the test session: PostgreSQL and nats-server on free loopback ports.

`KANNON_TEST_DATABASE_URL` / `KANNON_TEST_NATS_URL` point the suite at existing servers instead.
Each test that asks for `database_url` gets a fresh database cloned from a migrated template
(`pool`: a connection pool to it); each test that asks for `bus` gets freshly created streams.
The real-server peers (SMTP sink, dnsmasq, TLS identities) come from `tests.peers.fixtures`.
Helpers shared by the folders are in `tests.support`.
`KANNON_TEST_EVENT_LOOP=uvloop` runs the tests on uvloop, the loop `kannon` chooses when
installed (ADR 0054); asyncio's loop otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats.js.errors
import pytest

from kannon.bus.client import Bus
from kannon.bus.embedded import start_nats
from kannon.bus.subjects import SENT_GUARD_BUCKET, SHAPING_BUCKET, STREAMS
from kannon.db.database import Database, open_database
from kannon.db.embedded import EmbeddedPostgres, start_postgres
from kannon.db.migrate import migrate
from kannon.envelope.dkim import generate_dkim_keypair
from tests.support import scratch_dir

pytest_plugins = ["tests.peers.fixtures"]

TEMPLATE_DB = "kannon_test_template"


if os.environ.get("KANNON_TEST_EVENT_LOOP") == "uvloop":
    # Defined only when asked for: with the hook defined, pytest-asyncio names each test's loop.

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a database on a server where the suite may create databases."""
    existing = os.environ.get("KANNON_TEST_DATABASE_URL")
    if existing:
        yield existing
        return
    with scratch_dir("kannon-test-pg-", shared=True) as root:
        server = start_postgres(root / "data", fast=True)
        try:
            yield server.url()
        finally:
            server.stop()


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for this test alone (fast settings), which it may stop and start."""
    with scratch_dir("kannon-test-own-pg-", shared=True) as root:
        server = start_postgres(root / "data", fast=True)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
async def migrated_template(pg_admin_url: str) -> str:
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    await migrate(_with_database(pg_admin_url, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture
async def empty_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database (no migrations applied)."""
    name = await _create(pg_admin_url)
    yield _with_database(pg_admin_url, name)
    await _drop(pg_admin_url, name)


@pytest.fixture
async def database_url(pg_admin_url: str, migrated_template: str) -> AsyncIterator[str]:
    """A fresh database with every migration applied."""
    name = await _create(pg_admin_url, template=migrated_template)
    yield _with_database(pg_admin_url, name)
    await _drop(pg_admin_url, name)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Database]:
    """A connection pool to the test's fresh database (a folder seeds it by overriding `pool`)."""
    created = await open_database(database_url, max_size=10)
    yield created
    await created.close()


async def _create(admin_url: str, *, template: str | None = None) -> str:
    name = "t_" + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(admin_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()
    return name


async def _drop(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def dkim_keypair() -> tuple[str, str]:
    """An RSA DKIM key pair (private PEM, public base64), made once: generating one takes time."""
    return generate_dkim_keypair()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    existing = os.environ.get("KANNON_TEST_NATS_URL")
    if existing:
        yield existing
        return
    with scratch_dir("kannon-test-nats-") as root:
        server = start_nats(root / "store")
        try:
            yield server.url
        finally:
            server.stop()


async def reset_streams(bus: Bus) -> None:
    """Delete Kannon's streams and KV buckets so a test starts from nothing."""
    for spec in STREAMS:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus.js.delete_stream(spec.name)
    with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
        await bus.js.delete_key_value(SENT_GUARD_BUCKET)
    with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
        await bus.js.delete_key_value(SHAPING_BUCKET)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """A connected Bus with freshly created, empty streams."""
    connected = await Bus.connect(nats_url, name="kannon-test")
    await reset_streams(connected)
    await connected.ensure_streams()
    yield connected
    await connected.close()
