"""A real SMTP server on loopback (aiosmtpd) that records what it receives and answers by a
recipient grammar, so a test decides the remote's verdict through the address it sends to.

Recipient grammar (on the local part, case-insensitive):

==================  ===========================================================================
``bounce.*``        ``550 5.1.1`` at RCPT, every time
``policy.*``        ``554 5.7.1`` at RCPT (a blocklist refusal: a bounce, never a hard one)
``transient.xN.*``  ``451 4.7.1`` at RCPT for the first N attempts to that address, then 250
``never.*``         the connection is dropped at RCPT (no reply at all), every time
``hold.*``          RCPT waits until ``release_held()`` is called, then 250 (in-flight sends)
anything else       250
==================  ===========================================================================

Options: STARTTLS with a certificate from :mod:`tests.peers.tls`, AUTH (PLAIN/LOGIN) against a
user table, SMTPUTF8, PIPELINING (offered by default, as by every common MTA; aiosmtpd reads
pipelined commands one after the other), ``max_connections`` (a connection beyond it is greeted
with ``421`` and closed, as big providers do). Setting ``busy`` makes every new connection get
``421`` until it is cleared. ``stats.peak_connections`` is the most connections ever open at
once. Counts connections, RSETs and QUITs so tests can see connection reuse; ``reads`` keeps
the start of every read, so a test sees which commands arrived together.
Per TOOLING.md the server is made with ``loop.create_server`` on port 0 (aiosmtpd's Controller
cannot pick a free port).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.peers.tls import TlsIdentity

_TRANSIENT = re.compile(r"transient\.x(\d+)\.", re.IGNORECASE)
# push() sees this instead of a reply: close the connection without a word.
_DROP = "__drop_connection__"
# How much of each read `SmtpSink.reads` keeps: enough for a pipelined group of commands.
READ_KEPT = 512


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    """The message exactly as received after DATA (dot-unstuffed, CRLF line endings)."""
    peer: Any
    helo: str
    tls: bool
    auth_user: str | None
    connection: int
    """1-based number of the connection that carried it (same number = same session)."""
    mail_options: tuple[str, ...]


@dataclass
class _Stats:
    connections: int = 0
    resets: int = 0
    quits: int = 0
    rcpt_attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    peak_connections: int = 0
    refused_connections: int = 0
    """Greeted with 421 because ``max_connections`` were open already."""
    busy_refusals: int = 0
    """Greeted with 421 because the sink was ``busy``."""


class _Protocol(SMTP):
    """aiosmtpd's SMTP with a way to hang up without replying, and its connection number."""

    def __init__(self, handler: _Handler, number: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.number = number

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.sink._live.discard(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        # What arrived in one read: commands a client pipelined come in the same one.
        self.event_handler.sink.reads.append((self.number, bytes(data[:READ_KEPT])))
        super().data_received(data)

    async def push(self, status: Any) -> None:
        if status == _DROP:
            if self.transport is not None:
                self.transport.close()
            return
        await super().push(status)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: _Protocol,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self,
        server: _Protocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        sink = self.sink
        sink.stats.rcpt_attempts[address.lower()] += 1
        local = address.rpartition("@")[0].lower()
        if local.startswith("bounce."):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("policy."):
            return (
                "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using "
                "zen.spamhaus.org"
            )
        transient = _TRANSIENT.match(local)
        if transient and sink.stats.rcpt_attempts[address.lower()] <= int(transient.group(1)):
            return f"451 4.7.1 <{address}>: Recipient address rejected: try again later"
        if local.startswith("never."):
            return _DROP
        if local.startswith("hold."):
            sink.held.set()
            await sink._release.wait()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: _Protocol, session: Session, envelope: Envelope) -> str:
        auth = session.auth_data
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            peer=session.peer,
            helo=session.host_name or "",
            tls=session.ssl is not None,
            auth_user=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            connection=server.number,
            mail_options=tuple(envelope.mail_options),
        )
        await self.sink._record(message)
        return f"250 2.0.0 Ok: queued as {len(self.sink.messages)}"

    async def handle_RSET(self, server: _Protocol, session: Session, envelope: Envelope) -> str:
        self.sink.stats.resets += 1
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: _Protocol, session: Session, envelope: Envelope) -> str:
        self.sink.stats.quits += 1
        return "221 2.0.0 Bye"


