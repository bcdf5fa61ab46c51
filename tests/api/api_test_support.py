"""Helpers for the API tests: stubs under both service names, credentials, a running API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from google.protobuf.message import Message

from kannon.api.component import ApiComponent
from kannon.bus.client import Bus
from kannon.config import Settings
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import adminapiv1_pb2_grpc, hz_pb2_grpc
from kannon.pb.aliases import (
    adminapiv1service_pb2_grpc,
    mailerapiv1service_pb2_grpc,
    statsapiv1service_pb2_grpc,
)
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc
from kannon.pb.mailer.types import send_pb2
from kannon.pb.stats.apiv1 import statsapiv1_pb2_grpc
from kannon.pb.stats.apiv2 import statsapiv2_pb2_grpc
from kannon.pb.suppression.apiv1 import suppressionapiv1_pb2_grpc
from kannon.runtime.component import Life

ADMIN_TOKEN = "operator-secret-token"
SENDING_HOST = "mail.kannon.test"
BOUNCE_HOST = "bounce.kannon.test"


def make_settings(nats: dict[str, Any] | None = None, **api: Any) -> Settings:
    # Port 0 for both listeners: parallel test runs on one machine must not meet on a default.
    api_values = {"port": 0, "http_port": 0, "host": "127.0.0.1", "admin_token": ADMIN_TOKEN, **api}
    return Settings.model_validate(
        {
            "api": api_values,
            "nats": nats or {},
            "sender": {"hostname": SENDING_HOST},
            "smtp": {"domain": BOUNCE_HOST},
            "tracker": {"base_url": "https://track.{domain}"},
        }
    )


@dataclass
class RunningApi:
    component: ApiComponent
    channel: grpc.aio.Channel
    pool: asyncpg.Pool

    @property
    def port(self) -> int:
        assert self.component.port is not None
        return self.component.port

    # Stubs under the original's names and under the README's names.
    def admin(self, readme: bool = False) -> Any:
        module = adminapiv1service_pb2_grpc if readme else adminapiv1_pb2_grpc
        stub = module.AdminApiV1ServiceStub if readme else module.ApiStub
        return stub(self.channel)

    def mailer(self, readme: bool = False) -> Any:
        if readme:
            return mailerapiv1service_pb2_grpc.MailerApiV1ServiceStub(self.channel)
        return mailerapiv1_pb2_grpc.MailerStub(self.channel)

    def stats(self, readme: bool = False) -> Any:
        if readme:
            return statsapiv1service_pb2_grpc.StatsApiV1ServiceStub(self.channel)
        return statsapiv1_pb2_grpc.StatsApiV1Stub(self.channel)

    def stats_v2(self) -> Any:
        return statsapiv2_pb2_grpc.StatsApiV2Stub(self.channel)

    def hz(self) -> Any:
        return hz_pb2_grpc.HZServiceStub(self.channel)

    def suppression(self) -> Any:
        return suppressionapiv1_pb2_grpc.SuppressionApiV1ServiceStub(self.channel)


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, pool: asyncpg.Pool, bus: Bus | None = None
) -> AsyncIterator[RunningApi]:
    component = ApiComponent(settings, pool, bus)
    life = Life("api")
    task = asyncio.create_task(component.run(life))
    ready = asyncio.create_task(life.wait_ready())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises the start-up failure
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{component.port}")
    try:
        yield RunningApi(component, channel, pool)
    finally:
        await channel.close()
        life.stopping.set()
        await task


def admin_md(token: str = ADMIN_TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def basic_md(domain: str, key: str) -> tuple[tuple[str, str], ...]:
    encoded = base64.b64encode(f"{domain}:{key}".encode()).decode()
    return (("authorization", f"Basic {encoded}"),)


async def create_domain(api: RunningApi, name: str) -> Any:
    return await api.admin().CreateDomain(
        admin_pb.CreateDomainRequest(domain=name), metadata=admin_md()
    )


async def create_key(api: RunningApi, domain: str, name: str = "test") -> str:
    res = await api.admin().CreateAPIKey(
        admin_pb.CreateAPIKeyRequest(domain=domain, name=name), metadata=admin_md()
    )
    return str(res.key)


async def tenant(api: RunningApi, name: str) -> tuple[tuple[str, str], ...]:
    """Create a Domain with an API key; return the key's Basic credentials."""
    await create_domain(api, name)
    return basic_md(name, await create_key(api, name))


def html_request(
    domain: str, recipients: list[str], *, subject: str = "Hello {{ name }}", **kw: Any
) -> mailer_pb.SendHTMLReq:
    return mailer_pb.SendHTMLReq(
        sender=send_pb2.Sender(email=f"news@{domain}", alias="News"),
        subject=subject,
        html=kw.pop("html", "<p>Hi {{ name }}</p>"),
        recipients=[send_pb2.Recipient(email=r) for r in recipients],
        **kw,
    )


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """Await a call expected to fail; return its status code and details."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")


async def assert_refusals(
    api: RunningApi, cases: list[tuple[Message, grpc.StatusCode, str]]
) -> None:
    """Each (Admin API request, status code, details prefix): the method the request is for
    (`CreateTemplateReq`, `GetAPIKeyRequest`: CreateTemplate, GetAPIKey) refuses it with that
    code, and its details start with the field at fault."""
    admin = api.admin()
    for request, code, prefix in cases:
        method = type(request).__name__.removesuffix("Request").removesuffix("Req")
        got_code, details = await status_of(getattr(admin, method)(request, metadata=admin_md()))
        assert (got_code, details[: len(prefix)]) == (code, prefix), (method, details)
