"""Idempotency keys on SendHTML/SendTemplate (ADR 0031), against a running API and PostgreSQL:
a repeat answers the first response and creates nothing, two concurrent calls with one key make
one Batch, a changed body is refused, keys are per Domain, expire with the window, and the HTTP
header works like the gRPC metadata."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from google.protobuf import json_format

from kannon.model.errors import Conflict, InvalidArgument
from kannon.model.idempotency import StoredCall, check_key, fingerprint, replayed_response
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.types import send_pb2
from tests.api.api_test_support import (
    RunningApi,
    admin_md,
    basic_md,
    create_domain,
    create_key,
    html_request,
    status_of,
)

DOMAIN = "idem.example"


async def batches(api: RunningApi, domain: str = DOMAIN) -> int:
    return int(await api.pool.fetchval("SELECT count(*) FROM messages WHERE domain = $1", domain))


async def setup(api: RunningApi, domain: str = DOMAIN) -> tuple[tuple[str, str], ...]:
    await create_domain(api, domain)
    return basic_md(domain, await create_key(api, domain))


async def test_a_repeat_answers_the_first_response_and_creates_nothing(api: RunningApi) -> None:
    creds = await setup(api)
    md = (*creds, ("idempotency-key", "order-1"))
    first = await api.mailer().SendHTML(html_request(DOMAIN, ["a@example.org"]), metadata=md)
    again = await api.mailer(readme=True).SendHTML(
        html_request(DOMAIN, ["a@example.org"]), metadata=md
    )
    assert again == first
    assert await batches(api) == 1
    # Without a key, the same request is a new Batch.
    other = await api.mailer().SendHTML(html_request(DOMAIN, ["a@example.org"]), metadata=creds)
    assert other.message_id != first.message_id
    assert await batches(api) == 2


async def test_two_concurrent_calls_with_one_key_create_one_batch(api: RunningApi) -> None:
    creds = await setup(api)
    md = (*creds, ("idempotency-key", "race-1"))
    request = html_request(DOMAIN, [f"r{i}@example.org" for i in range(200)])
    results = await asyncio.gather(*(api.mailer().SendHTML(request, metadata=md) for _ in range(6)))
    assert len({r.message_id for r in results}) == 1
    assert await batches(api) == 1
    rows = await api.pool.fetchval(
        "SELECT count(*) FROM sending_pool_emails WHERE message_id = $1", results[0].message_id
    )
    assert rows == 200


async def test_the_same_key_with_another_body_is_refused(api: RunningApi) -> None:
    creds = await setup(api)
    md = (*creds, ("idempotency-key", "order-2"))
    await api.mailer().SendHTML(html_request(DOMAIN, ["a@example.org"]), metadata=md)
    code, details = await status_of(
        api.mailer().SendHTML(html_request(DOMAIN, ["b@example.org"]), metadata=md)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency-key" in details and "different request" in details
    assert await batches(api) == 1


async def test_keys_are_per_domain(api: RunningApi) -> None:
    one = await setup(api)
    two = await setup(api, "other.example")
    key = ("idempotency-key", "shared")
    a = await api.mailer().SendHTML(html_request(DOMAIN, ["a@example.org"]), metadata=(*one, key))
    b = await api.mailer().SendHTML(
        html_request("other.example", ["a@example.org"]), metadata=(*two, key)
    )
    assert a.message_id != b.message_id
    assert await batches(api) == 1 and await batches(api, "other.example") == 1


async def test_an_expired_key_starts_over(api: RunningApi) -> None:
    creds = await setup(api)
    md = (*creds, ("idempotency-key", "old"))
    first = await api.mailer().SendHTML(html_request(DOMAIN, ["a@example.org"]), metadata=md)
    await api.pool.execute(
        "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours'"
    )
    # Older than the 24 h window: a different body is a new call now, not a conflict.
    second = await api.mailer().SendHTML(html_request(DOMAIN, ["b@example.org"]), metadata=md)
    assert second.message_id != first.message_id
    assert await batches(api) == 2


async def test_send_template_takes_keys_too(api: RunningApi) -> None:
    creds = await setup(api)
    template = await api.admin().CreateTemplate(
        admin_pb.CreateTemplateReq(domain=DOMAIN, html="<p>T</p>", title="t"),
        metadata=admin_md(),
    )
    request = mailer_pb.SendTemplateReq(
        sender=send_pb2.Sender(email=f"news@{DOMAIN}"),
        subject="Hi",
        template_id=template.template.template_id,
        recipients=[send_pb2.Recipient(email="a@example.org")],
    )
    md = (*creds, ("idempotency-key", "tpl"))
    first = await api.mailer().SendTemplate(request, metadata=md)
    again = await api.mailer().SendTemplate(request, metadata=md)
    assert first == again and await batches(api) == 1
    # The same key on SendHTML is another request.
    code, _ = await status_of(
        api.mailer().SendHTML(html_request(DOMAIN, ["a@example.org"]), metadata=md)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def test_the_http_header_and_grpc_metadata_are_one_key(api: RunningApi) -> None:
    creds = await setup(api)
    request = html_request(DOMAIN, ["a@example.org"])
    first = await api.mailer().SendHTML(request, metadata=(*creds, ("idempotency-key", "mixed")))
    async with httpx.AsyncClient(timeout=30) as client:
        res = await client.post(
            f"http://127.0.0.1:{api.component.http_port}"
            "/kannon.mailer.apiv1.MailerApiV1Service/SendHTML",
            content=json_format.MessageToJson(request),
            headers={
                "content-type": "application/json",
                "authorization": dict(creds)["authorization"],
                "idempotency-key": "mixed",
            },
        )
    assert res.status_code == 200, res.text
    assert res.json()["messageId"] == first.message_id
    assert await batches(api) == 1


async def test_a_malformed_key_is_refused(api: RunningApi) -> None:
    creds = await setup(api)
    code, details = await status_of(
        api.mailer().SendHTML(
            html_request(DOMAIN, ["a@example.org"]),
            metadata=(*creds, ("idempotency-key", "x" * 300)),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "idempotency-key" in details
    assert await batches(api) == 0


def test_key_rules() -> None:
    assert check_key(None) is None
    assert check_key("0b5e-11") == "0b5e-11"
    for bad in ("", "a b", "é", "x" * 256):
        with pytest.raises(InvalidArgument):
            check_key(bad)
    digest = fingerprint("SendHTML", b"body")
    assert digest != fingerprint("SendTemplate", b"body")
    stored = StoredCall(digest, b"response")
    assert replayed_response(stored, digest, "k") == b"response"
    with pytest.raises(Conflict):
        replayed_response(stored, fingerprint("SendHTML", b"other"), "k")
