"""SMTP sessions against clients that misbehave: too many of them, too slow, hanging up, sending
messages in odd pieces; and what the logs say about them.

The server is real (aiosmtpd on loopback, the real bus); clients are raw sockets where the test
needs bytes smtplib would not send.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kannon.envelope import DkimSigner
from kannon.runtime.logs import _KeyValueFormatter
from kannon.smtp_server.component import ACCEPTED, SmtpServer
from tests.smtp_server.smtp_support import Sent, StartSmtp, postfix_dsn, sent_message
from tests.support import wait_for

RECIPIENT = "reader@example.org"


class Client:
    """A raw SMTP client over asyncio streams: writes exactly what it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self, timeout: float = 15) -> bytes:
        """One whole reply (every line of a multi-line one); b"" when the server closed."""
        lines = b""
        async with asyncio.timeout(timeout):
            while line := await self.reader.readline():
                lines += line
                if line[3:4] != b"-":
                    break
        return lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: bytes) -> bytes:
        await self.send(line + b"\r\n")
        return await self.reply()

    async def start_data(self, rcpt: str) -> None:
        """EHLO, MAIL FROM:<>, RCPT, DATA: ready for the message."""
        assert (await self.reply()).startswith(b"220 ")
        assert (await self.command(b"EHLO mx.far.example")).startswith(b"250")
        assert (await self.command(b"MAIL FROM:<>")).startswith(b"250 ")
        assert (await self.command(f"RCPT TO:<{rcpt}>".encode())).startswith(b"250 ")
        assert (await self.command(b"DATA")).startswith(b"354 ")

    async def closed(self, timeout: float = 15) -> bool:
        """Whether the server closes the connection within ``timeout`` (reading what is left)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(4096):
                    pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[int], Awaitable[Client]]]:
    opened: list[Client] = []

    async def connect(port: int) -> Client:
        client = await Client.connect(port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


Connect = Callable[[int], Awaitable[Client]]
# in_data(**SmtpSettings values) -> a client in DATA for a valid report, the contents the server
# took, and the message the report is about.
InData = Callable[..., Awaitable[tuple[Client, list[bytes], Sent]]]


@pytest.fixture
def in_data(start_smtp: StartSmtp, clients: Connect, signer: DkimSigner) -> InData:
    async def open_data(**smtp: Any) -> tuple[Client, list[bytes], Sent]:
        server = await start_smtp(**smtp)
        contents = capture_contents(server)
        sent = sent_message(signer, RECIPIENT)
        client = await clients(server.port)
        await client.start_data(sent.bounce_address)
        return client, contents, sent

    return open_data


def capture_contents(server: SmtpServer) -> list[bytes]:
    """The bytes each accepted message reached the report handler with (a seam: the parser and
    the bus are not what these tests are about)."""
    contents: list[bytes] = []

    async def process(session: object, envelope: object) -> str:
        contents.append(getattr(envelope, "original_content", b""))
        return ACCEPTED

    server.handler._process = process  # type: ignore[method-assign]  # the seam these tests watch
    return contents


# --- session count --------------------------------------------------------------------------


async def test_sessions_over_the_limit_get_421(start_smtp: StartSmtp, clients: Connect) -> None:
    server = await start_smtp(max_sessions=2)
    first, second = await clients(server.port), await clients(server.port)
    assert (await first.reply()).startswith(b"220 ")
    assert (await second.reply()).startswith(b"220 ")

    third = await clients(server.port)
    assert (await third.reply()).startswith(b"421 4.7.0")
    assert await third.closed()
    # The open sessions are unaffected, and a place that frees up is taken again.
    assert (await first.command(b"NOOP")).startswith(b"250")
    assert (await first.command(b"QUIT")).startswith(b"221")
    assert await first.closed()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:  # the server notices the closed session a moment after the client does
        fourth = await clients(server.port)
        greeting = await fourth.reply()
        if greeting.startswith(b"220 ") or loop.time() > deadline:
            break
    assert greeting.startswith(b"220 ")


async def test_a_burst_of_connections_is_held_to_the_limit(
    start_smtp: StartSmtp, clients: Connect
) -> None:
    server = await start_smtp(max_sessions=3)
    burst = await asyncio.gather(*(clients(server.port) for _ in range(10)))
    greetings = [(await c.reply())[:3] for c in burst]
    assert greetings.count(b"220") == 3
    assert greetings.count(b"421") == 7


# --- session time ---------------------------------------------------------------------------


async def test_slow_drip_data_is_closed_by_the_session_time_limit(
    start_smtp: StartSmtp, clients: Connect, signer: DkimSigner
) -> None:
    # The idle timeout alone never fires: a byte arrives every 0.2 s.
    server = await start_smtp(max_session_time="1500ms", read_timeout="2s")
    sent = sent_message(signer, RECIPIENT)
    client = await clients(server.port)
    started = time.monotonic()
    await client.start_data(sent.bounce_address)
    reply = b""
    for byte in postfix_dsn(sent):
        if time.monotonic() - started > 15:
            break  # without a session time limit this would drip on for minutes
        try:
            await client.send(bytes([byte]))
        except ConnectionError:
            break
        try:
            reply = await asyncio.wait_for(client.reader.readline(), 0.2)
        except TimeoutError:
            continue
        break
    elapsed = time.monotonic() - started
    assert reply.startswith(b"421 4.4.2"), reply
    assert await client.closed()
    assert 1.4 < elapsed < 10


async def test_a_report_being_processed_is_answered_before_the_time_limit_closes(
    start_smtp: StartSmtp, clients: Connect, signer: DkimSigner
) -> None:
    server = await start_smtp(max_session_time="500ms", read_timeout="10s")
    release = asyncio.Event()
    processing = asyncio.Event()

    async def slow_process(session: object, envelope: object) -> str:
        processing.set()
        await release.wait()
        return ACCEPTED

    server.handler._process = slow_process  # type: ignore[method-assign]  # a slow stand-in
    sent = sent_message(signer, RECIPIENT)
    client = await clients(server.port)
    await client.start_data(sent.bounce_address)
    await client.send(postfix_dsn(sent) + b"\r\n.\r\n")
    await asyncio.wait_for(processing.wait(), 15)
    # Let the limit pass while the report is in the handler's hands, then finish it.
    session = next(iter(server.sessions))
    await wait_for(lambda: session._expired, what="the session to expire", timeout=15)
    release.set()
    assert (await client.reply()).startswith(b"250 ")
    assert (await client.reply()).startswith(b"421 4.4.2")
    assert await client.closed()


# --- DATA read in blocks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "content"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"x\r\n..\r\n...y\r\n.z\r\n.\r\n", b"x\r\n.\r\n..y\r\nz\r\n"),
        (b"line\r\n.\r\r\n.\n.\r\n.\r\n", b"line\r\n\r\r\n\n.\r\n"),
        (b"\r\n\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),
    ],
    ids=["empty", "one blank line", "one line", "dot line", "stuffed", "lookalikes", "blanks"],
)
async def test_message_content_and_dot_stuffing(
    in_data: InData, message: bytes, content: bytes
) -> None:
    client, contents, _ = await in_data()
    await client.send(message)
    assert (await client.reply()).startswith(b"250 ")
    assert contents == [content]


async def test_message_sent_one_byte_at_a_time(
    in_data: InData,
) -> None:
    body = b"first\r\n..dot\r\n\r\n..\r\nlast\r\n"
    client, contents, _ = await in_data()
    client.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in body + b".\r\n":
        await client.send(bytes([byte]))
    assert (await client.reply()).startswith(b"250 ")
    assert contents == [b"first\r\n.dot\r\n\r\n.\r\nlast\r\n"]


async def test_commands_pipelined_after_the_end_of_data_are_answered(in_data: InData) -> None:
    client, contents, sent = await in_data()
    rcpt = f"RCPT TO:<{sent.bounce_address}>\r\n".encode()
    await client.send(b"one\r\n.\r\nMAIL FROM:<>\r\n" + rcpt + b"DATA\r\n")
    assert (await client.reply()).startswith(b"250 ")  # the message
    assert (await client.reply()).startswith(b"250 ")  # MAIL
    assert (await client.reply()).startswith(b"250 ")  # RCPT
    assert (await client.reply()).startswith(b"354 ")
    await client.send(b"two\r\n.\r\nQUIT\r\n")
    assert (await client.reply()).startswith(b"250 ")
    assert (await client.reply()).startswith(b"221 ")
    assert contents == [b"one\r\n", b"two\r\n"]


async def test_a_line_over_the_limit_gets_500_and_the_session_goes_on(in_data: InData) -> None:
    client, contents, sent = await in_data()
    await client.send(b"ok\r\n" + b"x" * 1000 + b"\r\n.\r\n")
    assert (await client.reply()).startswith(b"500 ")
    assert (await client.command(b"MAIL FROM:<>")).startswith(b"250 ")
    assert (await client.command(f"RCPT TO:<{sent.bounce_address}>".encode())).startswith(b"250")
    assert (await client.command(b"DATA")).startswith(b"354 ")
    await client.send(b"x" * 998 + b"\r\n.\r\n")  # the longest line RFC 5321 allows
    assert (await client.reply()).startswith(b"250 ")
    assert contents == [b"x" * 998 + b"\r\n"]


async def test_a_megabyte_of_empty_lines_is_read_quickly(in_data: InData) -> None:
    client, contents, _ = await in_data(max_payload="2mb")
    await client.send(b"\r\n" * 500_000 + b".\r\n")
    started = time.monotonic()
    assert (await client.reply()).startswith(b"250 ")
    # aiosmtpd's line-by-line loop took 1.3 s of event-loop time for this.
    assert time.monotonic() - started < 0.5
    assert contents == [b"\r\n" * 500_000]


# --- hang-ups and errors in the logs ----------------------------------------------------------


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


async def test_clients_hanging_up_produce_no_error(
    start_smtp: StartSmtp, signer: DkimSigner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)

    async def after_quit() -> None:
        client = await Client.connect(server.port)
        await client.reply()
        await client.command(b"EHLO mx.far.example")
        await client.send(b"QUIT\r\n")
        client.close()

    async def after_greeting() -> None:
        client = await Client.connect(server.port)
        await client.reply()
        client.close()

    async def mid_transaction() -> None:
        client = await Client.connect(server.port)
        await client.reply()
        await client.send(b"EHLO mx.far.example\r\nMAIL FROM:<>\r\n")
        client.close()

    async def mid_message() -> None:
        client = await Client.connect(server.port)
        await client.start_data(sent.bounce_address)
        await client.send(postfix_dsn(sent)[:500])
        client.close()

    async def before_the_reply() -> None:
        client = await Client.connect(server.port)
        await client.start_data(sent.bounce_address)
        await client.send(postfix_dsn(sent) + b"\r\n.\r\n")
        client.close()

    async def reset() -> None:
        client = await Client.connect(server.port)
        await client.reply()
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.writer.transport.abort()

    for hang_up in (after_quit, after_greeting, mid_transaction, mid_message, before_the_reply):
        for _ in range(5):
            await hang_up()
    await reset()
    # Wait until the server has seen every one of them go.
    await wait_for(
        lambda: not server.sessions and not server.handler.busy,
        what="every session closed",
        timeout=15,
    )
    assert _errors(caplog) == []
    # And the server still serves.
    client = await Client.connect(server.port)
    await client.start_data(sent.bounce_address)
    await client.send(postfix_dsn(sent) + b"\r\n.\r\n")
    assert (await client.reply()).startswith(b"250 ")
    client.close()


async def test_a_real_error_in_a_session_is_logged_with_its_traceback(
    start_smtp: StartSmtp, clients: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_smtp()

    async def broken_rcpt(*args: object) -> str:
        raise RuntimeError("the RCPT hook broke")

    server.handler.handle_RCPT = broken_rcpt  # type: ignore[method-assign,assignment]  # a failing stand-in
    client = await clients(server.port)
    assert (await client.reply()).startswith(b"220 ")
    await client.command(b"EHLO mx.far.example")
    await client.command(b"MAIL FROM:<>")
    reply = await client.command(b"RCPT TO:<someone@example.org>")
    assert reply.startswith(b"451 "), reply
    assert b"broke" not in reply  # the client learns nothing about our internals
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "the RCPT hook broke" in _KeyValueFormatter().format(errors[0])
    assert (await client.command(b"NOOP")).startswith(b"250")  # the session goes on


# --- what the logs show of other people's addresses -------------------------------------------


async def test_third_party_addresses_are_masked_in_the_logs(
    start_smtp: StartSmtp, clients: Connect, signer: DkimSigner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_smtp()
    sent = sent_message(signer, RECIPIENT)
    stranger = "stranger.person@far.example"
    # Two failed strangers: with one, the server would look for our recipient among every
    # address in the message, and find it in the returned headers.
    records = [
        {
            "Final-Recipient": f"rfc822; {name}",
            "Action": "failed",
            "Status": "5.1.1",
            "Diagnostic-Code": f"smtp; 550 5.1.1 <{name}>: User unknown",
        }
        for name in (stranger, "other@far.example")
    ]
    client = await clients(server.port)
    assert (await client.reply()).startswith(b"220 ")
    await client.command(b"EHLO mx.far.example")
    assert (await client.command(b"MAIL FROM:<postmaster@far.example>")).startswith(b"250")
    assert (await client.command(f"RCPT TO:<{sent.bounce_address}>".encode())).startswith(b"250")
    assert (await client.command(b"DATA")).startswith(b"354")
    await client.send(postfix_dsn(sent, records=records) + b"\r\n.\r\n")
    assert (await client.reply()).startswith(b"250 ")

    formatter = _KeyValueFormatter()
    # What a process logs: aiosmtpd's own info lines (which echo every command) are switched
    # off by setup_logging.
    shown = [r for r in caplog.records if r.name.startswith("kannon") or r.levelno >= 30]
    lines = [formatter.format(r) for r in shown]
    ignored = [line for line in lines if "report item ignored" in line]
    assert len(ignored) == 1
    assert "s**************@far.example" in ignored[0]
    assert "p*********@far.example" in ignored[0]  # the MAIL FROM
    assert not [line for line in lines if stranger in line or "postmaster@" in line]
