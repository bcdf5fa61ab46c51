"""The API over Connect and gRPC-Web on api.http_port: the original's clients' wire.

Against a running API (real PostgreSQL): a Connect JSON call with curl, a Connect binary call and
a gRPC-Web call of CreateDomain, SendHTML and GetStats; both service names; the same auth and
errors as over gRPC, as Connect codes; a 100,000-Recipient SendHTML in JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from kannon.api.connect import grpc_peer
from kannon.model.outcome import Delivered
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.types import send_pb2
from kannon.pb.stats.apiv1 import statsapiv1_pb2 as stats_pb
from kannon.wire.stats import data_json
from tests.api.api_test_support import (
    ADMIN_TOKEN,
    RunningApi,
    create_domain,
    create_key,
    make_settings,
    running_api,
)

ADMIN = "kannon.admin.apiv1.AdminApiV1Service"
MAILER = "kannon.mailer.apiv1.MailerApiV1Service"
STATS = "kannon.stats.apiv1.StatsApiV1Service"
ORIGINAL_MAILER = "pkg.kannon.mailer.apiv1.Mailer"
DOMAIN = "connect.example"


def url(api: RunningApi, service: str, method: str) -> str:
    return f"http://127.0.0.1:{api.component.http_port}/{service}/{method}"


def send_html_json(
    *,
    subject: str = "Hi",
    html: str = "<p>x</p>",
    recipients: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A SendHTML request in Connect's JSON from news@DOMAIN, to a@example.org unless given."""
    return {
        "sender": {"email": f"news@{DOMAIN}"},
        "subject": subject,
        "html": html,
        "recipients": [{"email": "a@example.org"}] if recipients is None else recipients,
    }


def basic(domain: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{domain}:{key}".encode()).decode()


async def curl_json(
    api: RunningApi, service: str, method: str, body: Any, *headers: str
) -> tuple[int, Any]:
    """POST JSON with curl, as the README does; (HTTP status, parsed body)."""
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}"]
    args += ["-H", "content-type: application/json"]
    for header in headers:
        args += ["-H", header]
    args += ["--data-binary", "@-", url(api, service, method)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(body).encode()), 120)
    assert proc.returncode == 0, err.decode()
    text, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(text) if text else None


async def connect_binary(
    client: httpx.AsyncClient,
    api: RunningApi,
    service: str,
    method: str,
    request: Any,
    *,
    response_class: Any,
    headers: dict[str, str],
) -> Any:
    res = await client.post(
        url(api, service, method),
        content=request.SerializeToString(),
        headers={"content-type": "application/proto", **headers},
    )
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "application/proto"
    return response_class.FromString(res.content)


