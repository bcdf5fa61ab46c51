"""SMTP PIPELINING in the sender's session (ADR 0053), against the aiosmtpd sink: MAIL, RCPT and
DATA in one write when offered, one by one when not; no RSET after an accepted message, one
(pipelined when possible) after a refused one; refusals and lost connections read as before;
the same bytes on the wire as aiosmtplib sends one by one (ADR 0057)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from kannon.smtp_sender import pipelining
from kannon.smtp_sender.delivery import SmtpDeliverer
from kannon.smtp_sender.mx import MxResolver
from kannon.smtp_sender.result import Kind
from kannon.smtp_sender.sessions import SessionCache
from tests.peers.dns import DnsServer
from tests.peers.fixtures import SinkFactory
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls import TlsIdentity
from tests.smtp_sender.conftest import BODY, HOSTNAME, make_job, mx_for

Deliverers = Callable[[SmtpSink], Awaitable[SmtpDeliverer]]


@pytest.fixture
async def deliverer_for(dns_server: DnsServer) -> AsyncIterator[Deliverers]:
    """An SmtpDeliverer towards a sink (every example.test MX is 127.0.0.1), closed at the end."""
    mx_for(dns_server)
    made: list[SmtpDeliverer] = []

    async def make(sink: SmtpSink) -> SmtpDeliverer:
        deliverer = SmtpDeliverer(
            hostname=HOSTNAME,
            port=sink.port,
            resolver=MxResolver([dns_server.address]),
            sessions=SessionCache(idle_timeout=60, max_idle=4, max_messages=100),
            connect_timeout=5,
            command_timeout=5,
            deadline=30,
        )
        made.append(deliverer)
        return deliverer

    try:
        yield make
    finally:
        for deliverer in made:
            await deliverer.close()


def groups(sink: SmtpSink) -> list[bytes]:
    """The reads that carried a MAIL command."""
    return [data for _, data in sink.reads if b"MAIL FROM:" in data]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
async def test_mail_rcpt_and_data_go_out_in_one_write_and_the_session_is_reused_without_rset(
    tls: bool,
    smtp_sink_factory: SinkFactory,
    tls_identity: TlsIdentity,
    deliverer_for: Deliverers,
) -> None:
    sink = await smtp_sink_factory(tls=tls_identity if tls else None)
    deliverer = await deliverer_for(sink)
    results = [await deliverer.deliver(make_job(f"r{i}@example.test")) for i in range(3)]
    assert [r.kind for r in results] == [Kind.DELIVERED] * 3
    assert all(r.tls is tls for r in results)
    messages = await sink.wait_for_messages(3)
    # The message arrives whole, its leading dot unstuffed again.
    assert [m.data for m in messages] == [BODY] * 3
    # One session carried all three (with TLS it is the second connection: the test
    # certificate does not verify, so the first handshake is redone unverified).
    assert len({m.connection for m in messages}) == 1
    assert sink.connections == (2 if tls else 1)
    assert all(m.tls is tls for m in messages)
    if not tls:  # under TLS the sink's reads are ciphertext
        sent = groups(sink)
        assert len(sent) == 3
        assert all(g.startswith(b"MAIL FROM:<") for g in sent)
        assert all(g.endswith(b">\r\nDATA\r\n") and b"\r\nRCPT TO:<r" in g for g in sent)
    assert sink.stats.resets == 0


async def test_a_refused_recipient_is_read_from_the_pipelined_replies_and_the_next_mail_resets(
    smtp_sink: SmtpSink, deliverer_for: Deliverers
) -> None:
    deliverer = await deliverer_for(smtp_sink)
    refused = await deliverer.deliver(make_job("bounce.a@example.test"))
    # The 550 to RCPT decides, not the 503 the sink gives the DATA that followed it.
    assert (refused.kind, refused.code, refused.command) == (Kind.REFUSED, 550, "RCPT")
    assert "User unknown" in refused.message and not refused.possibly_delivered
    policy = await deliverer.deliver(make_job("policy.b@example.test"))
    assert (policy.kind, policy.code, policy.command) == (Kind.REFUSED, 554, "RCPT")
    delivered = await deliverer.deliver(make_job("c@example.test"))
    assert delivered.kind is Kind.DELIVERED
    [message] = await smtp_sink.wait_for_messages(1)
    assert message.rcpt_tos == ("c@example.test",) and message.connection == 1
    assert smtp_sink.connections == 1
    # Each transaction after a refused one starts with an RSET in the same write.
    assert [g.startswith(b"RSET\r\nMAIL FROM:") for g in groups(smtp_sink)] == [
        False,
        True,
        True,
    ]
    assert smtp_sink.stats.resets == 2


async def test_without_pipelining_commands_go_one_by_one_and_rset_only_after_a_refusal(
    smtp_sink_factory: SinkFactory, deliverer_for: Deliverers
) -> None:
    sink = await smtp_sink_factory(pipelining=False)
    deliverer = await deliverer_for(sink)
    jobs = ["a@example.test", "b@example.test", "bounce.c@example.test", "d@example.test"]
    results = [await deliverer.deliver(make_job(r)) for r in jobs]
    delivered, refused = Kind.DELIVERED, Kind.REFUSED
    assert [r.kind for r in results] == [delivered, delivered, refused, delivered]
    assert results[2].command == "RCPT"
    assert [m.rcpt_tos for m in await sink.wait_for_messages(3)] == [
        ("a@example.test",),
        ("b@example.test",),
        ("d@example.test",),
    ]
    assert sink.connections == 1
    sent = groups(sink)
    assert len(sent) == 4 and not any(b"RCPT" in g for g in sent)
    assert sink.stats.resets == 1


async def test_a_connection_dropped_within_the_pipelined_group_is_no_answer(
    smtp_sink: SmtpSink, deliverer_for: Deliverers
) -> None:
    deliverer = await deliverer_for(smtp_sink)
    result = await deliverer.deliver(make_job("never.a@example.test"))
    assert result.kind is Kind.NO_ANSWER and not result.possibly_delivered
    assert "connection lost" in result.message.lower()
    after = await deliverer.deliver(make_job("b@example.test"))
    assert after.kind is Kind.DELIVERED
    assert smtp_sink.connections == 2


async def test_a_reused_session_the_server_dropped_is_replaced_without_losing_the_message(
    smtp_sink: SmtpSink, deliverer_for: Deliverers
) -> None:
    deliverer = await deliverer_for(smtp_sink)
    assert (await deliverer.deliver(make_job("a@example.test"))).kind is Kind.DELIVERED
    # The server hangs up the idle session; with no RSET to probe it, the pipelined MAIL
    # finds out, before anything of the message was sent.
    for protocol in smtp_sink._protocols:
        assert protocol.transport is not None
        protocol.transport.close()
    second = await deliverer.deliver(make_job("b@example.test"))
    assert second.kind is Kind.DELIVERED
    messages = await smtp_sink.wait_for_messages(2)
    assert [m.connection for m in messages] == [1, 2]


# A body as the builder never makes it: bare LF, bare CR, no line end at the end, and lines that
# start with a dot (one of them the lone dot that would end the message).
MESSY_BODY = b".leading dot\nbare LF\rbare CR\r\n..two dots\r\n.\r\nno line end at the end"
MESSY_ON_THE_WIRE = (
    b"..leading dot\r\nbare LF\r\nbare CR\r\n...two dots\r\n..\r\nno line end at the end\r\n.\r\n"
)
# A body as the builder makes it (CRLF lines; one starts with a dot): the shortcut's case.
CLEAN_ON_THE_WIRE = BODY.replace(b"\r\n.a line", b"\r\n..a line") + b".\r\n"


def data_on_the_wire(sink: SmtpSink, connection: int) -> list[bytes]:
    """What followed each DATA command on `connection`, up to the end-of-message dot."""
    stream = b"".join(data for number, data in sink.reads if number == connection)
    return [part[: part.index(b"\r\n.\r\n") + 5] for part in stream.split(b"DATA\r\n")[1:]]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
@pytest.mark.parametrize(
    ("body", "wire"),
    [(BODY, CLEAN_ON_THE_WIRE), (MESSY_BODY, MESSY_ON_THE_WIRE)],
    ids=["crlf-body", "bare-cr-lf-and-dots"],
)
async def test_the_message_bytes_are_the_same_pipelined_or_not_line_ends_made_crlf_and_dots_stuffed(
    pipelining: bool,
    body: bytes,
    wire: bytes,
    smtp_sink_factory: SinkFactory,
    deliverer_for: Deliverers,
) -> None:
    sink = await smtp_sink_factory(pipelining=pipelining)
    deliverer = await deliverer_for(sink)
    result = await deliverer.deliver(make_job("a@example.test", body=body))
    assert result.kind is Kind.DELIVERED
    [message] = await sink.wait_for_messages(1)
    assert data_on_the_wire(sink, message.connection) == [wire]
    # What the server stores: CRLF line ends, the stuffed dots taken off again.
    assert message.data == wire[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.").removeprefix(b".")


def test_data_bytes_are_what_aiosmtplib_sends_for_any_line_ends_and_dots() -> None:
    rng = random.Random(57)
    pieces = [b"a", b"b", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"..", b"\n."]
    bodies = [b"", b".", b"\r\n", b".\r\n", BODY, MESSY_BODY]
    bodies += [b"".join(rng.choices(pieces, k=rng.randint(1, 12))) for _ in range(20_000)]
    for body in bodies:
        expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(body)) + b".\r\n"
        assert pipelining.data_bytes(body) == expected, body


def _quote_or_refuse(quote: Callable[[str], str], address: str) -> str:
    try:
        return quote(address)
    except ValueError:
        return "refused"


def test_addresses_are_quoted_as_aiosmtplib_quotes_them() -> None:
    rng = random.Random(57)
    atext = "aZ09!#$%&'*+/=?^_`{|}~-."
    domain = "aZ09-."
    addresses = ["", "a@b", "bump_x@tenant.test", "a.b@c.d", ".a@b", "a.@b", "a..b@c", "a@b."]
    addresses += ['"quoted local"@b', "A <a@b>", "a@b c", "a@[127.0.0.1]", "ü@b", "a@b\r\nX"]
    for _ in range(20_000):
        local = "".join(rng.choices(atext, k=rng.randint(1, 6)))
        addresses.append(f"{local}@{''.join(rng.choices(domain, k=rng.randint(1, 6)))}")
    for address in addresses:
        assert _quote_or_refuse(pipelining.quoted, address) == _quote_or_refuse(
            quote_address, address
        ), address


async def test_replies_that_do_not_come_within_the_command_timeout_end_the_session(
    smtp_sink: SmtpSink, dns_server: DnsServer
) -> None:
    mx_for(dns_server)
    deliverer = SmtpDeliverer(
        hostname=HOSTNAME,
        port=smtp_sink.port,
        resolver=MxResolver([dns_server.address]),
        sessions=SessionCache(idle_timeout=60, max_idle=4, max_messages=100),
        connect_timeout=5,
        command_timeout=0.3,
        deadline=30,
    )
    try:
        # The sink sits on the reply to RCPT: the pipelined group's timer runs out.
        result = await deliverer.deliver(make_job("hold.a@example.test"))
        assert result.kind is Kind.NO_ANSWER and not result.possibly_delivered
        assert "timed out" in result.message.lower()
        smtp_sink.release_held()
        # Replies still on their way would be read as the next message's: a new session.
        assert (await deliverer.deliver(make_job("b@example.test"))).kind is Kind.DELIVERED
        [message] = await smtp_sink.wait_for_messages(1)
        assert message.connection == 2
    finally:
        smtp_sink.release_held()
        await deliverer.close()
