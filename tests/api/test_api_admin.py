"""Admin API: Domains (canonical names, DKIM keys, DNS records), templates, API keys."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.timestamp_pb2 import Timestamp

from kannon.pb.admin.apiv1 import adminapiv1_pb2 as pb
from tests.api.api_test_support import (
    BOUNCE_HOST,
    SENDING_HOST,
    RunningApi,
    admin_md,
    assert_refusals,
    create_domain,
    status_of,
)

MD = admin_md()
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


# --- Domains ---------------------------------------------------------------------------------


async def test_create_domain_canonicalises_and_generates_an_rsa_2048_key(api: RunningApi) -> None:
    domain = await create_domain(api, "  Mail.Example.COM. ")
    assert domain.domain == "mail.example.com"
    assert domain.dkim_selector == "smtp"
    public = serialization.load_der_public_key(base64.b64decode(domain.dkim_pub_key))
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    row = await api.pool.fetchrow("SELECT * FROM domains WHERE domain = 'mail.example.com'")
    private = serialization.load_der_private_key(
        base64.b64decode(row["dkim_private_key"]), password=None
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.public_key().public_numbers() == public.public_numbers()


async def test_domain_carries_its_dns_records(api: RunningApi) -> None:
    domain = await create_domain(api, "news.example.org")
    records = {(r.type, r.name): r for r in domain.dns_records}
    dkim = records["TXT", "smtp._domainkey.news.example.org"]
    assert dkim.value == f"v=DKIM1; k=rsa; p={domain.dkim_pub_key}"
    assert records["TXT", "news.example.org"].value == f"v=spf1 a:{SENDING_HOST} -all"
    assert records["MX", "news.example.org"].value == f"10 {BOUNCE_HOST}"
    # make_settings uses tracker.base_url https://track.{domain}
    assert records["CNAME", "track.news.example.org"].value == SENDING_HOST
    assert all(r.purpose for r in domain.dns_records)
    got = await api.admin().GetDomain(pb.GetDomainReq(domain="news.example.org"), metadata=MD)
    assert list(got.domain.dns_records) == list(domain.dns_records)


async def test_duplicate_domain_is_already_exists(api: RunningApi) -> None:
    await create_domain(api, "dup.example")
    code, details = await status_of(
        api.admin().CreateDomain(pb.CreateDomainRequest(domain="DUP.example"), metadata=MD)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "domain" in details and "dup.example" in details


@pytest.mark.parametrize(
    "name",
    ["", "   ", "localhost", "bad domain.com", "a..b", "single.", "ex@mple.com", "a" * 64 + ".com"],
)
async def test_invalid_domain_names_are_invalid_argument(api: RunningApi, name: str) -> None:
    code, details = await status_of(
        api.admin().CreateDomain(pb.CreateDomainRequest(domain=name), metadata=MD)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("domain:")
    assert await api.pool.fetchval("SELECT count(*) FROM domains") == 0


async def test_get_domain_not_found(api: RunningApi) -> None:
    code, details = await status_of(
        api.admin().GetDomain(pb.GetDomainReq(domain="nope.example"), metadata=MD)
    )
    assert code == grpc.StatusCode.NOT_FOUND and "nope.example" in details


async def test_get_domains_lists_in_creation_order(api: RunningApi) -> None:
    for name in ("b.example", "a.example", "c.example"):
        await create_domain(api, name)
    res = await api.admin().GetDomains(pb.GetDomainsReq(), metadata=MD)
    assert [d.domain for d in res.domains] == ["b.example", "a.example", "c.example"]


# --- Templates -------------------------------------------------------------------------------


async def test_templates_listing_pages_and_hides_transient_ones(api: RunningApi) -> None:
    await create_domain(api, "t.example")
    admin = api.admin()
    ids = []
    for i in range(60):
        res = await admin.CreateTemplate(
            pb.CreateTemplateReq(domain="t.example", html=f"<p>{i}</p>", title=f"t{i}"),
            metadata=MD,
        )
        ids.append(res.template.template_id)
    await api.pool.execute(
        """INSERT INTO templates (template_id, html, domain, type)
           VALUES ('template_transient@t.example', '<p>x</p>', 't.example', 'transient')"""
    )
    first = await admin.GetTemplates(pb.GetTemplatesReq(domain="t.example"), metadata=MD)
    assert first.total == 60
    assert [t.template_id for t in first.templates] == ids[:50]  # take=0: default page of 50
    rest = await admin.GetTemplates(
        pb.GetTemplatesReq(domain="t.example", skip=50, take=20), metadata=MD
    )
    assert [t.template_id for t in rest.templates] == ids[50:]
    assert all(t.type == "template" for t in (*first.templates, *rest.templates))
    # The transient one is still reachable by id.
    got = await admin.GetTemplate(
        pb.GetTemplateReq(template_id="template_transient@t.example"), metadata=MD
    )
    assert got.template.type == "transient"


async def test_template_validation_and_not_found(api: RunningApi) -> None:
    await create_domain(api, "v.example")
    await assert_refusals(
        api,
        [
            (pb.CreateTemplateReq(domain="v.example", html=" "), INVALID, "html:"),
            (
                pb.CreateTemplateReq(domain="v.example", html="<p/>", title="x" * 201),
                INVALID,
                "title:",
            ),
            (pb.CreateTemplateReq(domain="", html="<p/>"), INVALID, "domain:"),
            (pb.CreateTemplateReq(domain="none.example", html="<p/>"), NOT_FOUND, "domain:"),
            (pb.GetTemplateReq(template_id=""), INVALID, "template_id:"),
            (pb.GetTemplateReq(template_id="template_x@v.example"), NOT_FOUND, "template_id:"),
            (
                pb.UpdateTemplateReq(template_id="template_x@v.example", html="<p/>"),
                NOT_FOUND,
                "template_id:",
            ),
            (pb.DeleteTemplateReq(template_id="template_x@v.example"), NOT_FOUND, "template_id:"),
            (pb.GetTemplatesReq(domain="none.example"), NOT_FOUND, "domain:"),
        ],
    )


async def test_update_template_changes_html_title_and_time(api: RunningApi) -> None:
    await create_domain(api, "u.example")
    created = await api.admin().CreateTemplate(
        pb.CreateTemplateReq(domain="u.example", html="<p>a</p>", title="A"), metadata=MD
    )
    tid = created.template.template_id
    before = await api.pool.fetchval("SELECT updated_at FROM templates WHERE template_id=$1", tid)
    await api.admin().UpdateTemplate(
        pb.UpdateTemplateReq(template_id=tid, html="<p>b</p>", title=""), metadata=MD
    )
    row = await api.pool.fetchrow("SELECT * FROM templates WHERE template_id=$1", tid)
    assert (row["html"], row["title"]) == ("<p>b</p>", "")
    assert row["updated_at"] >= before


# --- API keys --------------------------------------------------------------------------------


async def test_api_key_plaintext_is_returned_once_and_stored_hashed(api: RunningApi) -> None:
    await create_domain(api, "k.example")
    res = await api.admin().CreateAPIKey(
        pb.CreateAPIKeyRequest(domain="K.example", name="  deploy  "), metadata=MD
    )
    plaintext = res.key
    assert len(plaintext) == 66 and plaintext.startswith("k_") and plaintext[2:].isalnum()
    assert res.api_key.id.startswith("key_") and len(res.api_key.id) == 28
    assert res.api_key.name == "deploy" and res.api_key.domain == "k.example"
    assert res.api_key.is_active and not res.api_key.HasField("expires_at")
    row = await api.pool.fetchrow("SELECT * FROM api_keys")
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row["key_prefix"] == plaintext[:8]
    got = await api.admin().GetAPIKey(
        pb.GetAPIKeyRequest(domain="k.example", id=res.api_key.id), metadata=MD
    )
    assert plaintext not in str(got) and got.api_key.key == plaintext[:8] + "..."


async def test_api_key_expiry_must_be_in_the_future(api: RunningApi) -> None:
    await create_domain(api, "e.example")
    past = datetime.now(UTC) - timedelta(minutes=1)
    code, details = await status_of(
        api.admin().CreateAPIKey(
            pb.CreateAPIKeyRequest(domain="e.example", name="n", expires_at=ts(past)), metadata=MD
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("expires_at:")
    future = datetime.now(UTC) + timedelta(days=30)
    res = await api.admin().CreateAPIKey(
        pb.CreateAPIKeyRequest(domain="e.example", name="n", expires_at=ts(future)), metadata=MD
    )
    assert res.api_key.expires_at.ToDatetime(tzinfo=UTC) == future


async def test_list_api_keys_pages_and_filters_active(api: RunningApi) -> None:
    await create_domain(api, "l.example")
    await create_domain(api, "other.example")
    admin = api.admin()
    ids = []
    for i in range(5):
        res = await admin.CreateAPIKey(
            pb.CreateAPIKeyRequest(domain="l.example", name=f"k{i}"), metadata=MD
        )
        ids.append(res.api_key.id)
    await admin.CreateAPIKey(pb.CreateAPIKeyRequest(domain="other.example", name="o"), metadata=MD)
    await admin.DeactivateAPIKey(
        pb.DeactivateAPIKeyRequest(domain="l.example", id=ids[0]), metadata=MD
    )
    # An expired key is not "active" even though nobody deactivated it.
    await api.pool.execute(
        "UPDATE api_keys SET expires_at = now() at time zone 'utc' - interval '1 hour' "
        "WHERE id = $1",
        ids[1],
    )
    every = await admin.ListAPIKeys(pb.ListAPIKeysRequest(domain="l.example"), metadata=MD)
    assert every.total == 5 and {k.id for k in every.api_keys} == set(ids)
    active = await admin.ListAPIKeys(
        pb.ListAPIKeysRequest(domain="l.example", only_active=True), metadata=MD
    )
    assert active.total == 3 and {k.id for k in active.api_keys} == set(ids[2:])
    paged = await admin.ListAPIKeys(
        pb.ListAPIKeysRequest(domain="l.example", limit=2, offset=1), metadata=MD
    )
    assert paged.total == 5 and len(paged.api_keys) == 2
    assert [k.id for k in paged.api_keys] == [k.id for k in every.api_keys][1:3]


async def test_deactivate_is_permanent_and_scoped_to_the_domain(api: RunningApi) -> None:
    await create_domain(api, "d.example")
    await create_domain(api, "x.example")
    admin = api.admin()
    key = (
        await admin.CreateAPIKey(pb.CreateAPIKeyRequest(domain="d.example", name="n"), metadata=MD)
    ).api_key
    code, _ = await status_of(
        admin.DeactivateAPIKey(
            pb.DeactivateAPIKeyRequest(domain="x.example", id=key.id), metadata=MD
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    first = await admin.DeactivateAPIKey(
        pb.DeactivateAPIKeyRequest(domain="d.example", id=key.id), metadata=MD
    )
    again = await admin.DeactivateAPIKey(
        pb.DeactivateAPIKeyRequest(domain="d.example", id=key.id), metadata=MD
    )
    assert not again.api_key.is_active
    assert again.api_key.deactivated_at == first.api_key.deactivated_at


async def test_api_key_validation_errors(api: RunningApi) -> None:
    await create_domain(api, "w.example")
    await assert_refusals(
        api,
        [
            (pb.CreateAPIKeyRequest(domain="w.example", name=""), INVALID, "name:"),
            (pb.CreateAPIKeyRequest(domain="w.example", name="n" * 101), INVALID, "name:"),
            (pb.CreateAPIKeyRequest(domain="", name="n"), INVALID, "domain:"),
            (pb.CreateAPIKeyRequest(domain="missing.example", name="n"), NOT_FOUND, "domain:"),
            (pb.GetAPIKeyRequest(domain="w.example", id="abc"), INVALID, "id:"),
            (pb.GetAPIKeyRequest(domain="w.example", id="key_nothere"), NOT_FOUND, "id:"),
            (pb.ListAPIKeysRequest(domain="missing.example"), NOT_FOUND, "domain:"),
        ],
    )
