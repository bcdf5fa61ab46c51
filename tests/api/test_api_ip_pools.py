"""IP pools at the API (ADR 0039): a Domain is created in a pool, a Batch may name another, an
unknown pool name is INVALID_ARGUMENT naming the field, and the Dispatcher's sending data
resolves the pool each Batch's Envelopes go to (the Batch's own, else its Domain's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest

from kannon.db.sending_data import load_sending_data
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as pb
from tests.api.api_test_support import (
    RunningApi,
    admin_md,
    basic_md,
    create_key,
    html_request,
    make_settings,
    running_api,
    status_of,
)


@pytest.fixture
async def pooled_api(pool: asyncpg.Pool) -> AsyncIterator[RunningApi]:
    settings = make_settings().model_copy(update={"ip_pools": ("eu", "us")})
    async with running_api(settings, pool) as running:
        yield running


async def _domain(api: RunningApi, name: str, ip_pool: str = "") -> admin_pb.Domain:
    created: admin_pb.Domain = await api.admin().CreateDomain(
        admin_pb.CreateDomainRequest(domain=name, ip_pool=ip_pool), metadata=admin_md()
    )
    return created


async def test_a_domain_is_created_in_the_pool_it_names_else_in_default(
    pooled_api: RunningApi,
) -> None:
    eu = await _domain(pooled_api, "eu.example", "EU")
    plain = await _domain(pooled_api, "plain.example")
    assert (eu.ip_pool, plain.ip_pool) == ("eu", "default")
    found = await pooled_api.admin().GetDomain(
        admin_pb.GetDomainReq(domain="eu.example"), metadata=admin_md()
    )
    assert found.domain.ip_pool == "eu"


async def test_an_unknown_pool_is_invalid_argument_naming_the_field(
    pooled_api: RunningApi,
) -> None:
    code, details = await status_of(
        pooled_api.admin().CreateDomain(
            admin_pb.CreateDomainRequest(domain="x.example", ip_pool="asia"), metadata=admin_md()
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("ip_pool:") and "asia" in details and "eu" in details
    assert await pooled_api.pool.fetchval("SELECT count(*) FROM domains") == 0

    await _domain(pooled_api, "send.example")
    creds = basic_md("send.example", await create_key(pooled_api, "send.example"))
    request = html_request("send.example", ["a@x.test"], ip_pool="asia")
    code, details = await status_of(pooled_api.mailer().SendHTML(request, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("ip_pool:")
    template = pb.SendTemplateReq(
        sender=request.sender, subject="s", template_id="x", ip_pool="asia"
    )
    code, details = await status_of(pooled_api.mailer().SendTemplate(template, metadata=creds))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("ip_pool:")
    assert await pooled_api.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_batch_goes_to_its_own_pool_else_to_its_domains(pooled_api: RunningApi) -> None:
    await _domain(pooled_api, "send.example", "eu")
    creds = basic_md("send.example", await create_key(pooled_api, "send.example"))
    mailer = pooled_api.mailer()
    own = await mailer.SendHTML(
        html_request("send.example", ["a@x.test"], ip_pool="us"), metadata=creds
    )
    inherited = await mailer.SendHTML(html_request("send.example", ["b@x.test"]), metadata=creds)
    stored = await pooled_api.pool.fetch("SELECT message_id, ip_pool FROM messages")
    assert {r["message_id"]: r["ip_pool"] for r in stored} == {
        own.message_id: "us",
        inherited.message_id: None,
    }
    data = await load_sending_data(
        pooled_api.pool, [own.message_id, inherited.message_id], datetime.now(UTC)
    )
    assert data[own.message_id].ip_pool == "us"
    assert data[inherited.message_id].ip_pool == "eu"


async def test_without_ip_pools_only_default_is_known(pool: asyncpg.Pool) -> None:
    async with running_api(make_settings(), pool) as api:
        assert (await _domain(api, "a.example", "default")).ip_pool == "default"
        code, details = await status_of(
            api.admin().CreateDomain(
                admin_pb.CreateDomainRequest(domain="b.example", ip_pool="eu"),
                metadata=admin_md(),
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "known: default" in details
