"""The webhooks' HTTP client (ADR 0052) against real servers on loopback: aiohttp's server for
ordinary answers, a scripted asyncio peer for the answers aiohttp never gives (chunked by hand,
close-delimited, garbage, silence, a dropped keep-alive connection), and a TLS server signed by
a throw-away CA."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from kannon.webhooks.client import (
    MAX_RESPONSE_BYTES,
    BadAnswer,
    RefusedAddress,
    WebhookClient,
)
from tests.peers.tls import make_identity
from tests.support import wait_for

HEADERS = {"content-type": "application/json", "webhook-id": "msg_1"}


def client(
    *, allow_private: bool = True, allow_http: bool = True, per_host: int = 8
) -> WebhookClient:
    return WebhookClient(allow_http=allow_http, allow_private=allow_private, per_host=per_host)


@contextlib.asynccontextmanager
async def open_client(
    *, allow_private: bool = True, allow_http: bool = True, per_host: int = 8
) -> AsyncIterator[WebhookClient]:
    """`client(...)` for the block, closed after it however it ends."""
    hooks = client(allow_private=allow_private, allow_http=allow_http, per_host=per_host)
    try:
        yield hooks
    finally:
        await hooks.close()


@dataclass
class Seen:
    """What an aiohttp endpoint received: (headers, body, the client's port) per request."""

    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def aiohttp_endpoint(
    answer: bytes = b"ok", status: int = 201
) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen.requests.append((headers, body, peer[1] if peer else 0))
        return web.Response(status=status, body=answer)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", seen
    finally:
        await runner.cleanup()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Peer:
    port: int
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    heads: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def scripted_peer(
    script: Script, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Peer]:
    """A TCP server on loopback running `script` on every connection."""
    peer = Peer(0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.connections += 1
        peer.open_now += 1
        peer.most_open = max(peer.most_open, peer.open_now)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            peer.open_now -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


async def read_request(reader: asyncio.StreamReader, peer: Peer) -> bytes | None:
    """One request's body (its head goes to `peer.heads`); None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    peer.heads.append(head)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_a_post_carries_its_body_and_headers_and_the_connection_is_kept() -> None:
    async with aiohttp_endpoint() as (url, seen), open_client() as hooks:
        first = await hooks.post(url, HEADERS, b'{"a":1}', 5)
        second = await hooks.post(url, HEADERS, b'{"b":2}', 5)
    assert (first.status_code, first.body) == (201, b"ok")
    assert second.status_code == 201
    (headers, body, port), (_, body2, port2) = seen.requests
    assert (body, body2) == (b'{"a":1}', b'{"b":2}')
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "msg_1"
    assert headers["content-length"] == "7"
    assert headers["user-agent"] == "Kannon-Webhooks/1"
    assert headers["host"] == url.split("/")[2]
    assert port == port2, "the second POST should reuse the kept-alive connection"


async def test_only_the_first_bytes_of_a_long_answer_are_kept_and_its_connection_is_dropped() -> (
    None
):
    long_answer = aiohttp_endpoint(answer=b"x" * 100_000, status=500)
    async with long_answer as (url, seen), open_client() as hooks:
        answer = await hooks.post(url, HEADERS, b"{}", 5)
        await hooks.post(url, HEADERS, b"{}", 5)
    assert answer.status_code == 500
    assert answer.body == b"x" * MAX_RESPONSE_BYTES
    assert seen.requests[0][2] != seen.requests[1][2], "a connection mid-answer is not reused"


async def test_chunked_and_close_delimited_answers_are_read() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, peer)
        writer.write(
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await read_request(reader, peer)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    async with scripted_peer(script) as peer, open_client() as hooks:
        chunked = await hooks.post(f"http://127.0.0.1:{peer.port}/", HEADERS, b"{}", 5)
        closing = await hooks.post(f"http://127.0.0.1:{peer.port}/", HEADERS, b"{}", 5)
    assert (chunked.status_code, chunked.body) == (202, b"hello world")
    assert (closing.status_code, closing.body) == (200, b"until the end")
    assert peer.connections == 1


async def test_an_interim_answer_is_skipped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, peer)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_request(reader, peer)

    async with scripted_peer(script) as peer, open_client() as hooks:
        answer = await hooks.post(f"http://127.0.0.1:{peer.port}/", HEADERS, b"{}", 5)
    assert (answer.status_code, answer.body) == (200, b"ok")


async def test_a_kept_connection_the_endpoint_dropped_is_replaced_by_a_new_one() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request of each connection, then drops the connection when the
        # next request comes: what a client sees when an idle timeout races its POST.
        await read_request(reader, peer)
        writer.write(NO_CONTENT)
        await writer.drain()
        await read_request(reader, peer)

    async with scripted_peer(script) as peer, open_client() as hooks:
        url = f"http://127.0.0.1:{peer.port}/hook"
        first = await hooks.post(url, HEADERS, b"{}", 5)
        second = await hooks.post(url, HEADERS, b"{}", 5)
    assert (first.status_code, second.status_code) == (204, 204)
    assert peer.connections == 2
    assert len(peer.heads) == 3, "the second POST went once on the dropped connection, once anew"


async def test_an_endpoint_that_does_not_answer_in_time_is_a_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, peer)
        await reader.read()  # silent until the client gives up

    async with scripted_peer(script) as peer:
        async with open_client() as hooks:
            began = time.monotonic()
            with pytest.raises(TimeoutError):
                await hooks.post(f"http://127.0.0.1:{peer.port}/", HEADERS, b"{}", 0.3)
        assert time.monotonic() - began < 3
        await wait_for(
            lambda: peer.open_now == 0, what="the timed-out connection to close", timeout=10
        )


@pytest.mark.parametrize(
    "answer", [b"hello\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", b""]
)
async def test_garbage_a_cut_answer_or_none_is_a_failed_attempt(answer: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, peer)
        writer.write(answer)
        await writer.drain()

    async with scripted_peer(script) as peer, open_client() as hooks:
        with pytest.raises(BadAnswer):
            await hooks.post(f"http://127.0.0.1:{peer.port}/", HEADERS, b"{}", 5)


async def test_the_request_target_is_encoded() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, peer)
        writer.write(NO_CONTENT)
        await writer.drain()

    async with scripted_peer(script) as peer, open_client() as hooks:
        url = f"http://127.0.0.1:{peer.port}/a b/ü?x=1&y=ä#frag"
        await hooks.post(url, HEADERS, b"{}", 5)
        with pytest.raises(ValueError, match="line break"):
            await hooks.post(url, {"x-evil": "a\r\nHost: other"}, b"{}", 5)
    assert peer.heads[0].startswith(b"POST /a%20b/%C3%BC?x=1&y=%C3%A4 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{peer.port}\r\n".encode() in peer.heads[0]


async def test_non_public_addresses_and_plain_http_are_refused_before_connecting() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, peer)
        writer.write(NO_CONTENT)

    async with scripted_peer(script) as peer:
        strict = client(allow_private=False)
        no_http = client(allow_private=True, allow_http=False)
        try:
            for url in (
                f"http://127.0.0.1:{peer.port}/",  # a literal: refused by the URL rules
                f"http://localhost:{peer.port}/",  # a name: refused once resolved
                f"http://[::ffff:127.0.0.1]:{peer.port}/",
                "http://169.254.169.254/latest/meta-data/",
            ):
                with pytest.raises(RefusedAddress):
                    await strict.post(url, HEADERS, b"{}", 5)
            with pytest.raises(RefusedAddress, match="https"):
                await no_http.post(f"http://127.0.0.1:{peer.port}/", HEADERS, b"{}", 5)
        finally:
            await strict.close()
            await no_http.close()
    assert peer.connections == 0


async def test_at_most_per_host_connections_are_in_use() -> None:
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader, peer) is not None:
            await release.wait()
            writer.write(NO_CONTENT)
            await writer.drain()

    async with scripted_peer(script) as peer, open_client(per_host=2) as hooks:
        url = f"http://127.0.0.1:{peer.port}/"
        posts = [asyncio.create_task(hooks.post(url, HEADERS, b"{}", 10)) for _ in range(6)]
        await wait_for(lambda: len(peer.heads) == 2, what="two requests in flight", timeout=10)
        release.set()
        answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [204] * 6
    assert peer.most_open == 2


async def test_https_is_verified_against_the_host_name(tmp_path: Path) -> None:
    identity = make_identity(tmp_path, ("localhost",))

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader, peer) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
            await writer.drain()

    async with scripted_peer(script, identity.server_context()) as peer:
        trusting = WebhookClient(
            allow_http=False,
            allow_private=True,
            per_host=2,
            ssl_context=identity.client_context(),
        )
        default = WebhookClient(allow_http=False, allow_private=True, per_host=2)
        try:
            answer = await trusting.post(f"https://localhost:{peer.port}/", HEADERS, b"{}", 5)
            with pytest.raises(ssl.SSLCertVerificationError):
                # The right certificate for another name.
                await trusting.post(f"https://127.0.0.1:{peer.port}/", HEADERS, b"{}", 5)
            with pytest.raises(ssl.SSLCertVerificationError):
                # A CA nobody trusts.
                await default.post(f"https://localhost:{peer.port}/", HEADERS, b"{}", 5)
        finally:
            await trusting.close()
            await default.close()
    assert (answer.status_code, answer.body) == (200, b"secure")


async def test_the_time_limit_covers_waiting_for_a_connection_too() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, peer)
        await reader.read()  # never answers

    async with scripted_peer(script) as peer:
        async with open_client(per_host=1) as hooks:
            began = time.monotonic()
            url = f"http://127.0.0.1:{peer.port}/"
            # The second waits for the first's connection slot, within its own time limit.
            results = await asyncio.gather(
                hooks.post(url, HEADERS, b"{}", 0.3),
                hooks.post(url, HEADERS, b"{}", 0.3),
                return_exceptions=True,
            )
        took = time.monotonic() - began
    assert [type(r) for r in results] == [TimeoutError, TimeoutError]
    assert took < 2, f"both gave up after {took:.1f} s"
    assert peer.connections == 1
