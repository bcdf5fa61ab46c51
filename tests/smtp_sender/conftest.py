"""Shared set-up for SMTPSender tests: the peers' fixtures, Envelopes, settings, a running sender
and a collector of the outcome events it publishes on the real bus."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result
from kannon.bus.subjects import SENDING_SUBJECT, STATS_STREAM, STATS_SUBJECTS
from kannon.config import Settings
from kannon.envelope.build import Envelope
from kannon.envelope.ids import make_email_id
from kannon.model.event_ids import envelope_msg_id, send_guard_key, send_outcome_id
from kannon.model.outcome import Outcome
from kannon.smtp_sender.component import SmtpSender
from kannon.wire import envelope
from kannon.wire.stats import decode as decode_outcome
from tests.peers.dns import DnsServer
from tests.support import running

BATCH_ID = "msg_k9x2abc@tenant.test"
TENANT = "tenant.test"
RCPT_DOMAIN = "example.test"
MX_HOST = "mx.example.test"
HOSTNAME = "sender.kannon.test"
BODY = (
    b"From: Tenant <news@tenant.test>\r\nTo: someone@example.test\r\nSubject: hello\r\n"
    b"Message-ID: <x@tenant.test>\r\n\r\n<p>Hello</p>\r\n.a line starting with a dot\r\nend\r\n"
)


def make_job(
    recipient: str, *, should_retry: bool = True, body: bytes = BODY, batch_id: str = BATCH_ID
) -> Envelope:
    return Envelope(
        email_id=make_email_id(batch_id, recipient),
        sender="news@tenant.test",
        recipient=recipient,
        return_path=f"bump_tok123@{TENANT}",
        body=body,
        should_retry=should_retry,
    )


def make_settings(*, dns: DnsServer | None = None, port: int = 25, **sender: Any) -> Settings:
    values: dict[str, Any] = {
        "hostname": HOSTNAME,
        "smtp_port": port,
        "dns_servers": [dns.address] if dns is not None else [],
        "connect_timeout": "5s",
        "command_timeout": "10s",
    }
    values.update(sender)
    return Settings.model_validate(
        {"sender": values, "nats": {"sending_ack_wait": "60s", "max_deliver": 10}}
    )


def mx_for(dns: DnsServer, *domains: str) -> DnsServer:
    """MX of each domain → mx.example.test → 127.0.0.1, and start the server."""
    for domain in domains or (RCPT_DOMAIN,):
        dns.add_mx(domain, MX_HOST, 10)
    dns.add_host(MX_HOST, "127.0.0.1")
    return dns.start()


async def publish(bus: Bus, job: Envelope, attempt: int | None = None) -> int:
    """Publish an Envelope on kannon.sending, as the Dispatcher does (`Nats-Msg-Id`
    `<email id>.<attempt>`, a fresh attempt unless given); returns its stream sequence."""
    payload = envelope.encode(job)
    if attempt is None:
        attempt = next(_attempts)
    return await bus.publish(SENDING_SUBJECT, payload, envelope_msg_id(job.email_id, attempt))


_attempts = itertools.count(1000)


def bus_message(job: Envelope, seq: int, attempt: int = 0) -> BusMessage:
    msg_id = envelope_msg_id(job.email_id, attempt)
    return BusMessage(SENDING_SUBJECT, envelope.encode(job), msg_id, 1, seq)


def outcome_id(kind: str, job: Envelope, attempt: int) -> str:
    """The event id the SMTPSender gives the outcome of `job` published as `attempt`."""
    return send_outcome_id(kind, envelope_msg_id(job.email_id, attempt), 0)


def guard_key(job: Envelope, seq: int, attempt: int = 0) -> str:
    """The send-guard key of `job` published as `attempt` at stream sequence `seq`."""
    return send_guard_key(envelope_msg_id(job.email_id, attempt), seq, job.email_id)


class Outcomes:
    """Every outcome event stored in kannon-stats, in order, read by a durable test consumer."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.items: list[Outcome] = []
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Outcomes:
        ready = asyncio.Event()
        spec = ConsumerSpec("test-outcomes", STATS_STREAM, STATS_SUBJECTS, concurrency=1, batch=1)
        self._task = asyncio.create_task(
            self.bus.consume(spec, self._handle, self._stopping, on_ready=ready.set)
        )
        await asyncio.wait_for(ready.wait(), 10)
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    async def _handle(self, msg: BusMessage) -> Result:
        async with self._changed:
            self.items.append(decode_outcome(msg.data, msg.msg_id))
            self._changed.notify_all()
        return Result.ack()

    async def wait(self, count: int, timeout: float = 20.0) -> list[Outcome]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.items) >= count)
        return list(self.items)


@pytest.fixture
async def outcomes(bus: Bus) -> AsyncIterator[Outcomes]:
    collector = await Outcomes(bus).start()
    try:
        yield collector
    finally:
        await collector.stop()


class SendOne(Protocol):
    async def __call__(self, settings: Settings, recipient: str, **job: Any) -> Outcome: ...


@pytest.fixture
def send_one(bus: Bus, outcomes: Outcomes) -> SendOne:
    """Run a sender with `settings` while one Envelope to `recipient` (`job`: `make_job`'s
    options) is published as a fresh attempt: the one outcome event it publishes (exactly one, or
    the test fails)."""

    async def send(settings: Settings, recipient: str, **job: Any) -> Outcome:
        async with running(SmtpSender(settings, bus)):
            await publish(bus, make_job(recipient, **job))
            [event] = await outcomes.wait(1)
        return event

    return send
