"""Faults of what the fleet stands on, in the middle of a Batch: a nats-server restart, a
PostgreSQL outage longer than `nats.max_deliver` × the first retry delay, and a queue that holds
Envelopes far longer than the Dispatcher's claim timeout. Each ends with every Recipient received
exactly once and every Delivery ended exactly once.
"""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import pytest

from kannon.bus.client import Bus
from kannon.config import COMPONENTS
from kannon.db.embedded import EmbeddedPostgres, start_postgres
from tests.faults.support import (
    BOUNCES,
    KILL_AT,
    RECIPIENTS,
    SINK_DELAY,
    RestartableNats,
    SlowSink,
    dispatcher_reclaims,
    metric,
    send_batch,
    settle,
    slow_remote,
    verdict,
)
from tests.fleet.conftest import StartFleet
from tests.fleet.fleet import Fleet, FleetError, add_recipient_dns
from tests.peers.dns import DnsServer
from tests.support import wait_for


async def _unhealthy(fleet: Fleet, component: str, timeout: float = 20.0) -> None:
    async def not_ok() -> bool:
        try:
            status, _ = await fleet.processes[component].health()
        except (OSError, TimeoutError, ValueError):
            return True
        return status != 200

    await wait_for(not_ok, what=f"{component} to notice the outage", timeout=timeout)


async def test_a_nats_server_restart_mid_batch_loses_and_repeats_nothing(
    start_fleet: StartFleet,
    own_nats: RestartableNats,
    dns_server: DnsServer,
    database_url: str,
) -> None:
    sink, db = await slow_remote(dns_server, database_url, delay=SINK_DELAY)
    bus: Bus | None = None
    try:
        fleet = await start_fleet(
            sink_port=sink.port,
            nats_url=own_nats.url,
            options={"--nats-sending-ack-wait": "5s"},
        )
        _, wanted, batch = await send_batch(fleet, RECIPIENTS, BOUNCES)
        await sink.wait_for_messages(KILL_AT, timeout=60)

        own_nats.stop()
        await _unhealthy(fleet, "dispatcher")
        own_nats.start()
        await fleet.wait_healthy(timeout=60)

        bus = await Bus.connect(own_nats.url)
        await settle(db, bus, batch, RECIPIENTS, timeout=120)
        result = await verdict(db, batch, wanted, sink)
        assert result.duplicates == {}, result.duplicates
        codes = await fleet.stop()
        assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
    finally:
        if bus is not None:
            await bus.close()
        await db.close()
        await sink.stop()


MAX_DELIVER = 2
FIRST_RETRY = 5.0  # ConsumerSpec.retry_delay of the outcome consumers


async def _database(server: EmbeddedPostgres) -> str:
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute('CREATE DATABASE "kannon"')
    finally:
        await conn.close()
    return server.url("kannon")


def _warning_lines(fleet: Fleet) -> int:
    return sum(
        len(re.findall(r"level=(?:warning|error)|^Traceback", p.output(), re.M))
        for p in [*fleet.retired, *fleet.processes.values()]
    )


