"""POSTing to webhook endpoints: a small HTTP/1.1 keep-alive client on httptools, and the
address rules at connection time (ADR 0032, ADR 0052).

Every host name is resolved here, and the whole name is refused when any of its addresses is
loopback, private, link-local (cloud metadata), shared or otherwise non-public (unless
`webhooks.allow_private`); the connection then goes to the very addresses that were checked, so
a name that changes its answer between the API's check and the POST (DNS rebinding) is still
caught. IP literals are refused by :func:`kannon.model.webhooks.check_url` before each POST.
Redirects are not followed (a 3xx is a failed attempt): a redirect could point inside.

Why not aiohttp's client: it spent more CPU per POST than the rest of an event's handling
together (ADR 0052). This client does only what a webhook needs: one POST with a body and a
handful of headers, the status and the answer's first bytes, connections kept alive per
(scheme, host, port) and at most `per_host` of them in use at once, one time limit for the whole
attempt (waiting for a connection, connecting, TLS, sending, the answer).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from kannon.model.errors import InvalidArgument
from kannon.model.webhooks import check_url, is_forbidden_address

MAX_RESPONSE_BYTES = 1024
"""The first bytes of an answer kept for the attempt log."""
MAX_DRAIN_BYTES = 64 * 1024
"""An answer body longer than this is not read to its end: the connection is closed instead."""
IDLE_TIMEOUT = 15.0
"""Seconds an idle connection is kept for the next POST to its host."""
REAP_INTERVAL = 0.05
"""How often answers past their deadline are given up: a time limit is kept to this much."""
USER_AGENT = "Kannon-Webhooks/1"


class RefusedAddress(OSError):
    """The endpoint's URL or host resolves to an address webhooks may not call."""


class BadAnswer(ConnectionError):
    """The endpoint answered something that is not HTTP/1.x, or closed without answering."""


class _NoAnswer(BadAnswer):
    """The connection ended before the first byte of an answer."""


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: bytes


@dataclass(frozen=True)
class _Target:
    """What a URL means to the client, parsed once per URL."""

    tls: bool
    host: str
    """ASCII (IDNA) host name or IP literal, without brackets."""
    port: int
    head: bytes
    """The request line and the Host and User-Agent headers."""

    @property
    def key(self) -> tuple[bool, str, int]:
        return (self.tls, self.host, self.port)


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@functools.lru_cache(maxsize=1024)
def _refusal(url: str, allow_http: bool, allow_private: bool) -> str | None:
    """Why `url` may not be called (the URL rules, checked before every POST), or None. Cached:
    the rules are a pure function of the URL, and an endpoint's URL repeats with every event."""
    try:
        check_url(url, allow_http=allow_http, allow_private=allow_private)
    except InvalidArgument as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> _Target:
    parts = urlsplit(url.strip())
    tls = parts.scheme.lower() == "https"
    hostname = parts.hostname or ""
    try:
        ipaddress.ip_address(hostname)
        host = hostname
    except ValueError:
        host = hostname.encode("idna").decode("ascii")
    port = parts.port or (443 if tls else 80)
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header = f"{host_header}:{parts.port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
    return _Target(tls, host, port, head.encode("ascii"))


