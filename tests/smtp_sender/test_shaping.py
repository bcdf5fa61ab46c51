"""Delivery shaping in the sender (ADR 0037, 0038): a destination's connection limit holds for
the whole fleet, not per sender; an Envelope to a paused destination waits without spending an
attempt, until it has waited `sender.shaping.max_defer`.

Two `kannon --run-sender` processes share the test's nats-server; the SMTP peer greets a third
concurrent connection with 421, as big providers do, and records the most connections it ever
had open at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kannon.bus.client import Bus, Verdict
from kannon.bus.shared_state import open_shared_state
from kannon.model.outcome import Errored
from kannon.model.shaping import DestinationState
from kannon.runtime.processes import free_port
from kannon.smtp_sender.component import SmtpSender
from tests.fleet.fleet import KANNON, FleetProcess
from tests.peers.dns import DnsServer
from tests.peers.fixtures import SinkFactory
from tests.peers.smtp_sink import SmtpSink
from tests.smtp_sender.conftest import (
    HOSTNAME,
    Outcomes,
    bus_message,
    make_job,
    make_settings,
    mx_for,
    publish,
)

RULE = ".example.test: connections=2 per_connection=3"


@pytest.fixture
async def sender_processes() -> AsyncIterator[list[FleetProcess]]:
    started: list[FleetProcess] = []
    try:
        yield started
    finally:
        for process in started:
            if process.alive():
                await process.terminate()


def spawn_sender(
    number: int, tmp_path: Path, nats_url: str, dns: DnsServer, smtp_port: int
) -> FleetProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
    env["HOME"] = str(tmp_path)
    env["K_NATS_URL"] = nats_url
    health_port = free_port()
    argv = [KANNON, "--run-sender", "--health-host", "127.0.0.1"]
    argv += ["--health-port", str(health_port), "--sender-hostname", HOSTNAME]
    argv += ["--sender-dns-servers", dns.address, "--sender-smtp-port", str(smtp_port)]
    argv += ["--sender-max-jobs", "8", "--sender-shaping-destinations", RULE]
    process = FleetProcess(
        component=f"sender{number}",
        argv=argv,
        env=env,
        health_port=health_port,
        log_path=tmp_path / f"sender{number}.log",
    )
    process.start()
    return process


def delivered_count(metrics: str) -> float:
    found = re.search(r'^kannon_sender_outcomes_total\{type="delivered"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


async def test_two_senders_never_open_more_connections_than_the_destination_allows(
    *,
    bus: Bus,
    outcomes: Outcomes,
    dns_server: DnsServer,
    smtp_sink_factory: SinkFactory,
    sender_processes: list[FleetProcess],
    tmp_path: Path,
    nats_url: str,
) -> None:
    sink = await smtp_sink_factory(max_connections=2)
    mx_for(dns_server)
    for number in (1, 2):
        sender_processes.append(spawn_sender(number, tmp_path, nats_url, dns_server, sink.port))
    await asyncio.gather(*(p.wait_healthy() for p in sender_processes))

    jobs = [make_job(f"rcpt{i}@example.test") for i in range(40)]
    for job in jobs:
        await publish(bus, job)
    seen = await outcomes.wait(len(jobs), timeout=120)

    assert {o.type for o in seen} == {"delivered"}, [(o.type, o.detail) for o in seen]
    assert len(seen) == len(jobs)
    for job in jobs:
        assert len(sink.messages_to(job.recipient)) == 1, job.recipient
    assert sink.stats.refused_connections == 0
    assert sink.stats.peak_connections == 2
    # Both senders did part of the work: the limit was shared, not held by one of them.
    counts = [delivered_count(await p.metrics()) for p in sender_processes]
    assert all(counts) and sum(counts) == len(jobs), counts


async def test_a_paused_destination_defers_its_envelopes_until_max_defer_makes_it_an_attempt(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    shaping = {"destinations": "example.test: connections=2", "backoff": True, "max_defer": "1h"}
    sender = SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port, shaping=shaping), bus)
    # Another sender met a 421 here a moment ago: the destination is paused for ten minutes.
    shared = await open_shared_state(bus)
    paused = DestinationState(level=1, paused_until=time.time() + 600, reason="421 busy")
    await shared.change("domain.example.test", lambda _: (paused.encode(), None))
    job = make_job("waits@example.test")
    now = datetime.now(UTC)
    try:
        fresh = await sender.handle(replace(bus_message(job, seq=10), published=now))
        assert fresh.verdict is Verdict.NAK and fresh.delay is not None
        assert 590 < fresh.delay < 605  # the rest of the pause, plus jitter
        assert not outcomes.items  # not an attempt: nothing published
        stale = replace(bus_message(job, seq=11), published=now - timedelta(hours=2))
        waited_too_long = await sender.handle(stale)
    finally:
        await sender.deliverer.close()
    assert waited_too_long.verdict is Verdict.ACK
    (outcome,) = await outcomes.wait(1)
    assert isinstance(outcome.detail, Errored)
    assert "max_defer" in outcome.detail.message and "paused" in outcome.detail.message
    assert smtp_sink.connections == 0
