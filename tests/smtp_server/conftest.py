"""Fixtures for the SMTPServer tests: running servers on loopback ports over the real bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kannon.bus.client import Bus
from kannon.config import Settings, SmtpSettings
from kannon.envelope import DkimSigner, generate_dkim_keypair
from kannon.runtime.component import Life
from kannon.smtp_server.component import SmtpServer
from tests.smtp_server.smtp_support import DOMAIN, SECRET, StartSmtp


@pytest.fixture(scope="session")
def signer() -> DkimSigner:
    private_pem, _ = generate_dkim_keypair()
    return DkimSigner(DOMAIN, "smtp", private_pem)


@pytest.fixture
async def start_smtp(bus: Bus) -> AsyncIterator[StartSmtp]:
    """Start SmtpServers (stopped gracefully at teardown, which must succeed)."""
    running: list[tuple[Life, asyncio.Task[None]]] = []

    async def start(**smtp: object) -> SmtpServer:
        values: dict[str, object] = {
            "address": "127.0.0.1:0",
            "domain": "bounces.k.example.com",
            "max_payload": "64kb",
            "max_recipients": 3,
        }
        values.update(smtp)
        settings = Settings(secret_key=SECRET, smtp=SmtpSettings(**values))  # type: ignore[arg-type]
        server = SmtpServer(settings, bus)
        life = Life("smtp")
        task = asyncio.create_task(server.run(life))
        ready = asyncio.create_task(life.wait_ready())
        await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert life.is_ready, "smtp server did not become ready"
        running.append((life, task))
        return server

    yield start
    for life, task in running:
        life.stopping.set()
        await asyncio.wait_for(task, 30)
