"""Fixtures of the fault tests: those of the fleet tests (SMTP sink, dnsmasq, `start_fleet`), and
a PostgreSQL and a nats-server of the test's own, which it may stop and start."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kannon.db.embedded import EmbeddedPostgres, start_postgres
from tests.faults.cluster import NatsCluster
from tests.faults.support import RestartableNats
from tests.fleet.conftest import start_fleet  # noqa: F401  (fixture)


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for this test alone (fast settings), to stop and start."""
    root = Path(tempfile.mkdtemp(prefix="kannon-fault-pg-", dir="/tmp"))
    root.chmod(0o755)  # the server runs as an unprivileged user when the tests run as root
    server = start_postgres(root / "data", fast=True)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def own_nats() -> AsyncIterator[RestartableNats]:
    """A nats-server for this test alone, to stop and start on the same port and store."""
    root = Path(tempfile.mkdtemp(prefix="kannon-fault-nats-", dir="/tmp"))
    server = RestartableNats(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three nats-servers routed into one JetStream cluster, for this test alone."""
    root = Path(tempfile.mkdtemp(prefix="kannon-fault-cluster-", dir="/tmp"))
    cluster = NatsCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
