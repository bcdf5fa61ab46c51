"""One SMTP transaction with PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write (ADR 0053).

When the server offers PIPELINING, the sender writes MAIL FROM, RCPT TO and DATA together
(preceded by RSET when the session's previous transaction did not end with the message
accepted), reads their replies together, then sends the message and reads its final reply: two
round trips and two socket writes per message instead of four or five. A session whose last
message was accepted needs no RSET: the server has closed that transaction and a new MAIL
starts the next (RFC 5321 §4.1.1.2).

aiosmtplib reads one reply per command it writes and drops bytes that arrive while no command
is waiting, so replies that come back together would be lost. For the exchange a small reader
(`_Replies`) stands in front of aiosmtplib's protocol on the same transport
(`transport.set_protocol`, the public asyncio API, also on TLS and uvloop transports) and is
taken away again afterwards; connection events it sees are passed on, so the client still knows
when its connection is gone.

Failures come back as the exceptions aiosmtplib itself raises for the same replies
(`SMTPSenderRefused`, `SMTPRecipientRefused`, `SMTPDataError`, `SMTPServerDisconnected`, a
timeout), so the caller reads a pipelined and a one-by-one transaction alike.

The bytes written are the ones aiosmtplib would write (ADR 0057): addresses quoted as its
`quote_address` quotes them, the message with its line endings made CRLF and its dot-stuffing as
its `data()` does. Both take shortcuts for what nearly every Envelope is — a plain
`local@domain` address, a body whose lines the builder already ended with CRLF — that give the
same bytes without `email.utils.parseaddr` and without a regular expression rewriting the body.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import cast

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    normalize_message_line_endings,
)

OK = 250
WILL_FORWARD = 251
START_INPUT = 354
UNAVAILABLE = 421

# A `local@domain` of dot-atoms (RFC 5322 atext) in ASCII: `email.utils.parseaddr`, which
# aiosmtplib's `quote_address` runs, gives such an address back unchanged, and it holds nothing
# `quote_address` refuses (whitespace, angle brackets, quotes, control characters).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def offered(client: aiosmtplib.SMTP) -> bool:
    """Whether the server's EHLO answer offers PIPELINING."""
    return client.supports_extension("pipelining")


async def transact(
    client: aiosmtplib.SMTP,
    *,
    sender: str,
    recipient: str,
    body: bytes,
    options: Sequence[str] = (),
    encoding: str = "ascii",
    reset: bool = False,
    before_message: Callable[[], None] | None = None,
) -> aiosmtplib.SMTPResponse:
    """Send one message to one recipient on an open session that offers PIPELINING.

    `reset` puts an RSET in front (the previous transaction was left unfinished).
    `before_message` is called right before the message itself is written: from then on a lost
    connection may mean the message was accepted. Returns the reply to the message; raises as
    the module docstring says. The client is closed whenever its state is unknown (timeout,
    lost connection, 421), as aiosmtplib does.
    """
    timeout = client.timeout
    commands = [b"RSET"] if reset else []
    commands += [
        _command(b"MAIL", b"FROM:" + quoted(sender).encode(encoding), options),
        _command(b"RCPT", b"TO:" + quoted(recipient).encode(encoding), ()),
        b"DATA",
    ]
    replies = await _exchange(client, b"".join(c + b"\r\n" for c in commands), len(commands))
    if reset and replies:
        rset = replies.pop(0)
        if rset.code != OK:
            client.close()
            raise aiosmtplib.SMTPServerDisconnected(
                f"RSET refused ({rset.code} {rset.message}): session not reusable"
            )
    refusal = _refusal(replies, sender, recipient)
    complete = len(replies) == 3
    if any(r.code == UNAVAILABLE for r in replies) or not complete:
        client.close()
    if refusal is not None:
        if complete and replies[2].code == START_INPUT and client.is_connected:
            # RFC 2920 §3.1: DATA accepted although the transaction failed before it; end
            # the empty message at once so that nothing is delivered.
            await _exchange(client, b".\r\n", 1, timeout=timeout)
        raise refusal
    if not complete:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    if before_message is not None:
        before_message()
    final = await _exchange(client, data_bytes(body), 1, timeout=timeout)
    if not final:
        client.close()
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    reply = final[0]
    if reply.code == UNAVAILABLE:
        client.close()
    if reply.code != OK:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply


