"""Delivery shaping across sender processes (ADR 0037): a destination's connection limit holds
for the whole fleet, not per sender.

Two `kannon --run-sender` processes share the test's nats-server; the SMTP peer greets a third
concurrent connection with 421, as big providers do, and records the most connections it ever
had open at once.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kannon.bus.client import Bus
from kannon.runtime.processes import free_port
from tests.fleet.fleet import KANNON, FleetProcess
from tests.peers.dns import DnsServer
from tests.peers.fixtures import SinkFactory
from tests.smtp_sender.conftest import HOSTNAME, Outcomes, make_job, mx_for, publish

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
