"""Fixtures of the end-to-end tests: the test peers (SMTP sink, dnsmasq) and `launch`, which
starts the whole pipeline in this process and stops it gracefully at the end of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kannon.bus.client import Bus
from tests.e2e.pipeline import Pipeline
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink

Launch = Callable[..., Awaitable[Pipeline]]


@pytest.fixture
async def launch(
    database_url: str,
    nats_url: str,
    bus: Bus,
    # The peers' fixtures, imported above so that pytest registers them here.
    dns_server: DnsServer,
    smtp_sink: SmtpSink,
) -> AsyncIterator[Launch]:
    """Start the pipeline (settings overrides as CLI dests, e.g. sender_relay_host="...")."""
    started: list[Pipeline] = []

    async def start(sink: SmtpSink | None = None, **options: Any) -> Pipeline:
        pipeline = await Pipeline.start(
            database_url=database_url,
            nats_url=nats_url,
            bus=bus,
            dns_server=dns_server,
            sink=sink or smtp_sink,
            **options,
        )
        started.append(pipeline)
        return pipeline

    try:
        yield start
    finally:
        for pipeline in started:
            await pipeline.stop()