def _request(target: _Target, headers: dict[str, str], body: bytes) -> bytes:
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # Each header ends its own line, and no header may start another (header injection).
    if text.count("\n") != len(headers) or text.count("\r") != len(headers) or "\0" in text:
        raise ValueError("a header holds a line break")
    return b"".join(
        (target.head, text.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body), body)
    )


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the parser of the answers that come back on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.deadline = 0.0
        """Loop time by which the answer must have come (see `WebhookClient._reap`)."""
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._received = 0
        self._status = 0
        self._headers_done = False
        self._delimited = False
        self._body = bytearray()
        self._body_length = 0
        self._keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport: uvloop's do not subclass asyncio.Transport, so no
        # isinstance check (ADR 0054).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"not an HTTP answer: {exc}"))
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the endpoint switched protocols"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._delimited:
            # An answer delimited by the end of the connection (no length, not chunked).
            waiter.set_result(Answer(self._status, bytes(self._body)))
        elif self._received == 0:
            waiter.set_exception(_NoAnswer("the connection closed before an answer"))
        else:
            waiter.set_exception(BadAnswer("the connection closed in the middle of the answer"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._status = 0
        self._headers_done = False
        self._delimited = False
        self._body.clear()
        self._body_length = 0

    def on_header(self, name: bytes, _: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._delimited = True  # its end is known: the connection's end is not it

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._status < 200:
            return
        room = MAX_RESPONSE_BYTES - len(self._body)
        if room > 0:
            self._body += body[:room]
        self._body_length += len(body)
        if self._body_length > MAX_DRAIN_BYTES:
            self._finish(keep_alive=False)

    def on_message_complete(self) -> None:
        if self._status < 200:
            return  # an interim answer (100 Continue): the real one follows
        self._finish(keep_alive=self._parser.should_keep_alive())

    # use

    def _finish(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # unasked-for bytes: the connection is not reused (see `reusable`)
        self._keep_alive = keep_alive
        waiter.set_result(Answer(self._status, bytes(self._body)))
        if not keep_alive:
            self.close()

    def time_out(self) -> None:
        self._fail(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    async def exchange(self, request: bytes) -> Answer:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._received = 0
        self._keep_alive = False
        # The last answer's state must not stand for this one (a close before any byte).
        self.on_message_begin()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    @property
    def reusable(self) -> bool:
        """The last answer was complete and the endpoint keeps the connection open."""
        return (
            self._keep_alive
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


@dataclass
class _Host:
    """The connections of one (scheme, host, port): the idle ones and a limit on those in use."""

    slots: asyncio.Semaphore
    idle: list[_Connection] = field(default_factory=list)
    users: int = 0

    def take_idle(self, now: float) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT:
                return conn
            conn.close()
        return None

    def sweep(self, now: float) -> None:
        keep = [c for c in self.idle if not c.closed and now - c.idle_since < IDLE_TIMEOUT]
        for conn in self.idle:
            if conn not in keep:
                conn.close()
        self.idle = keep


class WebhookClient:
    """Keep-alive connections for every endpoint; at most `per_host` in use to one host."""

    def __init__(
        self,
        *,
        allow_http: bool,
        allow_private: bool,
        per_host: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_http = allow_http
        self.allow_private = allow_private
        self._per_host = per_host
        self._ssl = ssl_context
        self._hosts: dict[tuple[bool, str, int], _Host] = {}
        self._next_sweep = 0.0
        self._waiting: set[_Connection] = set()
        """Connections waiting for an answer, each with its deadline."""
        self._reaper: asyncio.TimerHandle | None = None

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Answer:
        """POST `body`; the answer's status and first bytes. Raises RefusedAddress, OSError
        (BadAnswer included) or TimeoutError when no answer came within `timeout` seconds."""
        refusal = _refusal(url, self.allow_http, self.allow_private)
        if refusal is not None:
            raise RefusedAddress(refusal)
        target = _target(url)
        request = _request(target, headers, body)
        host = self._hosts.get(target.key)
        if host is None:
            host = self._hosts[target.key] = _Host(asyncio.Semaphore(self._per_host))
        host.users += 1
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            # The time limit covers the whole attempt. The common path (a free slot, a kept
            # connection) needs no timer of its own: the reaper gives up late answers (an
            # asyncio.timeout per POST cost a twelfth of the worker's CPU, ADR 0052).
            if host.slots.locked():
                async with asyncio.timeout_at(deadline):
                    await host.slots.acquire()
            else:
                await host.slots.acquire()
            try:
                return await self._post(host, target, request, deadline)
            finally:
                host.slots.release()
        finally:
            host.users -= 1
            self._tidy(target.key, host)

    async def _post(self, host: _Host, target: _Target, request: bytes, deadline: float) -> Answer:
        conn = host.take_idle(time.monotonic())
        if conn is not None:
            try:
                return await self._exchange(host, conn, request, deadline)
            except _NoAnswer:
                pass  # the endpoint had closed the idle connection: once more on a new one
        async with asyncio.timeout_at(deadline):
            conn = await self._connect(target)
        return await self._exchange(host, conn, request, deadline)

    async def _exchange(
        self, host: _Host, conn: _Connection, request: bytes, deadline: float
    ) -> Answer:
        conn.deadline = deadline
        self._waiting.add(conn)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(REAP_INTERVAL, self._reap)
        try:
            answer = await conn.exchange(request)
        except BaseException:
            conn.close()
            raise
        finally:
            self._waiting.discard(conn)
        if conn.reusable:
            conn.idle_since = time.monotonic()
            host.idle.append(conn)
        else:
            conn.close()
        return answer

    def _reap(self) -> None:
        """Give up the answers past their deadline; again in a moment while any is awaited."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in [c for c in self._waiting if c.deadline <= now]:
            conn.time_out()
        self._reaper = loop.call_later(REAP_INTERVAL, self._reap) if self._waiting else None

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        if not self.allow_private:
            for *_, sockaddr in infos:
                address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
                if is_forbidden_address(address):
                    raise RefusedAddress(
                        f"{target.host} resolves to {address}, a non-public address "
                        "(webhooks.allow_private is off)"
                    )
        if not infos:
            raise OSError(f"{target.host} has no address")
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, sockaddr)
                _, conn = await loop.create_connection(
                    _Connection,
                    sock=sock,
                    ssl=self._tls() if target.tls else None,
                    server_hostname=target.host if target.tls else None,
                )
                return conn
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        assert error is not None
        raise error

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _tidy(self, key: tuple[bool, str, int], host: _Host) -> None:
        """Forget hosts nobody uses; close connections idle for too long (now and then)."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + IDLE_TIMEOUT
            for other in self._hosts.values():
                other.sweep(now)
            for other_key, other in list(self._hosts.items()):
                if other.users == 0 and not other.idle:
                    del self._hosts[other_key]
        elif host.users == 0 and not host.idle and self._hosts.get(key) is host:
            del self._hosts[key]

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for host in self._hosts.values():
            for conn in host.idle:
                conn.close()
            host.idle.clear()
        self._hosts.clear()
        await asyncio.sleep(0)  # let the transports finish closing


def describe(exc: BaseException) -> str:
    """A short reason for an attempt that got no answer."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
