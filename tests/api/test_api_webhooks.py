"""The Webhooks API under both auth schemes: endpoints (create, list, update, delete, rotate
secret), SSRF checks on URLs, test events, attempts and replays, against a running API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from kannon.pb.webhooks.apiv1 import webhooksapiv1_pb2 as pb
from kannon.pb.webhooks.apiv1 import webhooksapiv1_pb2_grpc
from tests.api.api_test_support import (
    RunningApi,
    admin_md,
    basic_md,
    create_domain,
    create_key,
    make_settings,
    running_api,
    status_of,
)

DOMAIN = "whapi.example"


def stub(api: RunningApi) -> Any:
    return webhooksapiv1_pb2_grpc.WebhooksApiV1ServiceStub(api.channel)


@pytest.fixture
async def open_api(pool: Any) -> Any:
    settings = make_settings()
    settings = settings.model_copy(
        update={"webhooks": settings.webhooks.model_copy(update={"allow_http": True})}
    )
    async with running_api(settings, pool) as api:
        yield api


async def test_endpoints_under_both_schemes(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    await create_domain(api, "other.example")
    key = basic_md(DOMAIN, await create_key(api, DOMAIN))
    created = await stub(api).CreateEndpoint(
        pb.CreateEndpointReq(url="https://hooks.example.com/k", event_types=["Bounced"]),
        metadata=key,
    )
    assert created.secret.startswith("whsec_") and created.endpoint.domain == DOMAIN
    assert list(created.endpoint.event_types) == ["bounced"]
    by_admin = await stub(api).CreateEndpoint(
        pb.CreateEndpointReq(domain=DOMAIN, url="https://hooks.example.com/admin"),
        metadata=admin_md(),
    )
    listed = await stub(api).ListEndpoints(pb.ListEndpointsReq(), metadata=key)
    assert [e.id for e in listed.endpoints] == [created.endpoint.id, by_admin.endpoint.id]
    # The API key reaches its own Domain only; the operator must name one.
    code, _ = await status_of(
        stub(api).ListEndpoints(pb.ListEndpointsReq(domain="other.example"), metadata=key)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, details = await status_of(
        stub(api).ListEndpoints(pb.ListEndpointsReq(), metadata=admin_md())
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "domain" in details
    code, _ = await status_of(stub(api).ListEndpoints(pb.ListEndpointsReq(domain=DOMAIN)))
    assert code == grpc.StatusCode.UNAUTHENTICATED

    updated = await stub(api).UpdateEndpoint(
        pb.UpdateEndpointReq(id=created.endpoint.id, enabled=False, set_event_types=True),
        metadata=key,
    )
    assert not updated.enabled and list(updated.event_types) == []
    rotated = await stub(api).RotateSecret(pb.EndpointRef(id=created.endpoint.id), metadata=key)
    assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
    deleted = await stub(api).DeleteEndpoint(
        pb.EndpointRef(domain=DOMAIN, id=created.endpoint.id), metadata=admin_md()
    )
    assert deleted.id == created.endpoint.id
    code, _ = await status_of(
        stub(api).DeleteEndpoint(pb.EndpointRef(id=created.endpoint.id), metadata=key)
    )
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://hooks.example.com/x", "webhooks.allow_http"),
        ("https://127.0.0.1/x", "non-public"),
        ("https://10.1.2.3/x", "non-public"),
        ("https://169.254.169.254/latest/meta-data", "non-public"),
        ("https://[::1]/x", "non-public"),
        ("https://[::ffff:192.168.0.1]/x", "non-public"),
        ("https://localhost/x", "non-public"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("ftp://hooks.example.com/x", "https://"),
        ("https:///x", "no host"),
    ],
)
async def test_non_public_and_plain_urls_are_refused(api: RunningApi, url: str, words: str) -> None:
    await create_domain(api, DOMAIN)
    code, details = await status_of(
        stub(api).CreateEndpoint(pb.CreateEndpointReq(domain=DOMAIN, url=url), metadata=admin_md())
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details and "url" in details


async def test_unknown_event_types_are_refused(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    code, details = await status_of(
        stub(api).CreateEndpoint(
            pb.CreateEndpointReq(
                domain=DOMAIN, url="https://hooks.example.com/", event_types=["error"]
            ),
            metadata=admin_md(),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "event_types" in details


async def test_test_event_attempts_and_replay_rows(open_api: RunningApi) -> None:
    api = open_api
    await create_domain(api, DOMAIN)
    created = await stub(api).CreateEndpoint(
        pb.CreateEndpointReq(domain=DOMAIN, url="https://hooks.example.com/t"),
        metadata=admin_md(),
    )
    ref = pb.EndpointRef(domain=DOMAIN, id=created.endpoint.id)
    sent = await stub(api).SendTestEvent(ref, metadata=admin_md())
    row = await api.pool.fetchrow(
        "SELECT event_type, status, webhook_id FROM webhook_deliveries WHERE endpoint_id = $1",
        created.endpoint.id,
    )
    assert (row["event_type"], row["status"], row["webhook_id"]) == (
        "test",
        "pending",
        sent.webhook_id,
    )
    await api.pool.execute(
        "UPDATE webhook_deliveries SET status = 'given_up', attempts = 9, finished_at = now()"
    )
    replayed = await stub(api).Replay(
        pb.ReplayReq(domain=DOMAIN, endpoint_id=created.endpoint.id, event_id=sent.webhook_id),
        metadata=admin_md(),
    )
    assert replayed.scheduled == 1
    status = await api.pool.fetchval("SELECT status FROM webhook_deliveries")
    assert status == "pending"
    request = pb.ReplayReq(domain=DOMAIN, endpoint_id=created.endpoint.id)
    request.from_date.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    request.to_date.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    assert (await stub(api).Replay(request, metadata=admin_md())).scheduled == 1
    code, _ = await status_of(
        stub(api).Replay(
            pb.ReplayReq(domain=DOMAIN, endpoint_id=created.endpoint.id, event_id="nope"),
            metadata=admin_md(),
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    attempts = await stub(api).ListAttempts(
        pb.ListAttemptsReq(domain=DOMAIN, endpoint_id=created.endpoint.id), metadata=admin_md()
    )
    assert attempts.total == 0
