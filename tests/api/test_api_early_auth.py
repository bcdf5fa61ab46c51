"""Calls without valid credentials are refused from their metadata, before the request body is
received (no buffering or parsing of up to api.max_message_size per hostile call), and
api.max_concurrent_rpcs bounds the calls in flight.

A request-streaming call on a unary method lets the test hold the body back: the server can
answer it only if it decides without the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc

from kannon.pb.admin.apiv1 import hz_pb2
from tests.api.api_test_support import admin_md, basic_md, make_settings, running_api, tenant

SEND_HTML = "/pkg.kannon.mailer.apiv1.Mailer/SendHTML"
SEND_HTML_README = "/kannon.mailer.apiv1.MailerApiV1Service/SendHTML"
GET_DOMAINS = "/pkg.kannon.admin.apiv1.Api/GetDomains"
STATS = "/kannon.stats.apiv2.StatsApiV2/GetAggregatedStats"
DOMAIN = "early.example"


async def _body_never_sent() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()  # the client never sends the request message
    yield b""  # pragma: no cover


def _held_body_call(channel: grpc.aio.Channel, method: str, md: Any, timeout: float) -> Any:
    call = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
    return call(_body_never_sent(), metadata=md, timeout=timeout)


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    raise AssertionError("the call succeeded")


async def test_bad_credentials_are_refused_before_the_body_arrives(pool: asyncpg.Pool) -> None:
    async with running_api(make_settings(), pool) as api:
        await tenant(api, DOMAIN)
        refused = [
            (SEND_HTML, ()),
            (SEND_HTML_README, basic_md(DOMAIN, "k_wrong")),
            (STATS, (("authorization", "Basic not-base64!"),)),
            (GET_DOMAINS, admin_md("wrong-token")),
        ]
        for method, md in refused:
            # The deadline is far away: the answer comes from the metadata alone.
            code = await asyncio.wait_for(_code(_held_body_call(api.channel, method, md, 60)), 20)
            assert code == grpc.StatusCode.UNAUTHENTICATED, method


async def test_valid_credentials_wait_for_the_body(pool: asyncpg.Pool) -> None:
    """Contrast: with credentials the server goes on to read the body, so the call stays open."""
    async with running_api(make_settings(), pool) as api:
        creds = await tenant(api, DOMAIN)
        code = await _code(_held_body_call(api.channel, SEND_HTML, creds, 1.0))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_calls_over_max_concurrent_rpcs_are_refused(pool: asyncpg.Pool) -> None:
    async with running_api(make_settings(max_concurrent_rpcs=2), pool) as api:
        creds = await tenant(api, DOMAIN)
        held = [_held_body_call(api.channel, SEND_HTML, creds, 60) for _ in range(2)]
        try:
            # Both are in flight once the server waits for their bodies; the third is refused.
            async def third() -> grpc.StatusCode:
                # Short deadline: should the held calls not be in flight yet, this one would
                # wait for its body instead of being refused.
                return await _code(_held_body_call(api.channel, SEND_HTML, creds, 2.0))

            deadline = asyncio.get_running_loop().time() + 20
            code = await third()
            while code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert asyncio.get_running_loop().time() < deadline, code
                await asyncio.sleep(0.05)  # the held calls are still being set up
                code = await third()
        finally:
            for call in held:
                call.cancel()
        # With them gone, calls are served again.
        hz = await api.hz().HZ(hz_pb2.HZRequest())
        assert dict(hz.result) == {}
