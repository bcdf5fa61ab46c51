"""The SMTPServer over real SMTP (smtplib against aiosmtpd on loopback) and the real bus.

Reports are Postfix-style RFC 3464 DSNs returning the headers of messages built by
``build_envelope``; they are sent to the bounce address those messages carried as MAIL FROM.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import Callable
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from kannon.bus.client import Bus
from kannon.bus.subjects import STATS_STREAM
from kannon.config import Settings, SmtpSettings
from kannon.envelope import DkimSigner, make_batch_id, make_bounce_address
from kannon.ids import new_token
from kannon.model.outcome import Bounced
from kannon.runtime.component import Life
from kannon.smtp_server.component import SmtpServer
from tests.smtp_server.smtp_support import DOMAIN, SECRET, StartSmtp, postfix_dsn, sent_message
from tests.support import read_events, stored_events

T = TypeVar("T")
RECIPIENT = "Reader@Example.org"


async def converse(port: int, script: Callable[[smtplib.SMTP], T]) -> T:
    """Run ``script`` on a fresh smtplib session (in a thread: smtplib blocks)."""

    def run() -> T:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
            return script(client)

    return await asyncio.to_thread(run)


async def send(port: int, rcpts: list[str], body: bytes) -> tuple[int, bytes]:
    """MAIL FROM:<> (as every DSN), the RCPTs, DATA; returns the DATA reply."""

    def script(client: smtplib.SMTP) -> tuple[int, bytes]:
        client.ehlo("mail.example.org")
        assert client.mail("")[0] == 250
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        return client.data(body)

    return await converse(port, script)


async def rcpt_reply(port: int, rcpt: str) -> tuple[int, bytes]:
    def script(client: smtplib.SMTP) -> tuple[int, bytes]:
        client.ehlo("mail.example.org")
        client.mail("")
        return client.rcpt(rcpt)

    return await converse(port, script)


def reports_of_kind(kind: str) -> float:
    return REGISTRY.get_sample_value("kannon_smtp_reports_total", {"kind": kind}) or 0.0


async def test_dsn_marks_the_delivery_bounced(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    assert sent.bounce_address == make_bounce_address(sent.batch_id, RECIPIENT, SECRET.encode())
    code, _ = await send(server.port, [sent.bounce_address], postfix_dsn(sent))
    assert code == 250
    # Published with a PubAck before the 250: the event is already stored.
    assert await stored_events(bus) == 1
    (event,) = await read_events(bus, "kannon.stats.bounced", 1)
    assert (event.batch_id, event.domain, event.recipient) == (
        sent.batch_id,
        DOMAIN,
        RECIPIENT.lower(),
    )
    assert isinstance(event.detail, Bounced)
    assert event.detail.code == 550
    assert event.detail.status == "5.1.1"
    assert event.detail.reason == "userunknown"
    assert event.detail.permanent and event.detail.hard_bounce and event.detail.from_dsn
    assert event.detail.remote_mta == "mx.example.org"
    assert "User unknown in virtual mailbox table" in event.detail.message
    assert event.event_id.startswith("bounced.dsn.")


async def test_a_resent_dsn_counts_once(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    for _ in range(2):
        assert (await send(server.port, [sent.bounce_address], postfix_dsn(sent)))[0] == 250
    assert await stored_events(bus) == 1
    # A different report (new Message-ID) about the same Delivery is a new event.
    other = postfix_dsn(sent, message_id="<another@mx.example.org>")
    assert (await send(server.port, [sent.bounce_address], other))[0] == 250
    assert await stored_events(bus) == 2


def _alter(address: str, index: int) -> str:
    ch = address[index]
    return address[:index] + ("a" if ch != "a" else "b") + address[index + 1 :]


async def test_forged_bounce_addresses_are_refused_at_rcpt(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    local, _, domain = sent.bounce_address.partition("@")
    token_end = local.index(".")
    forged = [
        _alter(sent.bounce_address, token_end - 1),  # Batch token
        _alter(sent.bounce_address, token_end + 3),  # Recipient hash
        _alter(sent.bounce_address, len(local) - 1),  # tag
        f"{local}@other.example.com",  # moved to another Domain
        make_bounce_address(sent.batch_id, RECIPIENT, b"not-our-secret-0123456789"),
        f"{local.rpartition('.')[0]}@{domain}",  # tag removed
    ]
    for address in forged:
        code, text = await rcpt_reply(server.port, address)
        assert (code, text[:5]) == (550, b"5.7.1"), address

    # The whole transaction fails at RCPT: the report is never even read.
    def script(client: smtplib.SMTP) -> None:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("", [forged[2]], postfix_dsn(sent))

    await converse(server.port, script)
    assert await stored_events(bus) == 0


@pytest.mark.parametrize(
    "rcpt",
    [
        "someone@gmail.com",
        "postmaster@bounces.k.example.com",
        f"news@{DOMAIN}",
        f"bump_abc@{DOMAIN}",
        "bump_@example.com",
        "user@[127.0.0.1]",
    ],
)
async def test_not_an_open_relay(start_smtp: StartSmtp, rcpt: str) -> None:
    server = await start_smtp()
    code, text = await rcpt_reply(server.port, rcpt)
    assert (code, text[:5]) == (550, b"5.7.1")


async def test_greeting_names_the_configured_domain(start_smtp: StartSmtp) -> None:
    server = await start_smtp(domain="bounce.example.net")

    def script(client: smtplib.SMTP) -> tuple[int, bytes]:
        return client.ehlo("mail.example.org")

    async def banner() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line

    assert (await banner()).startswith(b"220 bounce.example.net ")
    code, text = await converse(server.port, script)
    assert code == 250 and b"SIZE 65536" in text


async def test_delayed_report_is_not_a_bounce(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    delayed = postfix_dsn(
        sent,
        records=[
            {
                "Final-Recipient": f"rfc822; {sent.recipient}",
                "Action": "delayed",
                "Status": "4.4.1",
                "Remote-MTA": "dns; mx.example.org",
                "Diagnostic-Code": "smtp; 451 4.4.1 Connection timed out",
                "Will-Retry-Until": "Tue, 3 Jun 2025 12:00:00 +0000",
            }
        ],
    )
    before = reports_of_kind("delayed")
    assert (await send(server.port, [sent.bounce_address], delayed))[0] == 250
    assert reports_of_kind("delayed") == before + 1
    assert await stored_events(bus) == 0


async def test_only_the_delivery_the_report_was_sent_for_is_bounced(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp()
    batch_id = make_batch_id(new_token(), DOMAIN)
    ours = sent_message(signer, "ours@example.org", batch_id)
    other = sent_message(signer, "other@example.org", batch_id)
    failed = {"Action": "failed", "Status": "5.2.2", "Diagnostic-Code": "smtp; 552 5.2.2 full"}
    report = postfix_dsn(
        ours,
        records=[
            {"Final-Recipient": f"rfc822; {other.recipient}", **failed},
            {"Final-Recipient": f"rfc822; {ours.recipient}", **failed},
        ],
    )
    assert (await send(server.port, [ours.bounce_address], report))[0] == 250
    (event,) = await read_events(bus, "kannon.stats.bounced", 1)
    assert event.recipient == "ours@example.org"
    assert isinstance(event.detail, Bounced)
    assert (event.detail.status, event.detail.reason) == ("5.2.2", "mailboxfull")
    assert not event.detail.hard_bounce
    assert await stored_events(bus) == 1

    # A report naming only someone else: accepted, logged, no event.
    about_other = postfix_dsn(
        ours, records=[{"Final-Recipient": f"rfc822; {other.recipient}", **failed}]
    )
    assert (await send(server.port, [ours.bounce_address], about_other))[0] == 250
    assert await stored_events(bus) == 1


async def test_expanded_alias_is_found_through_the_returned_headers(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, "alias@example.org")
    report = postfix_dsn(
        sent,
        records=[
            {
                "Final-Recipient": "rfc822; mailbox-17@store.example.org",
                "Action": "failed",
                "Status": "5.1.1",
                "Diagnostic-Code": "x-unix; No such user",
            }
        ],
    )
    assert (await send(server.port, [sent.bounce_address], report))[0] == 250
    (event,) = await read_events(bus, "kannon.stats.bounced", 1)
    assert event.recipient == "alias@example.org"


@pytest.mark.parametrize(
    "body",
    [
        b"not a mail at all\r\n",
        b"\x00\xff\xfe garbage \x80\x81\r\n" * 50,
        b'Content-Type: multipart/report; boundary="x"\r\n\r\n--x\r\n--x\r\nbroken',
        b"Subject: Undelivered Mail Returned to Sender\r\n\r\nno recipient named anywhere\r\n",
    ],
)
async def test_garbage_is_accepted_and_the_server_keeps_serving(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner, body: bytes
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    assert (await send(server.port, [sent.bounce_address], body))[0] == 250
    assert await stored_events(bus) == 0
    assert (await send(server.port, [sent.bounce_address], postfix_dsn(sent)))[0] == 250
    assert await stored_events(bus) == 1


async def test_oversized_message_gets_552(start_smtp: StartSmtp, signer: DkimSigner) -> None:
    server = await start_smtp(max_payload="4kb")
    sent = sent_message(signer, RECIPIENT)
    big = postfix_dsn(sent) + (b"X" * 78 + b"\r\n") * 100  # ~8 KB in ordinary lines

    def declared(client: smtplib.SMTP) -> tuple[int, bytes]:
        client.ehlo("mail.example.org")
        return client.mail("", [f"SIZE={len(big)}"])

    def undeclared(client: smtplib.SMTP) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        client.ehlo("mail.example.org")
        client.mail("")
        client.rcpt(sent.bounce_address)
        too_big = client.data(big)
        # The session survives: the next transaction goes through.
        client.mail("")
        client.rcpt(sent.bounce_address)
        return too_big, client.data(postfix_dsn(sent))

    assert (await converse(server.port, declared))[0] == 552
    too_big, after = await converse(server.port, undeclared)
    assert too_big[0] == 552
    assert after[0] == 250


async def test_too_many_recipients_get_452(start_smtp: StartSmtp, signer: DkimSigner) -> None:
    server = await start_smtp(max_recipients=3)
    batch_id = make_batch_id(new_token(), DOMAIN)
    addresses = [
        sent_message(signer, f"r{i}@example.org", batch_id).bounce_address for i in range(4)
    ]

    def script(client: smtplib.SMTP) -> list[int]:
        client.ehlo("mail.example.org")
        client.mail("")
        return [client.rcpt(a)[0] for a in addresses]

    assert await converse(server.port, script) == [250, 250, 250, 452]


async def test_publish_failure_answers_451_and_the_retry_is_recorded(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    await bus.js.delete_stream(STATS_STREAM)  # JetStream now refuses kannon.stats.* publishes
    code, _ = await send(server.port, [sent.bounce_address], postfix_dsn(sent))
    assert code == 451
    await bus.ensure_streams()
    # The remote MTA retries the same report later: now it is recorded.
    assert (await send(server.port, [sent.bounce_address], postfix_dsn(sent)))[0] == 250
    assert await stored_events(bus) == 1


async def test_idle_session_is_closed_after_the_read_timeout(start_smtp: StartSmtp) -> None:
    server = await start_smtp(read_timeout="200ms")

    def idle() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            received = b""
            while chunk := sock.recv(1024):  # b"" once the server hangs up
                received += chunk
            return received

    greeting = await asyncio.to_thread(idle)
    assert greeting.startswith(b"220 ")


async def test_shutdown_says_421_to_open_sessions(bus: Bus) -> None:
    settings = Settings(secret_key=SECRET, smtp=SmtpSettings(address="127.0.0.1:0"))
    server = SmtpServer(settings, bus)
    life = Life("smtp")
    task = asyncio.create_task(server.run(life))
    await life.wait_ready()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert (await reader.readline()).startswith(b"220 ")
    writer.write(b"EHLO mail.example.org\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    life.stopping.set()
    assert (await reader.readline()).startswith(b"421 4.3.2")
    assert await reader.read() == b""
    await asyncio.wait_for(task, 15)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


def test_a_secret_is_required() -> None:
    from kannon.config import ConfigError

    with pytest.raises(ConfigError, match="secret_key"):
        SmtpServer(Settings(), bus=None)  # type: ignore[arg-type]  # refused before the bus is used
    with pytest.raises(ConfigError, match="secret_key"):
        SmtpServer(Settings(secret_key="short"), bus=None)  # type: ignore[arg-type]  # likewise


async def test_client_that_does_not_read_replies_is_dropped_after_the_write_timeout(
    start_smtp: StartSmtp,
) -> None:
    server = await start_smtp(write_timeout="200ms", read_timeout="30s")

    def flood() -> str:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(20)  # far beyond the write timeout: only a stuck server hits it
            sock.connect(("127.0.0.1", server.port))
            # EHLO: an 8-byte command with a ~90-byte reply fills the server's buffers soonest.
            batch = b"EHLO x\r\n" * 10_000
            try:
                for _ in range(1_000):  # up to 80 MB of commands, never reading a reply
                    sock.sendall(batch)
            except (BrokenPipeError, ConnectionResetError):
                return "dropped"
            except TimeoutError:
                return "stuck"
            return "never blocked"

    assert await asyncio.to_thread(flood) == "dropped"


# Feedback reports (complaints) have their own tests: test_complaints.py.
@pytest.mark.parametrize("kind", ["delivered", "relayed"])
async def test_non_bounce_reports_create_no_event(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner, kind: str
) -> None:
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    record = {
        "Final-Recipient": f"rfc822; {sent.recipient}",
        "Action": kind,
        "Status": "2.0.0",
        "Remote-MTA": "dns; mx.example.org",
        "Diagnostic-Code": "smtp; 250 2.0.0 Ok: queued as 4F2A1C",
    }
    body = postfix_dsn(sent, records=[record])
    counted = "delivered"
    before = reports_of_kind(counted)
    assert (await send(server.port, [sent.bounce_address], body))[0] == 250
    assert reports_of_kind(counted) == before + 1
    assert await stored_events(bus) == 0
