"""The sender delivering Envelopes from the real bus to the recipient's MX found in real DNS,
and the outcome events it publishes for each way a remote server can answer."""

from __future__ import annotations

from kannon.bus.client import Bus
from kannon.model.outcome import Bounced, Delivered, Errored
from kannon.smtp_sender.component import SmtpSender
from tests.peers.dns import DnsServer
from tests.peers.fixtures import SinkFactory
from tests.peers.smtp_sink import SmtpSink
from tests.smtp_sender.conftest import (
    BATCH_ID,
    BODY,
    HOSTNAME,
    TENANT,
    Outcomes,
    SendOne,
    guard_key,
    make_job,
    make_settings,
    mx_for,
    outcome_id,
    publish,
)
from tests.support import running


async def test_delivers_to_the_mx_from_dns(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    job = make_job("alice@example.test")
    async with running(SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus)):
        await publish(bus, job, attempt=0)
        [event] = await outcomes.wait(1)

    assert event.detail == Delivered()
    assert event.event_id == outcome_id("delivered", job, 0)
    assert (event.batch_id, event.domain, event.recipient) == (
        BATCH_ID,
        TENANT,
        "alice@example.test",
    )
    [message] = smtp_sink.messages
    assert message.mail_from == job.return_path
    assert message.rcpt_tos == ("alice@example.test",)
    assert message.data == BODY  # byte for byte, the leading-dot line unstuffed again
    assert message.helo == HOSTNAME
    assert not message.tls