class SmtpSink:
    """Start with ``await sink.start()``; ``sink.port`` is then the port it listens on.

    ``port=0`` (default) lets the OS pick; a fixed port lets two sinks on different loopback
    addresses (127.0.0.1, 127.0.0.2, ...) share one, as MX hosts share port 25.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hostname: str = "sink.kannon.test",
        tls: TlsIdentity | None = None,
        users: Mapping[str, str] | None = None,
        auth_require_tls: bool = True,
        smtputf8: bool = True,
        max_connections: int | None = None,
        pipelining: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.tls = tls
        self.users = dict(users) if users is not None else None
        self.auth_require_tls = auth_require_tls
        self.smtputf8 = smtputf8
        self.max_connections = max_connections
        self.pipelining = pipelining
        self.busy = False
        """While True every new connection is greeted with 421 and closed."""
        self.messages: list[ReceivedMessage] = []
        self.reads: list[tuple[int, bytes]] = []
        """(connection number, first bytes) of every read from a client, in order."""
        self.stats = _Stats()
        self.held = asyncio.Event()
        """Set when a ``hold.*`` RCPT is waiting."""
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._protocols: list[_Protocol] = []
        self._live: set[_Protocol] = set()
        self._arrived = asyncio.Condition()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> SmtpSink:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> SmtpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what tests look at ----------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self.stats.connections

    @property
    def open_connections(self) -> int:
        return sum(1 for p in self._protocols if p.transport is not None)

    def messages_to(self, recipient: str) -> list[ReceivedMessage]:
        wanted = recipient.lower()
        return [m for m in self.messages if wanted in (r.lower() for r in m.rcpt_tos)]

    def attempts(self, recipient: str) -> int:
        """RCPT commands seen for `recipient`, accepted or not."""
        return self.stats.rcpt_attempts[recipient.lower()]

    async def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Return once at least `count` messages arrived (fails after `timeout` seconds)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.messages) >= count)
        return list(self.messages)

    def release_held(self) -> None:
        """Let every waiting (and future) ``hold.*`` RCPT through."""
        self._release.set()

    # -- internals -------------------------------------------------------------------------

    def _new_protocol(self) -> asyncio.Protocol:
        if self.busy:
            self.stats.busy_refusals += 1
            return _Refuse(b"421 4.3.2 Service busy, try again later")
        if self.max_connections is not None and len(self._live) >= self.max_connections:
            self.stats.refused_connections += 1
            return _Refuse(b"421 4.7.0 Too many concurrent connections from your IP")
        self.stats.connections += 1
        kwargs: dict[str, Any] = {
            "hostname": self.hostname,
            "enable_SMTPUTF8": self.smtputf8,
            "auth_require_tls": self.auth_require_tls,
        }
        if self.tls is not None:
            kwargs["tls_context"] = self.tls.server_context()
        if self.users is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
        with warnings.catch_warnings():
            # Plaintext AUTH is what a test of a "tls: none" relay asks for.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            protocol = _Protocol(_Handler(self), self.stats.connections, **kwargs)
        self._protocols.append(protocol)
        self._live.add(protocol)
        self.stats.peak_connections = max(self.stats.peak_connections, len(self._live))
        return protocol

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword) or self.users is None:
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        if self.users.get(user) == password:
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    async def _record(self, message: ReceivedMessage) -> None:
        async with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()


class _Refuse(asyncio.Protocol):
    """Greets with one 421 line and hangs up, before any SMTP session starts."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports do not subclass asyncio's (ADR 0054).
        stream = cast(asyncio.WriteTransport, transport)
        stream.write(self.reply + b"\r\n")
        stream.close()
