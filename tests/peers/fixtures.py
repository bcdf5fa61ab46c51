"""pytest fixtures for the test peers: an SMTP sink, a factory for sinks with options, a DNS
server, and a TLS identity. Register them in a conftest with
``from tests.peers.fixtures import *`` (or list this module in the root ``pytest_plugins``).

* ``smtp_sink``          – started plain SmtpSink (250 unless the recipient grammar says otherwise)
* ``smtp_sink_factory``  – ``await smtp_sink_factory(tls=..., users=...)`` → started SmtpSink
* ``tls_identity``       – CA + server certificate for localhost, 127.0.0.1 and ``*.kannon.test``
* ``dns_server``         – a DnsServer NOT yet started: add records, then ``dns_server.start()``

Everything is stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls import TlsIdentity, make_identity

__all__ = ["dns_server", "smtp_sink", "smtp_sink_factory", "tls_identity"]

SinkFactory = Callable[..., Awaitable[SmtpSink]]

TLS_NAMES = ("localhost", "127.0.0.1", "*.kannon.test", "*.example.test")


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    sink = await SmtpSink().start()
    try:
        yield sink
    finally:
        await sink.stop()


@pytest.fixture
async def smtp_sink_factory() -> AsyncIterator[SinkFactory]:
    sinks: list[SmtpSink] = []

    async def make(**options: Any) -> SmtpSink:
        sink = await SmtpSink(**options).start()
        sinks.append(sink)
        return sink

    try:
        yield make
    finally:
        for sink in sinks:
            await sink.stop()


@pytest.fixture
def tls_identity(tmp_path: Path) -> TlsIdentity:
    return make_identity(tmp_path / "tls", TLS_NAMES)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    try:
        yield server
    finally:
        server.close()
