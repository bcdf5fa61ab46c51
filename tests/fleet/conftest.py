"""Fixtures of the fleet tests: the test peers (SMTP sink, dnsmasq) and `start_fleet`, which runs
the seven Components as separate processes (fleet.py) and, at teardown, stops whatever still runs
and prints every process's command line and output (pytest shows it when the test failed)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kannon.bus.client import Bus
from tests.fleet.fleet import Fleet
from tests.peers.dns import DnsServer

StartFleet = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def start_fleet(
    database_url: str,
    nats_url: str,
    bus: Bus,  # fresh streams and send-guard bucket for this test
    dns_server: DnsServer,
) -> AsyncIterator[StartFleet]:
    """`await start_fleet(sink_port=..., options={flag: value})` → a healthy Fleet (optionally
    `database_url=`/`nats_url=` of the test's own servers, `components=` a subset). dnsmasq must
    be started by the test (with the recipients' MX) first."""
    workdir = Path(tempfile.mkdtemp(prefix="kannon-fleet-", dir="/tmp"))
    fleets: list[Fleet] = []

    async def start(*, sink_port: int, options: dict[str, str] | None = None, **kw: Any) -> Fleet:
        if dns_server.port == 0:
            raise AssertionError("start dns_server (with add_recipient_dns) before the fleet")
        # A test with servers of its own (to stop and start them) passes their URLs.
        kw.setdefault("database_url", database_url)
        kw.setdefault("nats_url", nats_url)
        fleet = await Fleet.start(
            workdir / str(len(fleets)),
            dns=dns_server,
            sink_port=sink_port,
            options=options,
            **kw,
        )
        fleets.append(fleet)
        return fleet

    try:
        yield start
    finally:
        for fleet in fleets:
            try:
                await fleet.stop()
            finally:
                fleet.kill_all()
                fleet.print_report()
        shutil.rmtree(workdir, ignore_errors=True)
