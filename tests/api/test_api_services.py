"""Every service under both of its names, health, reflection, and the Component's lifecycle."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from kannon.api.component import SERVICE_NAMES, ApiComponent, listen_address
from kannon.api.hz import HZService
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import hz_pb2
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.types import send_pb2
from kannon.pb.stats.apiv1 import statsapiv1_pb2 as stats_pb
from kannon.pb.stats.apiv2 import statsapiv2_pb2 as stats2_pb
from kannon.runtime.component import Life
from tests.api.api_test_support import (
    RunningApi,
    admin_md,
    create_domain,
    html_request,
    make_settings,
    running_api,
    status_of,
    tenant,
)

BOTH = pytest.mark.parametrize("readme", [False, True], ids=["original-name", "readme-name"])


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


@BOTH
async def test_admin_happy_path(api: RunningApi, readme: bool) -> None:
    admin, md = api.admin(readme), admin_md()
    domain = await admin.CreateDomain(admin_pb.CreateDomainRequest(domain="a.example"), metadata=md)
    assert domain.domain == "a.example" and domain.dkim_pub_key

    got = await admin.GetDomain(admin_pb.GetDomainReq(domain="a.example"), metadata=md)
    assert got.domain == domain
    listed = await admin.GetDomains(admin_pb.GetDomainsReq(), metadata=md)
    assert [d.domain for d in listed.domains] == ["a.example"]

    created = await admin.CreateTemplate(
        admin_pb.CreateTemplateReq(domain="a.example", html="<p>x</p>", title="T"), metadata=md
    )
    template_id = created.template.template_id
    assert template_id.startswith("template_") and template_id.endswith("@a.example")
    assert created.template.type == "template"
    updated = await admin.UpdateTemplate(
        admin_pb.UpdateTemplateReq(template_id=template_id, html="<p>y</p>", title="U"),
        metadata=md,
    )
    assert (updated.template.html, updated.template.title) == ("<p>y</p>", "U")
    got_t = await admin.GetTemplate(admin_pb.GetTemplateReq(template_id=template_id), metadata=md)
    assert got_t.template == updated.template
    page = await admin.GetTemplates(admin_pb.GetTemplatesReq(domain="a.example"), metadata=md)
    assert page.total == 1 and [t.template_id for t in page.templates] == [template_id]
    deleted = await admin.DeleteTemplate(
        admin_pb.DeleteTemplateReq(template_id=template_id), metadata=md
    )
    assert deleted.template == updated.template

    key = await admin.CreateAPIKey(
        admin_pb.CreateAPIKeyRequest(domain="a.example", name="ci"), metadata=md
    )
    assert key.key.startswith("k_") and key.api_key.key == key.key[:8] + "..."
    keys = await admin.ListAPIKeys(admin_pb.ListAPIKeysRequest(domain="a.example"), metadata=md)
    assert keys.total == 1 and keys.api_keys[0] == key.api_key
    one = await admin.GetAPIKey(
        admin_pb.GetAPIKeyRequest(domain="a.example", id=key.api_key.id), metadata=md
    )
    assert one.api_key == key.api_key
    off = await admin.DeactivateAPIKey(
        admin_pb.DeactivateAPIKeyRequest(domain="a.example", id=key.api_key.id), metadata=md
    )
    assert not off.api_key.is_active and off.api_key.HasField("deactivated_at")


@BOTH
async def test_mailer_happy_path(api: RunningApi, readme: bool) -> None:
    creds = await tenant(api, "m.example")
    mailer = api.mailer(readme)
    res = await mailer.SendHTML(html_request("m.example", ["a@x.test"]), metadata=creds)
    assert res.message_id.startswith("msg_") and res.message_id.endswith("@m.example")
    assert res.accepted_count == 1 and res.rejected_count == 0

    created = await api.admin().CreateTemplate(
        admin_pb.CreateTemplateReq(domain="m.example", html="<p>{{ name }}</p>"),
        metadata=admin_md(),
    )
    template_id = created.template.template_id
    res2 = await mailer.SendTemplate(
        mailer_pb.SendTemplateReq(
            sender=send_pb2.Sender(email="news@m.example"),
            subject="s",
            template_id=template_id,
            recipients=[send_pb2.Recipient(email="b@x.test")],
        ),
        metadata=creds,
    )
    assert res2.template_id == template_id and res2.accepted_count == 1
    count = await api.pool.fetchval("SELECT count(*) FROM sending_pool_emails")
    assert count == 2


@BOTH
async def test_stats_happy_path(api: RunningApi, readme: bool) -> None:
    creds = await tenant(api, "s.example")
    hour = datetime(2026, 3, 1, 10, tzinfo=UTC)
    await api.pool.execute(
        """INSERT INTO stats (type, email, message_id, domain, timestamp, data)
           VALUES ('delivered', 'a@x.test', 'msg_a@s.example', 's.example', $1, $2)""",
        hour.replace(tzinfo=None, minute=5),
        {"delivered": {}},
    )
    await api.pool.execute(
        "INSERT INTO aggregated_stats VALUES ('s.example', $1, 'delivered', 1)",
        hour.replace(tzinfo=None),
    )
    span = {"from_date": ts(hour), "to_date": ts(hour + timedelta(hours=1))}
    stats = api.stats(readme)
    raw = await stats.GetStats(stats_pb.GetStatsReq(domain="s.example", **span), metadata=creds)
    assert raw.total == 1 and raw.stats[0].data.WhichOneof("data") == "delivered"
    agg = await stats.GetStatsAggregated(
        stats_pb.GetStatsAggregatedReq(domain="s.example", **span), metadata=creds
    )
    assert [(b.type, b.count) for b in agg.stats] == [("delivered", 1)]
    agg2 = await api.stats_v2().GetAggregatedStats(
        stats2_pb.GetAggregatedStatsReq(domain="s.example", **span), metadata=creds
    )
    assert list(agg2.stats) == list(agg.stats)


async def test_hz_is_open_and_empty_when_healthy(api: RunningApi) -> None:
    res = await api.hz().HZ(hz_pb2.HZRequest())
    assert dict(res.result) == {}


async def test_hz_lists_the_failing_database(database_url: str) -> None:
    from kannon.db.database import open_database

    broken: asyncpg.Pool = await open_database(database_url, max_size=1)
    await broken.close()
    failing = await HZService(broken).failing_checks()
    assert list(failing) == ["db"] and failing["db"]


async def test_health_reports_serving_for_every_service(api: RunningApi) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    for name in ("", *SERVICE_NAMES):
        res = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert res.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_reflection_lists_every_service(api: RunningApi) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    res = await call.read()
    await call.done_writing()
    names = {s.name for s in res.list_services_response.service}
    assert names == {
        "pkg.kannon.mailer.apiv1.Mailer",
        "kannon.mailer.apiv1.MailerApiV1Service",
        "pkg.kannon.admin.apiv1.Api",
        "kannon.admin.apiv1.AdminApiV1Service",
        "pkg.kannon.admin.apiv1.HZService",
        "kannon.StatsApiV1",
        "kannon.stats.apiv1.StatsApiV1Service",
        "kannon.stats.apiv2.StatsApiV2",
        "kannon.webhooks.apiv1.WebhooksApiV1Service",
        "kannon.suppression.apiv1.SuppressionApiV1Service",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def _call_through_reflection_only(port: int, domain: str, auth: tuple[tuple[str, str], ...]) -> Any:
    """A client that has no .proto files: descriptors come from the server's reflection."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("kannon.mailer.apiv1.MailerApiV1Service")
        method = service.methods_by_name["SendHTML"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        request = request_cls(subject="hi", html="<p>hi</p>")
        request.sender.email = f"news@{domain}"
        request.recipients.add(email="dyn@x.test")
        call = channel.unary_unary(
            f"/{service.full_name}/SendHTML",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        return call(request, metadata=auth, timeout=10)


async def test_a_client_without_proto_files_can_send(api: RunningApi) -> None:
    creds = await tenant(api, "dyn.example")
    res = await asyncio.to_thread(_call_through_reflection_only, api.port, "dyn.example", creds)
    assert res.accepted_count == 1 and res.message_id.endswith("@dyn.example")


async def test_port_zero_binds_a_free_port_and_stop_returns(pool: asyncpg.Pool) -> None:
    component = ApiComponent(make_settings(), pool)
    life = Life("api")
    task = asyncio.create_task(component.run(life))
    await life.wait_ready()
    assert component.port is not None and component.port > 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{component.port}") as channel:
        res = await hz_pb2_grpc_stub(channel).HZ(hz_pb2.HZRequest())
        assert dict(res.result) == {}
    life.stopping.set()
    await asyncio.wait_for(task, 15)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{component.port}") as channel:
        code, _ = await status_of(hz_pb2_grpc_stub(channel).HZ(hz_pb2.HZRequest(), timeout=2))
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def hz_pb2_grpc_stub(channel: grpc.aio.Channel) -> Any:
    from kannon.pb.admin.apiv1 import hz_pb2_grpc

    return hz_pb2_grpc.HZServiceStub(channel)


async def test_a_taken_port_fails_the_component(pool: asyncpg.Pool) -> None:
    async with running_api(make_settings(), pool) as first:
        second = ApiComponent(make_settings(port=first.port), pool)
        with pytest.raises(RuntimeError, match=r"api\.host / api\.port"):
            await asyncio.wait_for(second.run(Life("api")), 15)


def test_listen_address_brackets_ipv6() -> None:
    assert listen_address("0.0.0.0", 5) == "0.0.0.0:5"
    assert listen_address("::", 5) == "[::]:5"
    assert listen_address("[::1]", 5) == "[::1]:5"


async def test_request_over_max_message_size_is_refused(pool: asyncpg.Pool) -> None:
    async with running_api(make_settings(max_message_size=64 * 1024), pool) as small:
        creds = await tenant(small, "big.example")
        request = html_request("big.example", ["a@x.test"])
        request.attachments.add(filename="big.bin", content=b"\0" * (128 * 1024))
        code, _ = await status_of(small.mailer().SendHTML(request, metadata=creds))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_default_size_limit_lets_a_large_attachment_through(pool: asyncpg.Pool) -> None:
    # The gRPC limit (64 MiB) takes it; the bus must carry it too (ADR 0021).
    async with running_api(make_settings(nats={"max_payload": "16mb"}), pool) as api:
        creds = await tenant(api, "att.example")
        request = html_request("att.example", ["a@x.test"])
        request.attachments.add(filename="report.pdf", content=b"%PDF" * (2 * 1024 * 1024))
        res = await api.mailer().SendHTML(request, metadata=creds)
        assert res.accepted_count == 1
        stored = await api.pool.fetchval("SELECT attachments FROM messages")
        assert list(stored) == ["report.pdf"]


async def test_create_domain_is_reachable_by_admin_only(api: RunningApi) -> None:
    await create_domain(api, "only.example")
    code, _ = await status_of(
        api.admin().GetDomains(admin_pb.GetDomainsReq())  # no token
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