async def test_a_postgresql_outage_longer_than_max_deliver_loses_no_event(
    start_fleet: StartFleet,
    own_postgres: EmbeddedPostgres,
    dns_server: DnsServer,
    bus: Bus,
) -> None:
    """Outcome events that cannot be applied during the outage are retried for as long as it
    lasts (before: dropped after max_deliver tries, their rows stranded and sent again), the API
    answers UNAVAILABLE, and the logs get a line per kind of failure, not one per failure."""
    database_url = await _database(own_postgres)
    sink = SlowSink(delay=SINK_DELAY)
    await sink.start()
    add_recipient_dns(dns_server)
    dns_server.start()
    db: asyncpg.Connection | None = None
    try:
        fleet = await start_fleet(
            sink_port=sink.port,
            database_url=database_url,
            options={"--nats-max-deliver": str(MAX_DELIVER)},
        )
        auth, wanted, batch = await send_batch(fleet, RECIPIENTS, BOUNCES)
        await sink.wait_for_messages(KILL_AT, timeout=60)

        lines_before = _warning_lines(fleet)
        port, data_dir = own_postgres.port, own_postgres.data_dir
        started = time.monotonic()
        own_postgres.stop()
        with pytest.raises(FleetError, match="unavailable"):
            await fleet.send_html(auth, {"late@example.test": {}})

        async def outcomes_failing_long_enough() -> bool:
            failures = metric(
                await fleet.processes["dispatcher"].metrics(), "kannon_bus_handler_failures_total"
            )
            return failures > MAX_DELIVER and time.monotonic() - started > (
                MAX_DELIVER * FIRST_RETRY + 2
            )

        await wait_for(
            outcomes_failing_long_enough,
            what="outcome handlers failing past max_deliver",
            timeout=60,
            interval=0.5,
        )
        outage = time.monotonic() - started
        restarted = await asyncio.to_thread(start_postgres, data_dir, port=port, fast=True)
        own_postgres.process = restarted.process  # the fixture stops what runs now
        lines_during = _warning_lines(fleet) - lines_before

        db = await asyncpg.connect(database_url)
        await settle(db, bus, batch, RECIPIENTS, timeout=150)
        result = await verdict(db, batch, wanted, sink)
        assert result.duplicates == {}, result.duplicates
        dead = metric(await fleet.processes["stats"].metrics(), "kannon_bus_dead_letters_total")
        print(
            f"\nPostgreSQL outage of {outage:.1f} s (max_deliver {MAX_DELIVER}): "
            f"{len(sink.messages)} messages for {RECIPIENTS - BOUNCES} recipients, no duplicate, "
            f"no event lost; {lines_during} warning/error lines from 7 processes during it"
        )
        assert dead == 0
        # Once per kind of failure per 30 s and process (ADR 0026): ~4,000 before.
        assert lines_during < 150, lines_during
        codes = await fleet.stop()
        assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
    finally:
        if db is not None:
            await db.close()
        await sink.stop()


async def test_envelopes_queued_longer_than_the_claim_timeout_are_sent_once(
    start_fleet: StartFleet,
    dns_server: DnsServer,
    database_url: str,
    bus: Bus,
) -> None:
    """The sender is down while the Dispatcher publishes a Batch; its Envelopes wait in the
    stream for many claim timeouts. Before ADR 0025 Reclaim dispatched each again every claim
    timeout and the remote got two or three copies."""
    claim_timeout = 1.0
    sink, db = await slow_remote(dns_server, database_url, delay=0.0)
    try:
        fleet = await start_fleet(
            sink_port=sink.port,
            options={"--dispatcher-claim-timeout": f"{claim_timeout:g}s"},
            components=[c for c in COMPONENTS if c != "sender"],
        )
        _, wanted, batch = await send_batch(fleet, RECIPIENTS, BOUNCES)

        async def all_queued_for_long() -> bool:
            row = await db.fetchrow(
                """SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
                          max(queued_at) AS newest
                   FROM sending_pool_emails WHERE message_id = $1""",
                batch,
            )
            if row["queued"] != RECIPIENTS:
                return False
            waited = await db.fetchval(
                "SELECT extract(epoch FROM timezone('utc', now()) - $1::timestamp)",
                row["newest"],
            )
            return float(waited) > 4 * claim_timeout

        await wait_for(all_queued_for_long, what="every Envelope queued for 4 claim timeouts")
        reclaimed = await dispatcher_reclaims(fleet)
        assert reclaimed == 0

        sender = fleet.spawn("sender")
        await sender.wait_healthy()
        await settle(db, bus, batch, RECIPIENTS, timeout=90)
        result = await verdict(db, batch, wanted, sink)
        assert result.duplicates == {}, result.duplicates
        assert len(sink.messages) == RECIPIENTS - BOUNCES
        codes = await fleet.stop()
        assert codes == dict.fromkeys(COMPONENTS, 0), fleet.report()
    finally:
        await db.close()
        await sink.stop()