async def test_domain_without_mx_gets_mail_on_its_address_record(
    send_one: SendOne, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    dns_server.add_host("nomx.test", "127.0.0.1").start()
    assert not dns_server.resolver().resolve("nomx.test", "MX", raise_on_no_answer=False).rrset
    event = await send_one(make_settings(dns=dns_server, port=smtp_sink.port), "bob@nomx.test")
    assert event.detail == Delivered()
    assert [m.rcpt_tos for m in smtp_sink.messages] == [("bob@nomx.test",)]


async def test_null_mx_bounces_550_without_connecting(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    dns_server.add_null_mx("nomail.test").add_host("nomail.test", "127.0.0.1").start()
    async with running(SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus)):
        job = make_job("carol@nomail.test")
        await publish(bus, job, attempt=3)
        [event] = await outcomes.wait(1)
    assert isinstance(event.detail, Bounced)
    assert (event.detail.permanent, event.detail.code) == (True, 550)
    assert "null MX" in event.detail.message
    assert event.event_id == outcome_id("bounced", job, 3)
    assert smtp_sink.connections == 0


async def test_mx_hosts_are_tried_by_preference_and_a_dead_one_is_skipped(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink_factory: SinkFactory
) -> None:
    backup = await smtp_sink_factory(host="127.0.0.1")
    preferred = await smtp_sink_factory(host="127.0.0.2", port=backup.port)
    dns_server.add_mx("example.test", "backup.example.test", 20)
    dns_server.add_mx("example.test", "primary.example.test", 10)
    dns_server.add_host("backup.example.test", "127.0.0.1")
    dns_server.add_host("primary.example.test", "127.0.0.2")
    dns_server.start()
    async with running(SmtpSender(make_settings(dns=dns_server, port=backup.port), bus)):
        await publish(bus, make_job("first@example.test"))
        await outcomes.wait(1)
        await preferred.stop()  # the preferred MX goes away: connection refused
        await publish(bus, make_job("second@example.test"))
        events = await outcomes.wait(2)
    assert [e.detail for e in events] == [Delivered(), Delivered()]
    assert [m.rcpt_tos for m in preferred.messages] == [("first@example.test",)]
    assert [m.rcpt_tos for m in backup.messages] == [("second@example.test",)]


async def test_5xx_at_rcpt_is_a_permanent_bounce_with_the_reply(
    send_one: SendOne, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    event = await send_one(
        make_settings(dns=dns_server, port=smtp_sink.port), "bounce.dave@example.test"
    )
    assert isinstance(event.detail, Bounced)
    assert (event.detail.permanent, event.detail.code) == (True, 550)
    assert "5.1.1" in event.detail.message
    assert smtp_sink.messages == []


async def test_4xx_twice_then_delivered_on_the_third_envelope(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    recipient = "transient.x2.erin@example.test"
    job = make_job(recipient)
    async with running(SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus)):
        for attempt in range(3):
            # The Dispatcher would re-publish after a backoff; the test does it at once.
            await publish(bus, job, attempt=attempt)
            await outcomes.wait(attempt + 1)
    first, second, third = outcomes.items
    assert first.detail == second.detail
    assert isinstance(first.detail, Errored)
    assert first.detail.code == 451
    assert "4.7.1" in first.detail.message
    assert third.detail == Delivered()
    assert [e.event_id for e in outcomes.items] == [
        outcome_id("error", job, 0),
        outcome_id("error", job, 1),
        outcome_id("delivered", job, 2),
    ]
    assert smtp_sink.attempts(recipient) == 3
    assert len(smtp_sink.messages_to(recipient)) == 1


async def test_4xx_on_the_last_allowed_attempt_is_a_non_permanent_bounce(
    send_one: SendOne, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    event = await send_one(
        make_settings(dns=dns_server, port=smtp_sink.port),
        "transient.x5.frank@example.test",
        should_retry=False,
    )
    assert isinstance(event.detail, Bounced)
    assert (event.detail.permanent, event.detail.code) == (False, 451)
    assert "4.7.1" in event.detail.message


async def test_a_server_that_never_answers_is_errored_with_code_0_and_the_claim_released(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server)
    job = make_job("never.gina@example.test", should_retry=False)
    async with running(SmtpSender(make_settings(dns=dns_server, port=smtp_sink.port), bus)):
        seq = await publish(bus, job, attempt=0)
        [event] = await outcomes.wait(1)
    # No answer is never a bounce, not even on the last attempt: the Dispatcher decides Failed.
    assert isinstance(event.detail, Errored)
    assert event.detail.code == 0
    assert "connection lost" in event.detail.message
    assert smtp_sink.attempts("never.gina@example.test") == 1
    # Nothing can have reached the server, so a redelivery of this Envelope may send again.
    guard = await bus.sent_guard()
    assert await guard.claim(guard_key(job, seq)) is None


async def test_refused_connection_and_dns_failure_are_errored_with_code_0(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink_factory: SinkFactory
) -> None:
    closed = await smtp_sink_factory()
    port = closed.port
    await closed.stop()
    mx_for(dns_server)
    async with running(SmtpSender(make_settings(dns=dns_server, port=port), bus)):
        await publish(bus, make_job("henry@example.test"))
        # Outside every zone the DNS server serves: it answers REFUSED.
        await publish(bus, make_job("ida@elsewhere.invalid"))
        events = await outcomes.wait(2)
    by_recipient = {e.recipient: e.detail for e in events}
    refused = by_recipient["henry@example.test"]
    unresolvable = by_recipient["ida@elsewhere.invalid"]
    assert isinstance(refused, Errored) and refused.code == 0
    assert "mx.example.test" in refused.message
    assert isinstance(unresolvable, Errored) and unresolvable.code == 0
    assert "elsewhere.invalid" in unresolvable.message


async def test_one_connection_carries_consecutive_messages_to_the_same_mx(
    bus: Bus, outcomes: Outcomes, dns_server: DnsServer, smtp_sink: SmtpSink
) -> None:
    mx_for(dns_server, "example.test", "other.test")
    settings = make_settings(dns=dns_server, port=smtp_sink.port, max_jobs=1)
    async with running(SmtpSender(settings, bus)):
        await publish(bus, make_job("one@example.test"))
        await publish(bus, make_job("bounce.two@example.test"))
        await publish(bus, make_job("three@other.test"))  # another domain, same MX host
        events = await outcomes.wait(3)
    assert [type(e.detail) for e in events] == [Delivered, Bounced, Delivered]
    assert smtp_sink.connections == 1
    assert {m.connection for m in smtp_sink.messages} == {1}
    # ADR 0053: no RSET after an accepted message; after the refused one, RSET goes out in
    # the same write as the next MAIL, RCPT and DATA.
    assert smtp_sink.stats.resets == 1
    groups = [data for _, data in smtp_sink.reads if b"MAIL FROM" in data]
    assert len(groups) == 3
    assert all(g.endswith(b"\r\nDATA\r\n") and b"\r\nRCPT TO:" in g for g in groups)
    assert [g.startswith(b"RSET\r\nMAIL FROM:") for g in groups] == [False, False, True]
    assert smtp_sink.stats.quits == 1  # the graceful stop closed the idle session
    assert smtp_sink.open_connections == 0


async def test_non_ascii_recipient_uses_smtputf8_and_an_idn_domain_goes_out_as_a_label(
    send_one: SendOne,
    dns_server: DnsServer,
    smtp_sink_factory: SinkFactory,
) -> None:
    utf8 = await smtp_sink_factory()
    mx_for(dns_server, "xn--bcher-kva.test")
    event = await send_one(make_settings(dns=dns_server, port=utf8.port), "jürgen@bücher.test")
    assert event.detail == Delivered()
    [message] = utf8.messages
    assert message.rcpt_tos == ("jürgen@xn--bcher-kva.test",)
    assert "SMTPUTF8" in message.mail_options


async def test_non_ascii_recipient_bounces_when_the_server_lacks_smtputf8(
    send_one: SendOne,
    dns_server: DnsServer,
    smtp_sink_factory: SinkFactory,
) -> None:
    plain = await smtp_sink_factory(smtputf8=False)
    mx_for(dns_server)
    event = await send_one(make_settings(dns=dns_server, port=plain.port), "jürgen@example.test")
    assert isinstance(event.detail, Bounced)
    assert (event.detail.permanent, event.detail.code) == (True, 553)
    assert plain.messages == []
