"""POSTing to webhook endpoints with aiohttp, and the address rules at connection time.

Every host name is resolved by :class:`SafeResolver`, which refuses the whole name when any of
its addresses is loopback, private, link-local (cloud metadata), shared or otherwise non-public
(unless `webhooks.allow_private`): aiohttp connects only to the addresses the resolver returned,
so a name that changes its answer between the API's check and the POST (DNS rebinding) is still
caught. IP literals skip resolvers; :func:`kannon.model.webhooks.check_url` refuses those before
each POST. Redirects are not followed (a 3xx is a failed attempt): a redirect could point inside.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from kannon.model.errors import InvalidArgument
from kannon.model.webhooks import check_url, is_forbidden_address

MAX_RESPONSE_BYTES = 1024


class RefusedAddress(OSError):
    """The endpoint's host resolves to an address webhooks may not call."""


class SafeResolver(AbstractResolver):
    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for result in results:
                address = ipaddress.ip_address(result["host"].split("%", 1)[0])
                if is_forbidden_address(address):
                    raise RefusedAddress(
                        f"{host} resolves to {address}, a non-public address "
                        "(webhooks.allow_private is off)"
                    )
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: bytes


class WebhookClient:
    """One connection pool for every endpoint; at most `per_host` connections to one host."""

    def __init__(self, *, allow_http: bool, allow_private: bool, per_host: int) -> None:
        self.allow_http = allow_http
        self.allow_private = allow_private
        self._per_host = per_host
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=self._per_host,
                resolver=SafeResolver(allow_private=self.allow_private),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Kannon's own headers only: no cookies kept between endpoints.
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
                headers={"user-agent": "Kannon-Webhooks/1"},
            )
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Answer:
        """POST `body`; the answer's status and first bytes. Raises RefusedAddress, aiohttp's
        ClientError or TimeoutError when no answer came."""
        try:
            check_url(url, allow_http=self.allow_http, allow_private=self.allow_private)
        except InvalidArgument as exc:
            raise RefusedAddress(str(exc)) from None
        session = self._open()
        try:
            async with asyncio.timeout(timeout):
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as res:
                    content = await res.content.read(MAX_RESPONSE_BYTES)
                    return Answer(res.status, content)
        except aiohttp.ClientConnectorError as exc:
            # aiohttp wraps the resolver's refusal; report it as what it is.
            if isinstance(exc.os_error, RefusedAddress):
                raise exc.os_error from None
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def describe(exc: BaseException) -> str:
    """A short reason for an attempt that got no answer."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
