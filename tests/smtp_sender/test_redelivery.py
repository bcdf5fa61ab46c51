"""A redelivered Envelope (same stream sequence) is not sent twice, and its outcome is published
under the same event id; a failed publish is retried from memory, not by sending again."""

from __future__ import annotations

import asyncio
import dataclasses

from kannon.bus.client import Bus, BusMessage, Result, Verdict
from kannon.bus.subjects import SENDER_DURABLE, SENDING_STREAM, STATS_STREAM
from kannon.config import Settings
from kannon.model.outcome import Delivered
from kannon.smtp_sender.component import SmtpSender
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.smtp_sender.conftest import (
    Outcomes,
    bus_message,
    guard_key,
    make_job,
    make_settings,
    mx_for,
    outcome_id,
    publish,
)
from tests.support import running


async def test_handling_the_same_message_twice_sends_once(
    bus: Bus, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    sender = SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus)
    job = make_job("once@example.test")
    try:
        first = await sender.handle(bus_message(job, seq=4242))
        second = await sender.handle(bus_message(job, seq=4242))
        assert (first.verdict, second.verdict) == (Verdict.ACK, Verdict.ACK)
        assert len(smtp_sink.messages) == 1
        # The same attempt under another stream sequence (a Dispatcher that reclaimed its claim
        # published it again after the duplicate window) is not sent again either...
        copy = await sender.handle(bus_message(job, seq=4300))
        assert copy.verdict is Verdict.ACK
        assert len(smtp_sink.messages) == 1
        # ...while the next attempt (a retry) is a new send.
        third = await sender.handle(bus_message(job, seq=4243, attempt=1))
    finally:
        await sender.deliverer.close()
    assert third.verdict is Verdict.ACK
    assert len(smtp_sink.messages) == 2
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 2  # attempt 0's outcome (once) and attempt 1's


class _LosesFirstAck(SmtpSender):
    """Handles normally, but the first delivery's ack never makes it: JetStream redelivers."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.seen: list[tuple[BusMessage, Result]] = []
        self.redelivered = asyncio.Event()

    async def handle(self, message: BusMessage) -> Result:
        result = await super().handle(message)
        self.seen.append((message, result))
        if message.num_delivered == 1:
            return Result.nak(0)
        self.redelivered.set()
        return result


async def test_jetstream_redelivery_of_a_sent_envelope_is_acked_without_sending(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    sender = _LosesFirstAck(make_settings(dns=dns_server, port=smtp_sink.port), bus)
    async with running(sender):
        job = make_job("redelivered@example.test")
        seq = await publish(bus, job, attempt=0)
        await asyncio.wait_for(sender.redelivered.wait(), 20)
    [(first, _), (second, result)] = sender.seen
    assert (first.stream_seq, second.stream_seq) == (seq, seq)
    assert second.num_delivered == 2
    assert result.verdict is Verdict.ACK
    assert len(smtp_sink.messages) == 1
    [event] = await outcomes.wait(1)
    assert event.detail == Delivered()
    assert event.event_id == outcome_id("delivered", job, 0)
    info = await bus.js.consumer_info(SENDING_STREAM, SENDER_DURABLE)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


class _FlakyBus(Bus):
    """The real bus, except that the first publish of an outcome fails."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus.nc)
        self.failures_left = 1

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        if subject.startswith("kannon.stats.") and self.failures_left:
            self.failures_left -= 1
            raise TimeoutError("no PubAck")
        return await super().publish(subject, payload, msg_id)


async def test_failed_publish_naks_and_the_redelivery_publishes_without_sending_again(
    bus: Bus, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    flaky = _FlakyBus(bus)
    sender = SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), flaky)
    message = bus_message(make_job("flaky@example.test"), seq=77)
    try:
        first = await sender.handle(message)
        second = await sender.handle(message)
    finally:
        await sender.deliverer.close()
    assert first.verdict is Verdict.NAK
    assert second.verdict is Verdict.ACK
    assert len(smtp_sink.messages) == 1
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1


async def test_envelopes_that_cannot_be_ours_are_terminated_without_sending(
    bus: Bus, smtp_sink: SmtpSink
) -> None:
    sender = SmtpSender(make_settings(port=smtp_sink.port), bus)
    garbage = BusMessage("kannon.sending", b"\xff\xff\xff", None, 1, 1)
    foreign = make_job("x@example.test")
    foreign_id = dataclasses.replace(foreign, email_id="<not-one-of-ours>", should_retry=True)
    assert (await sender.handle(garbage)).verdict is Verdict.TERM
    assert (await sender.handle(bus_message(foreign_id, seq=2))).verdict is Verdict.TERM
    assert smtp_sink.connections == 0


async def test_redelivery_after_a_death_mid_send_sends_again_and_publishes_once(
    bus: Bus, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    """Only the claim is there (the previous sender died between claim and result): whether the
    remote server got it is unknown, so it is sent again rather than lost; a second redelivery
    then finds the recorded outcome and sends nothing."""
    mx_for(dns_server)
    sender = SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus)
    job = make_job("takeover@example.test")
    guard = await bus.sent_guard()
    assert await guard.claim(guard_key(job, 777)) is None  # the dead sender's claim
    try:
        first = await sender.handle(bus_message(job, seq=777))
        second = await sender.handle(bus_message(job, seq=777))
    finally:
        await sender.deliverer.close()
    assert (first.verdict, second.verdict) == (Verdict.ACK, Verdict.ACK)
    assert len(smtp_sink.messages) == 1
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1  # delivered.777, republished under the same id
