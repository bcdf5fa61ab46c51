"""Fixtures for the Tracker tests: a running Tracker on a loopback port over the real database and
bus, a DKIM signer for building realistic messages, and readers of the events it publishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kannon.bus.client import Bus
from kannon.config import Settings, TrackerSettings
from kannon.envelope import DkimSigner, generate_dkim_keypair
from kannon.runtime.component import Life
from kannon.tracker.component import Tracker
from tests.tracker.tracker_support import DOMAIN, PROXY_ADDRESS, StartTracker


@pytest.fixture(scope="session")
def signer() -> DkimSigner:
    private_pem, _ = generate_dkim_keypair()
    return DkimSigner(DOMAIN, "smtp", private_pem)


@pytest.fixture
async def start_tracker(pool: Any, bus: Bus) -> AsyncIterator[StartTracker]:
    """Start Trackers (stopped gracefully at teardown, which must succeed)."""
    running: list[tuple[Life, asyncio.Task[None]]] = []

    async def start(**kwargs: object) -> Tracker:
        settings = Settings(
            tracker=TrackerSettings(host="127.0.0.1", port=0, trusted_proxies=(PROXY_ADDRESS,))
        )
        tracker = Tracker(settings, kwargs.pop("pool", pool), bus, **kwargs)  # type: ignore[arg-type]
        life = Life("tracker")
        task = asyncio.create_task(tracker.run(life))
        ready = asyncio.create_task(life.wait_ready())
        await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert life.is_ready, "tracker did not become ready"
        running.append((life, task))
        return tracker

    yield start
    for life, task in running:
        life.stopping.set()
        await asyncio.wait_for(task, 30)