def quoted(address: str) -> str:
    """`address` as MAIL FROM and RCPT TO carry it: what aiosmtplib's `quote_address` returns
    (and its ValueError for an address that cannot go on a command line)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def data_bytes(body: bytes) -> bytes:
    """What DATA transmits of `body`, up to and including the final `.`: every bare CR or LF made
    CRLF, a CRLF added at the end if missing, each line that starts with `.` given another
    (RFC 5321 §4.5.2) — what aiosmtplib's `data()` sends for the same message."""
    crlf = body.count(b"\r\n")
    if not (crlf == body.count(b"\r") == body.count(b"\n") and body.endswith(b"\r\n")):
        # A bare CR or LF, or no line end at the end: aiosmtplib's own rewrite.
        body = normalize_message_line_endings(body)
    # Every line now ends with CRLF, so a line starts at the beginning or right after an LF.
    if b"\n." in body:
        body = body.replace(b"\n.", b"\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"


def _command(verb: bytes, argument: bytes, options: Sequence[str]) -> bytes:
    args = [argument, *(o.encode("ascii") for o in options)]
    for arg in args:
        # The check aiosmtplib makes for every command: no CR/LF smuggled in an address.
        if COMMAND_INJECTION_REGEX.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join([verb, *args])


def _refusal(
    replies: Sequence[aiosmtplib.SMTPResponse], sender: str, recipient: str
) -> aiosmtplib.SMTPResponseException | None:
    """The first refusal among the replies to MAIL, RCPT, DATA (in that order), if any."""
    count = len(replies)
    if count > 0 and replies[0].code != OK:
        return aiosmtplib.SMTPSenderRefused(replies[0].code, replies[0].message, sender)
    if count > 1 and replies[1].code not in (OK, WILL_FORWARD):
        return aiosmtplib.SMTPRecipientRefused(replies[1].code, replies[1].message, recipient)
    if count > 2 and replies[2].code != START_INPUT:
        return aiosmtplib.SMTPDataError(replies[2].code, replies[2].message)
    return None


async def _exchange(
    client: aiosmtplib.SMTP, data: bytes, expected: int, *, timeout: float | None = None
) -> list[aiosmtplib.SMTPResponse]:
    """Write `data` and read up to `expected` replies; fewer when the connection is lost."""
    protocol = client.protocol
    if protocol is None or protocol.transport is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    # What aiosmtplib writes to as well (uvloop's transports do not subclass asyncio's).
    transport = cast(asyncio.WriteTransport, protocol.transport)
    if transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[aiosmtplib.SMTPResponse]] = loop.create_future()
    reader = _Replies(protocol, expected, done)
    transport.set_protocol(reader)
    # A plain timer that fails the future (ADR 0057): `asyncio.timeout` would cost a context
    # manager, a cancellation of the task and its undoing for each of the two exchanges.
    seconds = client.timeout if timeout is None else timeout
    timer = None if seconds is None else loop.call_later(seconds, reader.time_out)
    try:
        transport.write(data)
        return await done
    except TimeoutError as exc:
        # Replies still on their way would be paired with the wrong commands: never reuse.
        client.close()
        raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
    except aiosmtplib.SMTPResponseException:
        client.close()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        if transport.get_protocol() is reader:
            transport.set_protocol(protocol)


class _Replies(asyncio.Protocol):
    """Reads `expected` SMTP replies that may arrive in any number of pieces, for `_exchange`.

    Connection events go on to the client's own protocol (`app`): aiosmtplib learns of a lost
    connection, and its flow control keeps working.
    """

    def __init__(
        self,
        app: asyncio.BaseProtocol,
        expected: int,
        done: asyncio.Future[list[aiosmtplib.SMTPResponse]],
    ) -> None:
        self._app = app
        self._expected = expected
        self._done = done
        self._buffer = bytearray()
        self._replies: list[aiosmtplib.SMTPResponse] = []

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        self._buffer.extend(data)
        try:
            while len(self._replies) < self._expected:
                reply = self._parse()
                if reply is None:
                    break
                self._replies.append(reply)
        except aiosmtplib.SMTPResponseException as exc:
            self._done.set_exception(exc)
            return
        if len(self._replies) == self._expected:
            self._done.set_result(self._replies)
        elif len(self._buffer) > MAX_RESPONSE_LENGTH:
            self._done.set_exception(aiosmtplib.SMTPResponseException(-1, "Response too long"))

    def eof_received(self) -> bool:
        self._finish()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    def time_out(self) -> None:
        """No complete answer within the command timeout (`_exchange`'s timer)."""
        if not self._done.done():
            self._done.set_exception(TimeoutError())

    def _finish(self) -> None:
        # The replies that did arrive still count: a 421 or 5xx before the hang-up is the
        # server's verdict.
        if not self._done.done():
            self._done.set_result(self._replies)

    def _parse(self) -> aiosmtplib.SMTPResponse | None:
        """One complete (possibly multi-line) reply off the buffer, or None if not there yet."""
        lines: list[bytes] = []
        offset = 0
        code = 0
        while True:
            end = self._buffer.find(b"\n", offset)
            if end == -1:
                return None
            line = bytes(self._buffer[offset : end + 1])
            if len(line) > MAX_LINE_LENGTH:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                raise aiosmtplib.SMTPResponseException(
                    -1, f"Malformed SMTP response line: {line.decode('utf-8', 'replace')}"
                ) from None
            offset = end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                text = b"\n".join(lines).decode("utf-8", "surrogateescape")
                return aiosmtplib.SMTPResponse(code, text)
