"""Fixtures for the SMTPServer tests: running servers on loopback ports over the real bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kannon.bus.client import Bus
from kannon.config import Settings, SmtpSettings
from kannon.envelope import DkimSigner
from kannon.smtp_server.component import SmtpServer
from tests.smtp_server.smtp_support import DOMAIN, SECRET, StartSmtp
from tests.support import Running, start_component


@pytest.fixture(scope="session")
def signer(dkim_keypair: tuple[str, str]) -> DkimSigner:
    return DkimSigner(DOMAIN, "smtp", dkim_keypair[0])


@pytest.fixture
async def start_smtp(bus: Bus) -> AsyncIterator[StartSmtp]:
    """Start SmtpServers (stopped gracefully at teardown, which must succeed)."""
    started: list[Running] = []

    async def start(**smtp: object) -> SmtpServer:
        values: dict[str, Any] = {
            "address": "127.0.0.1:0",
            "domain": "bounces.k.example.com",
            "max_payload": "64kb",
            "max_recipients": 3,
        }
        values.update(smtp)
        settings = Settings(secret_key=SECRET, smtp=SmtpSettings(**values))
        server = SmtpServer(settings, bus)
        started.append(await start_component(server))
        return server

    yield start
    for running in started:
        await running.stop()
