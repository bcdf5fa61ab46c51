"""A redelivered Envelope (same stream sequence) is not sent twice, and its outcome is published
under the same event id; a failed publish is retried from memory, not by sending again; a copy
of an attempt this process is still handling waits for it (ADR 0049)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import nats.errors
import nats.js.errors
import pytest
from prometheus_client import REGISTRY

from kannon.bus.client import Bus, BusMessage, Claimed, Result, SentGuard, Verdict
from kannon.bus.subjects import (
    DEAD_LETTER_STREAM,
    SENDER_DURABLE,
    SENDING_STREAM,
    STATS_STREAM,
    dead_letter_subject,
)
from kannon.config import Settings
from kannon.model.outcome import Delivered
from kannon.runtime.clock import utc_now
from kannon.smtp_sender import component
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
from tests.support import running, wait_for


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
    """Only the claim is there, older than any live handling holds one (the previous sender died
    between claim and result; the clock is moved past the claim's lifetime): whether the remote
    server got it is unknown, so it is sent again rather than lost — exactly once: a second
    redelivery then finds the recorded outcome and sends nothing."""
    mx_for(dns_server)
    settings = make_settings(dns=dns_server, port=smtp_sink.port)
    lifetime = component.claim_lifetime(settings.nats.sending_ack_wait)
    sender = SmtpSender(settings, bus, now=lambda: utc_now() + lifetime + timedelta(seconds=5))
    job = make_job("takeover@example.test")
    guard = await bus.sent_guard()
    assert await guard.claim(guard_key(job, 777)) is None  # the dead sender's claim
    taken_over, waited = _taken_over(), _claims_waited()
    try:
        first = await sender.handle(bus_message(job, seq=777))
        second = await sender.handle(bus_message(job, seq=777))
    finally:
        await sender.deliverer.close()
    assert (first.verdict, second.verdict) == (Verdict.ACK, Verdict.ACK)
    assert len(smtp_sink.messages) == 1
    assert (_taken_over(), _claims_waited()) == (taken_over + 1, waited)
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1  # delivered.777, republished under the same id


def _taken_over() -> float:
    return REGISTRY.get_sample_value("kannon_sender_guard_taken_over_total") or 0.0


def _claims_waited() -> float:
    return REGISTRY.get_sample_value("kannon_sender_claims_waited_total") or 0.0


class _GuardWithElection:
    """The real send guard behind a NATS cluster electing a leader: while `recording_held`,
    a record waits (`recording` says one is waiting); while `down`, records fail; the next
    `claim_failures` claims time out."""

    def __init__(self, guard: SentGuard) -> None:
        self.guard = guard
        self.recording = asyncio.Event()
        self.recording_held = False
        self.elected = asyncio.Event()
        self.down = False
        self.claim_failures = 0

    async def claim(self, key: str) -> Claimed | bytes | None:
        if self.claim_failures:
            self.claim_failures -= 1
            raise nats.errors.TimeoutError
        return await self.guard.claim(key)

    async def record(self, key: str, value: bytes) -> None:
        if self.recording_held:
            self.recording.set()
            await self.elected.wait()
        if self.down:
            raise nats.errors.TimeoutError
        await self.guard.record(key, value)

    async def release(self, key: str) -> None:
        await self.guard.release(key)


def _copies_waited() -> float:
    return REGISTRY.get_sample_value("kannon_sender_copies_waited_total") or 0.0


async def test_a_copy_of_an_attempt_still_being_handled_waits_for_it_and_is_not_sent(
    bus: Bus, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    """ADR 0049: the first handling sent the Envelope and its guard write hangs (a leader
    election); JetStream's redelivered copy reaches the same process. The guard still says
    CLAIMED, yet the copy waits for the first handling and republishes its outcome."""
    mx_for(dns_server)
    guard = _GuardWithElection(await bus.sent_guard())
    guard.recording_held = True
    sender = SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus, guard=guard)
    job = make_job("inflight@example.test")
    message = bus_message(job, seq=901)
    waited = _copies_waited()
    try:
        first = asyncio.create_task(sender.handle(message))
        await asyncio.wait_for(guard.recording.wait(), 20)  # sent; the record waits
        assert isinstance(await guard.guard.claim(guard_key(job, 901)), Claimed)
        copy = asyncio.create_task(sender.handle(dataclasses.replace(message, num_delivered=2)))

        async def copy_waits() -> bool:
            return _copies_waited() > waited

        await wait_for(copy_waits, what="the copy to wait for the first handling", timeout=10)
        assert not copy.done()
        guard.elected.set()
        results = await asyncio.wait_for(asyncio.gather(first, copy), 20)
    finally:
        await sender.deliverer.close()
    assert [r.verdict for r in results] == [Verdict.ACK, Verdict.ACK]
    assert len(smtp_sink.messages) == 1
    assert _copies_waited() == waited + 1
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1  # one outcome, republished under the same event id


async def test_an_outcome_the_guard_could_not_store_is_kept_and_recorded_later(
    bus: Bus, dns_server: DnsServer, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard write fails past its retries (published, acked): the outcome stays in memory,
    so a later copy of the attempt is not sent although the guard says CLAIMED, and the record
    is made once the guard answers again."""
    monkeypatch.setattr(component, "GUARD_RETRY", 0.01)
    mx_for(dns_server)
    guard = _GuardWithElection(await bus.sent_guard())
    guard.down = True
    sender = SmtpSender(
        make_settings(dns=dns_server, port=smtp_sink.port), bus, guard=guard, idle_timeout=0.2
    )
    job = make_job("unrecorded@example.test")
    message = bus_message(job, seq=902)
    key = guard_key(job, 902)
    async with running(sender):
        first = await sender.handle(message)
        assert isinstance(await guard.guard.claim(key), Claimed)
        copy = await sender.handle(dataclasses.replace(message, num_delivered=2))
        assert (first.verdict, copy.verdict) == (Verdict.ACK, Verdict.ACK)
        assert len(smtp_sink.messages) == 1
        guard.down = False

        async def recorded() -> bool:
            return isinstance(await guard.guard.claim(key), bytes)

        await wait_for(recorded, what="the kept outcome recorded in the guard", timeout=20)
    assert len(smtp_sink.messages) == 1
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1


async def test_a_claim_is_tried_again_through_an_election_rather_than_sent_without_the_guard(
    bus: Bus, dns_server: DnsServer, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process sent the attempt and recorded it; this one gets a copy while the guard's
    first claims time out. It waits for the guard rather than failing open and sending."""
    monkeypatch.setattr(component, "GUARD_RETRY", 0.01)
    mx_for(dns_server)
    settings = make_settings(dns=dns_server, port=smtp_sink.port)
    job = make_job("election@example.test")
    elsewhere = SmtpSender(settings, bus)
    guard = _GuardWithElection(await bus.sent_guard())
    guard.claim_failures = 3
    here = SmtpSender(settings, bus, guard=guard)
    try:
        first = await elsewhere.handle(bus_message(job, seq=903))
        copy = await here.handle(bus_message(job, seq=903))
    finally:
        await elsewhere.deliverer.close()
        await here.deliverer.close()
    assert (first.verdict, copy.verdict) == (Verdict.ACK, Verdict.ACK)
    assert guard.claim_failures == 0
    assert len(smtp_sink.messages) == 1


async def test_a_copy_finding_another_senders_fresh_claim_waits_then_settles_from_its_outcome(
    bus: Bus, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    """ADR 0049, two sender replicas on one pool: the first sent the Envelope and its guard
    write waits through an election; JetStream's redelivered copy reaches the other replica,
    which finds the claim fresh. It does not send: it is sent back to wait until the claim would
    be too old for a live handling, and when it comes back after the outcome was recorded it
    settles from it (same event id) without sending."""
    mx_for(dns_server)
    settings = make_settings(dns=dns_server, port=smtp_sink.port)
    held = _GuardWithElection(await bus.sent_guard())
    held.recording_held = True
    first_replica = SmtpSender(settings, bus, guard=held)
    other_replica = SmtpSender(settings, bus)
    job = make_job("two-replicas@example.test")
    message = bus_message(job, seq=904)
    waited, taken_over = _claims_waited(), _taken_over()
    try:
        first = asyncio.create_task(first_replica.handle(message))
        await asyncio.wait_for(held.recording.wait(), 20)  # sent; the record waits
        copy = await other_replica.handle(dataclasses.replace(message, num_delivered=2))
        assert copy.verdict is Verdict.NAK
        assert copy.delay is not None
        # Back once the claim is older than any live handling's, not sooner.
        lifetime = other_replica.claim_lifetime.total_seconds()
        assert lifetime - 10 < copy.delay <= lifetime + 1
        assert len(smtp_sink.messages) == 1
        assert _claims_waited() == waited + 1
        held.elected.set()
        assert (await asyncio.wait_for(first, 20)).verdict is Verdict.ACK
        again = await other_replica.handle(dataclasses.replace(message, num_delivered=3))
    finally:
        await first_replica.deliverer.close()
        await other_replica.deliverer.close()
    assert again.verdict is Verdict.ACK
    assert len(smtp_sink.messages) == 1
    assert (_claims_waited(), _taken_over()) == (waited + 1, taken_over)
    info = await bus.js.stream_info(STATS_STREAM)
    assert info.state.messages == 1  # one outcome, republished under the same event id


class _ClaimedByADeadReplica:
    """The real send guard, where another sender replica claimed each key just before this one
    asks, and then died mid-send (its claim is never recorded nor released)."""

    def __init__(self, guard: SentGuard) -> None:
        self.guard = guard
        self.taken: set[str] = set()

    async def claim(self, key: str) -> Claimed | bytes | None:
        if key not in self.taken:
            self.taken.add(key)
            assert await self.guard.claim(key) is None  # the other replica's claim
        return await self.guard.claim(key)

    async def record(self, key: str, value: bytes) -> None:
        await self.guard.record(key, value)

    async def release(self, key: str) -> None:
        await self.guard.release(key)


class _Counting(SmtpSender):
    """Notes each delivery's count (`num_delivered`)."""

    def __init__(self, settings: Settings, bus: Bus, *, guard: _ClaimedByADeadReplica) -> None:
        super().__init__(settings, bus, guard=guard)
        self.deliveries: list[int] = []

    async def handle(self, message: BusMessage) -> Result:
        self.deliveries.append(message.num_delivered)
        return await super().handle(message)


async def test_a_copy_sent_back_to_wait_is_never_dead_lettered_and_sends_once_the_claim_is_stale(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    """Through the real consumer, with `max_deliver` 1 and `sender.claim_lifetime` 2s: the Envelope
    finds a fresh claim by a replica that then died, waits (a delivery that does not count
    towards `max_deliver`: nothing is dead-lettered), comes back to a stale claim and is sent
    exactly once."""
    mx_for(dns_server)
    settings = make_settings(dns=dns_server, port=smtp_sink.port, claim_lifetime="2s")
    settings = settings.model_copy(
        update={"nats": settings.nats.model_copy(update={"max_deliver": 1})}
    )
    sender = _Counting(settings, bus, guard=_ClaimedByADeadReplica(await bus.sent_guard()))
    assert sender.claim_lifetime == timedelta(seconds=2)  # `sender.claim_lifetime`
    waited, taken_over = _claims_waited(), _taken_over()
    job = make_job("stale-claim@example.test")
    async with running(sender):
        await publish(bus, job, attempt=0)
        [event] = await outcomes.wait(1, timeout=30)

        async def acked() -> bool:
            info = await bus.js.consumer_info(SENDING_STREAM, SENDER_DURABLE)
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await wait_for(acked, what="the Envelope acked", timeout=10)
    assert event.detail == Delivered()
    assert event.event_id == outcome_id("delivered", job, 0)
    assert len(smtp_sink.messages) == 1
    assert (_claims_waited(), _taken_over()) == (waited + 1, taken_over + 1)
    assert sender.deliveries == [1, 2]  # beyond max_deliver, yet not dead-lettered
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.get_msg(DEAD_LETTER_STREAM, subject=dead_letter_subject(SENDER_DURABLE))
