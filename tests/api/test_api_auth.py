"""Authentication and tenancy: API keys for Mailer and Stats, the operator token for Admin.

Every failure mode of a Basic credential gives the same Unauthenticated message; a key of one
Domain can never send or read for another; Admin needs the token (or, with none configured, a
loopback peer); HZ and health stay open.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kannon.api.auth import check_admin, is_loopback_peer
from kannon.model.apikey import AUTH_FAILED
from kannon.model.errors import PermissionDenied, Unauthenticated
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import hz_pb2
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.types import send_pb2
from kannon.pb.stats.apiv1 import statsapiv1_pb2 as stats_pb
from kannon.pb.stats.apiv2 import statsapiv2_pb2 as stats2_pb
from tests.api.api_test_support import (
    ADMIN_TOKEN,
    RunningApi,
    admin_md,
    basic_md,
    create_domain,
    create_key,
    html_request,
    make_settings,
    running_api,
    status_of,
    tenant,
)


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def raw_md(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", value),)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _bad_credentials(api: RunningApi) -> dict[str, tuple[tuple[str, str], ...]]:
    """Every way a Basic credential can be wrong, against a real Domain with a real key."""
    await create_domain(api, "auth.example")
    await create_domain(api, "other.example")
    good = await create_key(api, "auth.example")
    other_key = await create_key(api, "other.example")
    inactive = await create_key(api, "auth.example", name="old")
    await api.pool.execute(
        "UPDATE api_keys SET is_active = false, deactivated_at = now() WHERE key_prefix = $1",
        inactive[:8],
    )
    expired = await create_key(api, "auth.example", name="expired")
    await api.pool.execute(
        "UPDATE api_keys SET expires_at = now() at time zone 'utc' - interval '1 second' "
        "WHERE key_prefix = $1",
        expired[:8],
    )
    return {
        "missing": (),
        "not-basic": raw_md(f"Bearer {good}"),
        "not-base64": raw_md("Basic !!!notbase64"),
        "no-colon": raw_md(f"Basic {b64('auth.example' + good)}"),
        "empty-key": raw_md(f"Basic {b64('auth.example:')}"),
        "unknown-key": basic_md("auth.example", "k_" + "x" * 64),
        "unknown-domain": basic_md("nowhere.example", good),
        "key-of-other-domain": basic_md("auth.example", other_key),
        "deactivated": basic_md("auth.example", inactive),
        "expired": basic_md("auth.example", expired),
    }


def _calls(api: RunningApi, md: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    hour = datetime(2026, 1, 1, tzinfo=UTC)
    span = {"domain": "auth.example", "from_date": ts(hour), "to_date": ts(hour + timedelta(1))}
    return {
        "SendHTML": api.mailer().SendHTML(html_request("auth.example", ["a@x.test"]), metadata=md),
        "SendTemplate(readme)": api.mailer(readme=True).SendTemplate(
            mailer_pb.SendTemplateReq(
                sender=send_pb2.Sender(email="a@auth.example"),
                subject="s",
                template_id="template_x@auth.example",
                recipients=[send_pb2.Recipient(email="a@x.test")],
            ),
            metadata=md,
        ),
        "GetStats": api.stats().GetStats(stats_pb.GetStatsReq(**span), metadata=md),
        "GetStatsAggregated(readme)": api.stats(readme=True).GetStatsAggregated(
            stats_pb.GetStatsAggregatedReq(**span), metadata=md
        ),
        "GetAggregatedStats": api.stats_v2().GetAggregatedStats(
            stats2_pb.GetAggregatedStatsReq(**span), metadata=md
        ),
    }


async def test_every_bad_credential_is_unauthenticated_with_one_message(api: RunningApi) -> None:
    bad = await _bad_credentials(api)
    seen = []
    for case, md in bad.items():
        for method, call in _calls(api, md).items():
            code, details = await status_of(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (case, method, details)
            seen.append(details)
    assert set(seen) == {AUTH_FAILED}
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_good_credentials_pass_with_any_case_domain(api: RunningApi) -> None:
    await create_domain(api, "case.example")
    key = await create_key(api, "case.example")
    res = await api.mailer().SendHTML(
        html_request("case.example", ["a@x.test"]), metadata=basic_md("CASE.Example", key)
    )
    assert res.message_id.endswith("@case.example")


async def test_key_of_a_cannot_send_as_b(api: RunningApi) -> None:
    creds_a = await tenant(api, "a.example")
    await tenant(api, "b.example")
    code, details = await status_of(
        api.mailer().SendHTML(html_request("b.example", ["x@x.test"]), metadata=creds_a)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "sender.email" in details and "b.example" in details
    assert await api.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_key_of_a_cannot_use_a_template_of_b(api: RunningApi) -> None:
    creds_a = await tenant(api, "a.example")
    await tenant(api, "b.example")
    created = await api.admin().CreateTemplate(
        admin_pb.CreateTemplateReq(domain="b.example", html="<p>b</p>"), metadata=admin_md()
    )
    code, details = await status_of(
        api.mailer().SendTemplate(
            mailer_pb.SendTemplateReq(
                sender=send_pb2.Sender(email="n@a.example"),
                subject="s",
                template_id=created.template.template_id,
                recipients=[send_pb2.Recipient(email="x@x.test")],
            ),
            metadata=creds_a,
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith("template_id:")


async def test_key_of_a_cannot_read_stats_of_b(api: RunningApi) -> None:
    creds_a = await tenant(api, "a.example")
    await tenant(api, "b.example")
    hour = datetime(2026, 1, 1, tzinfo=UTC)
    span = {"domain": "b.example", "from_date": ts(hour), "to_date": ts(hour + timedelta(1))}
    calls = [
        api.stats().GetStats(stats_pb.GetStatsReq(**span), metadata=creds_a),
        api.stats(readme=True).GetStatsAggregated(
            stats_pb.GetStatsAggregatedReq(**span), metadata=creds_a
        ),
        api.stats_v2().GetAggregatedStats(
            stats2_pb.GetAggregatedStatsReq(**span), metadata=creds_a
        ),
    ]
    for call in calls:
        code, details = await status_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith("domain:") and "b.example" in details


# --- Admin -----------------------------------------------------------------------------------

ADMIN_METHODS = {
    "GetDomains": admin_pb.GetDomainsReq(),
    "GetDomain": admin_pb.GetDomainReq(domain="a.example"),
    "CreateDomain": admin_pb.CreateDomainRequest(domain="new.example"),
    "CreateTemplate": admin_pb.CreateTemplateReq(domain="a.example", html="<p/>"),
    "UpdateTemplate": admin_pb.UpdateTemplateReq(template_id="t", html="<p/>"),
    "DeleteTemplate": admin_pb.DeleteTemplateReq(template_id="t"),
    "GetTemplate": admin_pb.GetTemplateReq(template_id="t"),
    "GetTemplates": admin_pb.GetTemplatesReq(domain="a.example"),
    "CreateAPIKey": admin_pb.CreateAPIKeyRequest(domain="a.example", name="n"),
    "ListAPIKeys": admin_pb.ListAPIKeysRequest(domain="a.example"),
    "GetAPIKey": admin_pb.GetAPIKeyRequest(domain="a.example", id="key_x"),
    "DeactivateAPIKey": admin_pb.DeactivateAPIKeyRequest(domain="a.example", id="key_x"),
}


@pytest.mark.parametrize("readme", [False, True], ids=["original-name", "readme-name"])
async def test_every_admin_method_needs_the_token(api: RunningApi, readme: bool) -> None:
    admin = api.admin(readme)
    a_key = await tenant(api, "a.example")
    wrong = [(), admin_md("wrong-token"), (("x-kannon-admin-token", "nope"),), a_key]
    for method, request in ADMIN_METHODS.items():
        for md in wrong:
            code, details = await status_of(getattr(admin, method)(request, metadata=md))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, md)
            assert "admin token" in details
    assert await api.pool.fetchval("SELECT count(*) FROM domains") == 1


async def test_admin_token_works_as_bearer_or_header(api: RunningApi) -> None:
    for md in (admin_md(), (("x-kannon-admin-token", ADMIN_TOKEN),)):
        res = await api.admin().GetDomains(admin_pb.GetDomainsReq(), metadata=md)
        assert list(res.domains) == []


async def test_without_a_token_admin_serves_loopback_and_warns(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="kannon.api"):
        async with running_api(make_settings(admin_token=None), pool) as open_api:
            res = await open_api.admin().CreateDomain(
                admin_pb.CreateDomainRequest(domain="loop.example")
            )
            assert res.domain == "loop.example"
    assert any("admin_token" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("ipv4:127.0.0.1:1234", True),
        ("ipv4:127.8.9.10:1", True),
        ("ipv6:[::1]:5", True),
        ("ipv6:%5B::1%5D:5", True),
        ("ipv6:[::ffff:127.0.0.1]:5", True),
        ("unix:/run/kannon.sock", True),
        ("unix:", True),
        ("ipv4:10.0.0.7:1234", False),
        ("ipv4:192.168.1.2:5", False),
        ("ipv6:[2001:db8::1]:5", False),
        ("ipv6:[::ffff:10.0.0.1]:5", False),
        ("ipv4:localhost:5", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_loopback_peer(peer: str, loopback: bool) -> None:
    assert is_loopback_peer(peer) is loopback


def test_admin_without_token_refuses_remote_peers() -> None:
    check_admin(None, {}, "ipv4:127.0.0.1:9")
    with pytest.raises(PermissionDenied, match="loopback"):
        check_admin(None, {}, "ipv4:10.1.2.3:9")
    # A token sent anyway does not open the door when none is configured.
    with pytest.raises(PermissionDenied):
        check_admin(None, {"authorization": "Bearer x"}, "ipv6:[2001:db8::1]:9")


def test_admin_with_token_ignores_the_peer() -> None:
    check_admin("tok", {"authorization": "Bearer tok"}, "ipv4:10.1.2.3:9")
    check_admin("tok", {"x-kannon-admin-token": "tok"}, "ipv4:10.1.2.3:9")
    with pytest.raises(Unauthenticated):
        check_admin("tok", {}, "ipv4:127.0.0.1:9")  # loopback is no substitute
    with pytest.raises(Unauthenticated):
        check_admin("tok", {"authorization": "Bearer tok2"}, "ipv4:127.0.0.1:9")


async def test_hz_and_health_are_open(api: RunningApi) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert dict((await api.hz().HZ(hz_pb2.HZRequest())).result) == {}
    res = await health_pb2_grpc.HealthStub(api.channel).Check(health_pb2.HealthCheckRequest())
    assert res.status == health_pb2.HealthCheckResponse.SERVING
