"""The integration metrics a running API exports (issue 10 item 4): requests per protocol and
codec (gRPC, Connect JSON, Connect binary through the same servicers) and idempotent replays."""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY

from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from tests.api.api_test_support import (
    ADMIN_TOKEN,
    RunningApi,
    basic_md,
    create_domain,
    create_key,
    html_request,
)

DOMAIN = "metrics.example.com"
ADMIN = "kannon.admin.apiv1.AdminApiV1Service"


def requests(protocol: str, codec: str, method: str) -> float:
    labels = {"protocol": protocol, "codec": codec, "method": method}
    return REGISTRY.get_sample_value("kannon_api_requests_total", labels) or 0.0


def replays(method: str) -> float:
    labels = {"method": method}
    return REGISTRY.get_sample_value("kannon_api_idempotent_replays_total", labels) or 0.0


async def test_requests_are_counted_per_protocol_and_codec(api: RunningApi) -> None:
    before = {
        "grpc": requests("grpc", "proto", "CreateDomain"),
        "json": requests("connect", "json", "GetDomain"),
        "binary": requests("connect", "proto", "GetDomain"),
    }
    await create_domain(api, DOMAIN)
    url = f"http://127.0.0.1:{api.component.http_port}/{ADMIN}/GetDomain"
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            url, json={"domain": DOMAIN}, headers={**auth, "content-type": "application/json"}
        )
        assert answer.status_code == 200, answer.text
        answer = await client.post(
            url,
            content=admin_pb.GetDomainReq(domain=DOMAIN).SerializeToString(),
            headers={**auth, "content-type": "application/proto"},
        )
        assert answer.status_code == 200, answer.text
    assert requests("grpc", "proto", "CreateDomain") == before["grpc"] + 1
    assert requests("connect", "json", "GetDomain") == before["json"] + 1
    assert requests("connect", "proto", "GetDomain") == before["binary"] + 1


async def test_idempotent_replays_are_counted(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    md = (*basic_md(DOMAIN, await create_key(api, DOMAIN)), ("idempotency-key", "m-1"))
    before = replays("SendHTML")
    request = html_request(DOMAIN, ["a@example.org"])
    await api.mailer().SendHTML(request, metadata=md)
    assert replays("SendHTML") == before
    await api.mailer().SendHTML(request, metadata=md)
    await api.mailer().SendHTML(request, metadata=md)
    assert replays("SendHTML") == before + 2
