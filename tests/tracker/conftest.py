"""Fixtures for the Tracker tests: a running Tracker on a loopback port over the real database and
bus, a DKIM signer for building realistic messages, and readers of the events it publishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kannon.bus.client import Bus
from kannon.config import Settings, TrackerSettings
from kannon.db.database import Database
from kannon.envelope import DkimSigner
from kannon.tracker.component import Tracker
from tests.support import Running, start_component
from tests.tracker.tracker_support import DOMAIN, PROXY_ADDRESS, StartTracker


@pytest.fixture(scope="session")
def signer(dkim_keypair: tuple[str, str]) -> DkimSigner:
    return DkimSigner(DOMAIN, "smtp", dkim_keypair[0])


@pytest.fixture
async def start_tracker(pool: Database, bus: Bus) -> AsyncIterator[StartTracker]:
    """Start Trackers (stopped gracefully at teardown, which must succeed)."""
    started: list[Running] = []

    async def start(*, pool: Database = pool, **kwargs: Any) -> Tracker:
        settings = Settings(
            tracker=TrackerSettings(host="127.0.0.1", port=0, trusted_proxies=(PROXY_ADDRESS,))
        )
        tracker = Tracker(settings, pool, bus, **kwargs)
        started.append(await start_component(tracker))
        return tracker

    yield start
    for running in started:
        await running.stop()
