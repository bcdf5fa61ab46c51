"""Fixtures of the fault tests: those of the fleet tests (SMTP sink, dnsmasq, `start_fleet`), and
a nats-server or a NATS cluster of the test's own, which it may stop and start (its own PostgreSQL
is the root conftest's `own_postgres`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.faults.cluster import NatsCluster
from tests.faults.support import RestartableNats
from tests.fleet.conftest import start_fleet  # noqa: F401  (fixture)
from tests.support import scratch_dir


@pytest.fixture
async def own_nats() -> AsyncIterator[RestartableNats]:
    """A nats-server for this test alone, to stop and start on the same port and store."""
    with scratch_dir("kannon-fault-nats-") as root:
        server = RestartableNats(root)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three nats-servers routed into one JetStream cluster, for this test alone."""
    with scratch_dir("kannon-fault-cluster-") as root:
        cluster = NatsCluster(root)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