def grpc_web_frame(message: Any) -> bytes:
    payload: bytes = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def grpc_web_parse(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Data frames and the trailer frame of a gRPC-Web response body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flags, length = struct.unpack(">BI", body[offset : offset + 5])
        chunk = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flags & 0x80:
            for line in chunk.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(chunk)
    return messages, trailers


async def grpc_web(
    client: httpx.AsyncClient,
    api: RunningApi,
    service: str,
    method: str,
    request: Any,
    *,
    headers: dict[str, str],
) -> tuple[list[bytes], dict[str, str]]:
    res = await client.post(
        url(api, service, method),
        content=grpc_web_frame(request),
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **headers},
    )
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("application/grpc-web")
    return grpc_web_parse(res.content)


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "fromDate": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "toDate": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def insert_delivered(api: RunningApi, email: str) -> None:
    await api.pool.execute(
        """INSERT INTO stats (type, email, message_id, domain, timestamp, data)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        "delivered",
        email,
        f"msg_abc@{DOMAIN}",
        DOMAIN,
        datetime.now(UTC).replace(tzinfo=None),
        data_json(Delivered()),
    )


async def test_connect_json_with_curl_create_domain_send_html_get_stats(api: RunningApi) -> None:
    admin = f"authorization: Bearer {ADMIN_TOKEN}"
    status, domain = await curl_json(api, ADMIN, "CreateDomain", {"domain": DOMAIN}, admin)
    assert status == 200, domain
    assert domain["domain"] == DOMAIN and domain["dkimPubKey"]
    status, key = await curl_json(
        api, ADMIN, "CreateAPIKey", {"domain": DOMAIN, "name": "ci"}, admin
    )
    assert status == 200
    auth = f"authorization: {basic(DOMAIN, key['key'])}"
    body = {
        "sender": {"email": f"news@{DOMAIN}", "alias": "News"},
        "subject": "Hello {{ name }}",
        "html": "<p>Hi {{ name }}</p>",
        "recipients": [{"email": "ada@example.org", "fields": {"name": "Ada"}}],
    }
    status, sent = await curl_json(api, MAILER, "SendHTML", body, auth)
    assert status == 200, sent
    assert sent["messageId"].endswith(f"@{DOMAIN}")
    count = await api.pool.fetchval(
        "SELECT count(*) FROM sending_pool_emails WHERE message_id = $1", sent["messageId"]
    )
    assert count == 1

    await insert_delivered(api, "ada@example.org")
    status, stats = await curl_json(
        api, STATS, "GetStats", {"domain": DOMAIN, "take": 10, **window()}, auth
    )
    assert status == 200, stats
    assert stats["total"] == "1"  # proto JSON writes 64-bit integers as strings
    assert stats["stats"][0]["type"] == "delivered"
    assert stats["stats"][0]["email"] == "ada@example.org"


async def test_connect_binary_create_domain_send_html_get_stats(api: RunningApi) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        domain = await connect_binary(
            client,
            api,
            ADMIN,
            "CreateDomain",
            admin_pb.CreateDomainRequest(domain=DOMAIN),
            response_class=admin_pb.Domain,
            headers=admin,
        )
        assert domain.domain == DOMAIN
        key = await create_key(api, DOMAIN)
        auth = {"authorization": basic(DOMAIN, key)}
        request = mailer_pb.SendHTMLReq(
            sender=send_pb2.Sender(email=f"news@{DOMAIN}", alias="News"),
            subject="Hi",
            html="<p>Hi</p>",
            recipients=[send_pb2.Recipient(email="bob@example.org")],
        )
        # Under the original's service name, as the original's Connect clients call it.
        sent = await connect_binary(
            client,
            api,
            ORIGINAL_MAILER,
            "SendHTML",
            request,
            response_class=mailer_pb.SendRes,
            headers=auth,
        )
        assert sent.message_id.endswith(f"@{DOMAIN}")
        await insert_delivered(api, "bob@example.org")
        now = datetime.now(UTC)
        stats_request = stats_pb.GetStatsReq(domain=DOMAIN, take=5)
        stats_request.from_date.FromDatetime(now - timedelta(days=1))
        stats_request.to_date.FromDatetime(now + timedelta(hours=1))
        stats = await connect_binary(
            client,
            api,
            STATS,
            "GetStats",
            stats_request,
            response_class=stats_pb.GetStatsRes,
            headers=auth,
        )
        assert stats.total == 1 and stats.stats[0].email == "bob@example.org"


async def test_grpc_web_create_domain_send_html_get_stats(api: RunningApi) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        frames, trailers = await grpc_web(
            client,
            api,
            ADMIN,
            "CreateDomain",
            admin_pb.CreateDomainRequest(domain=DOMAIN),
            headers=admin,
        )
        assert trailers["grpc-status"] == "0", trailers
        assert admin_pb.Domain.FromString(frames[0]).domain == DOMAIN
        key = await create_key(api, DOMAIN)
        auth = {"authorization": basic(DOMAIN, key)}
        request = mailer_pb.SendHTMLReq(
            sender=send_pb2.Sender(email=f"news@{DOMAIN}"),
            subject="Hi",
            html="<p>Hi</p>",
            recipients=[send_pb2.Recipient(email="cy@example.org")],
        )
        frames, trailers = await grpc_web(client, api, MAILER, "SendHTML", request, headers=auth)
        assert trailers["grpc-status"] == "0", trailers
        assert mailer_pb.SendRes.FromString(frames[0]).message_id.endswith(f"@{DOMAIN}")
        await insert_delivered(api, "cy@example.org")
        now = datetime.now(UTC)
        stats_request = stats_pb.GetStatsReq(domain=DOMAIN)
        stats_request.from_date.FromDatetime(now - timedelta(days=1))
        stats_request.to_date.FromDatetime(now + timedelta(hours=1))
        frames, trailers = await grpc_web(
            client, api, STATS, "GetStats", stats_request, headers=auth
        )
        assert trailers["grpc-status"] == "0", trailers
        assert stats_pb.GetStatsRes.FromString(frames[0]).total == 1

        # An error travels in the trailer frame with the gRPC code (3 = INVALID_ARGUMENT).
        bad = mailer_pb.SendHTMLReq(sender=send_pb2.Sender(email=f"news@{DOMAIN}"))
        frames, trailers = await grpc_web(client, api, MAILER, "SendHTML", bad, headers=auth)
        assert frames == [] and trailers["grpc-status"] == "3"
        assert "recipients" in trailers["grpc-message"] or "html" in trailers["grpc-message"]


async def test_same_auth_and_errors_as_grpc_as_connect_codes(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    key = await create_key(api, DOMAIN)
    body = send_html_json()
    status, error = await curl_json(api, MAILER, "SendHTML", body)
    assert (status, error["code"]) == (401, "unauthenticated")
    status, error = await curl_json(
        api, MAILER, "SendHTML", body, f"authorization: {basic(DOMAIN, 'wrong')}"
    )
    assert (status, error["code"]) == (401, "unauthenticated")
    status, error = await curl_json(api, ADMIN, "GetDomains", {}, "authorization: Bearer nope")
    assert (status, error["code"]) == (401, "unauthenticated")
    auth = f"authorization: {basic(DOMAIN, key)}"
    # A caller's mistake: the message names the field, as over gRPC.
    status, error = await curl_json(api, MAILER, "SendHTML", {**body, "recipients": []}, auth)
    assert (status, error["code"]) == (400, "invalid_argument")
    assert "recipients" in error["message"]
    # A misspelt field is refused by name, not ignored.
    status, error = await curl_json(api, MAILER, "SendHTML", {**body, "recipient": []}, auth)
    assert (status, error["code"]) == (400, "invalid_argument")
    assert "recipient" in error["message"]
    # Another Domain's stats: PERMISSION_DENIED, as over gRPC.
    status, error = await curl_json(
        api, STATS, "GetStats", {"domain": "other.example", **window()}, auth
    )
    assert (status, error["code"]) == (403, "permission_denied")
    status, error = await curl_json(
        api, ADMIN, "CreateDomain", {"domain": DOMAIN}, f"authorization: Bearer {ADMIN_TOKEN}"
    )
    assert (status, error["code"]) == (409, "already_exists")
    # Not a method: 404.
    async with httpx.AsyncClient(timeout=30) as client:
        res = await client.post(
            url(api, MAILER, "Nope"), content=b"{}", headers={"content-type": "application/json"}
        )
        assert res.status_code == 404


async def test_database_outage_is_unavailable(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    key = await create_key(api, DOMAIN)
    auth = f"authorization: {basic(DOMAIN, key)}"
    await api.pool.close()
    status, error = await curl_json(api, STATS, "GetStats", {**window()}, auth)
    assert (status, error["code"]) == (503, "unavailable"), error


async def test_admin_without_token_answers_loopback_over_http(pool: Any) -> None:
    async with running_api(make_settings(admin_token=None), pool) as api:
        status, domains = await curl_json(api, ADMIN, "GetDomains", {})
        assert status == 200 and domains == {}


def test_grpc_peer_strings() -> None:
    assert grpc_peer("127.0.0.1:5000") == "ipv4:127.0.0.1:5000"
    assert grpc_peer("::1:5000") == "ipv6:[::1]:5000"
    assert grpc_peer(None) == ""
    assert grpc_peer("garbage") == ""


async def test_body_over_max_message_size_is_refused_before_parsing(pool: Any) -> None:
    async with running_api(make_settings(max_message_size="64kb"), pool) as api:
        await create_domain(api, DOMAIN)
        key = await create_key(api, DOMAIN)
        body = send_html_json(html="<p>" + "x" * 70_000 + "</p>")
        status, error = await curl_json(
            api, MAILER, "SendHTML", body, f"authorization: {basic(DOMAIN, key)}"
        )
        assert (status, error["code"]) == (429, "resource_exhausted")


@pytest.mark.timeout(600)
async def test_100000_recipients_over_json(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    key = await create_key(api, DOMAIN)
    body = send_html_json(
        subject="Hello {{ name }}",
        html="<p>Hi {{ name }}</p>",
        recipients=[
            {"email": f"user{i}@example.org", "fields": {"name": f"User {i}"}}
            for i in range(100_000)
        ],
    )
    assert len(json.dumps(body)) < 64 * 1024 * 1024  # within the default api.max_message_size
    status, sent = await curl_json(
        api, MAILER, "SendHTML", body, f"authorization: {basic(DOMAIN, key)}"
    )
    assert status == 200, sent
    count = await api.pool.fetchval(
        "SELECT count(*) FROM sending_pool_emails WHERE message_id = $1", sent["messageId"]
    )
    assert count == 100_000
