"""Component lifecycle (graceful stop with a send in flight), the demo sender, configuration
requirements, and the session cache's bounds (idle expiry, messages per session)."""

from __future__ import annotations

import asyncio

import pytest

from kannon.bus.client import Bus
from kannon.bus.subjects import SENDER_DURABLE, SENDING_STREAM
from kannon.config import ConfigError
from kannon.model.outcome import Bounced, Delivered
from kannon.runtime.component import Life
from kannon.smtp_sender.component import SmtpSender
from kannon.smtp_sender.delivery import SmtpDeliverer
from kannon.smtp_sender.mx import MxResolver
from kannon.smtp_sender.result import Kind
from kannon.smtp_sender.sessions import SessionCache
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.smtp_sender.conftest import (
    HOSTNAME,
    Outcomes,
    make_job,
    make_settings,
    mx_for,
    outcome_id,
    publish,
)
from tests.support import running, wait_for


async def test_graceful_stop_finishes_the_send_in_flight_then_closes_sessions(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    sender = SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus)
    life = Life(sender.name)
    task = asyncio.create_task(sender.run(life))
    await asyncio.wait_for(life.wait_ready(), 10)
    job = make_job("hold.kim@example.test")
    await publish(bus, job, attempt=0)
    await asyncio.wait_for(smtp_sink.held.wait(), 10)  # the remote is mid-transaction

    life.stopping.set()
    smtp_sink.release_held()
    await asyncio.wait_for(task, 30)

    [event] = await outcomes.wait(1)
    assert event.detail == Delivered()
    assert event.event_id == outcome_id("delivered", job, 0)
    info = await bus.js.consumer_info(SENDING_STREAM, SENDER_DURABLE)
    assert info.num_ack_pending == 0  # acked before run() returned
    assert smtp_sink.stats.quits == 1
    assert smtp_sink.open_connections == 0


async def test_demo_sender_publishes_real_outcomes_without_any_network(
    bus: Bus, outcomes: Outcomes, smtp_sink: SmtpSink
) -> None:
    # No hostname, no DNS, and the only SMTP server around must stay untouched.
    settings = make_settings(port=smtp_sink.port, demo_sender=True, hostname=None)
    async with running(SmtpSender(settings, bus)):
        ok = make_job("demo@example.test")
        await publish(bus, ok, attempt=0)
        await outcomes.wait(1)
        bad = make_job("someone.error@example.test")
        await publish(bus, bad, attempt=0)
        events = await outcomes.wait(2)
    delivered, bounced = events
    assert delivered.detail == Delivered()
    assert delivered.event_id == outcome_id("delivered", ok, 0)
    # Classified like any refusal: a bounce, never a hard one (nothing says the address is dead).
    assert bounced.detail == Bounced(
        permanent=True, code=512, message="error sending email", status="5.0.0", reason="onhold"
    )
    assert bounced.event_id == outcome_id("bounced", bad, 0)
    assert smtp_sink.connections == 0


async def test_a_real_sender_requires_a_hostname(bus: Bus) -> None:
    with pytest.raises(ConfigError, match=r"sender\.hostname"):
        SmtpSender(make_settings(hostname=None), bus)


async def test_idle_sessions_expire_and_sessions_retire_after_max_messages(
    dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    now = [0.0]
    sessions = SessionCache(idle_timeout=10, max_idle=4, max_messages=2, clock=lambda: now[0])
    deliverer = SmtpDeliverer(
        hostname=HOSTNAME,
        port=smtp_sink.port,
        resolver=MxResolver([dns_server.address]),
        sessions=sessions,
        connect_timeout=5,
        command_timeout=5,
        deadline=30,
    )
    try:
        first = await deliverer.deliver(make_job("a@example.test"))
        now[0] = 9.0  # idle 9 s: still within the idle timeout
        assert await sessions.reap() == 0
        second = await deliverer.deliver(make_job("b@example.test"))
        # Two messages on one session: it retires instead of going back to the cache.
        assert (smtp_sink.connections, smtp_sink.stats.quits, sessions.idle_count) == (1, 1, 0)

        third = await deliverer.deliver(make_job("c@example.test"))
        assert smtp_sink.connections == 2
        now[0] = 20.0  # idle 11 s
        await deliverer.maintain()
        assert (smtp_sink.stats.quits, sessions.idle_count) == (2, 0)

        fourth = await deliverer.deliver(make_job("d@example.test"))
        assert smtp_sink.connections == 3
    finally:
        await deliverer.close()
    assert {r.kind for r in (first, second, third, fourth)} == {Kind.DELIVERED}
    assert [m.connection for m in smtp_sink.messages] == [1, 1, 2, 3]
    assert smtp_sink.stats.quits == 3


async def test_max_jobs_bounds_transactions_while_more_envelopes_are_in_hand(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    """ADR 0060: with one sending job, the next Envelopes are fetched while the job's SMTP
    transaction is held at the remote, yet no second transaction starts until it ends."""
    mx_for(dns_server)
    settings = make_settings(dns=dns_server, port=smtp_sink.port, max_jobs=1)
    jobs = [make_job("hold.kim@example.test")] + [make_job(f"r{i}@example.test") for i in range(3)]
    async with running(SmtpSender(settings, bus)):
        for job in jobs:
            await publish(bus, job, attempt=0)
        await asyncio.wait_for(smtp_sink.held.wait(), 10)  # the one job is mid-transaction

        async def all_in_hand() -> bool:
            info = await bus.js.consumer_info(SENDING_STREAM, SENDER_DURABLE)
            return int(info.num_ack_pending or 0) == len(jobs)

        await wait_for(all_in_hand, what="every Envelope fetched while the job is held")
        assert smtp_sink.connections == 1  # no second transaction beside the held one
        assert smtp_sink.messages == []

        smtp_sink.release_held()
        events = await outcomes.wait(len(jobs))
    assert {event.recipient for event in events} == {job.recipient for job in jobs}
    assert all(event.detail == Delivered() for event in events)
