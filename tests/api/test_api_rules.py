"""Pure rules behind the API: names, sender authorisation, credentials, paging, ids, DNS records."""

from __future__ import annotations

import asyncio
import base64
import re
import sys
from datetime import UTC, datetime

import asyncpg
import pytest

from kannon.dns_records import records_for_domain, records_for_domain_name
from kannon.ids import new_api_key, new_api_key_id, new_template_id, new_token
from kannon.model.apikey import AUTH_FAILED, hash_key, parse_basic_authorization
from kannon.model.domain import Domain, canonical_domain_name, sender_domain_allowed
from kannon.model.errors import InvalidArgument, Unauthenticated
from kannon.wire.api import page
from tests.api.api_test_support import BOUNCE_HOST, SENDING_HOST, make_settings
from tests.support import store_domain


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("Example.COM", "example.com"),
        (" mail.example.com. ", "mail.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("_dmarc-ok.example", "_dmarc-ok.example"),
    ],
)
def test_canonical_domain_names(given: str, canonical: str) -> None:
    assert canonical_domain_name(given) == canonical


@pytest.mark.parametrize(
    "bad", ["", "com", "a b.com", "a..com", ".a.com", "a.com..", "x" * 250 + ".com"]
)
def test_bad_domain_names_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^domain:"):
        canonical_domain_name(bad)


@pytest.mark.parametrize(
    ("sender", "tenant", "allowed"),
    [
        ("example.com", "example.com", True),
        ("example.com", "mail.example.com", True),
        ("example.com", "a.b.example.com", True),
        ("mail.example.com", "example.com", False),
        ("evil-example.com", "example.com", False),
        ("ample.com", "example.com", False),
        ("other.com", "example.com", False),
    ],
)
def test_sender_domain_is_tenant_or_parent(sender: str, tenant: str, allowed: bool) -> None:
    assert sender_domain_allowed(sender, tenant) is allowed


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_credentials_parse() -> None:
    creds = parse_basic_authorization(_basic("Mail.Example.com.:k_secret:with:colons"))
    assert creds.domain == "mail.example.com"
    assert creds.key_hash == hash_key("k_secret:with:colons")
    assert parse_basic_authorization("basic " + _basic("a.b:k")[6:]).domain == "a.b"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Bearer abc",
        "Basic %%%",
        _basic("nocolon"),
        _basic(":k"),
        _basic("a.b:"),
        "Basic " + base64.b64encode(b"\xff\xfe:k").decode(),
    ],
)
def test_malformed_basic_credentials_are_one_uniform_error(header: str | None) -> None:
    with pytest.raises(Unauthenticated) as raised:
        parse_basic_authorization(header)
    assert str(raised.value) == AUTH_FAILED


def test_paging() -> None:
    assert page(0, 0, default=50, cap=1000) == page(0, 50, default=50, cap=1000)
    assert page(5, 5000, default=50, cap=1000).limit == 1000
    assert page(-3, 7, default=50, cap=1000).offset == 0


def test_id_formats() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"[a-z][a-z0-9]{23}", t) for t in tokens)
    assert re.fullmatch(r"template_[a-z][a-z0-9]{23}@d\.example", new_template_id("d.example"))
    assert re.fullmatch(r"key_[a-z][a-z0-9]{23}", new_api_key_id())
    assert re.fullmatch(r"k_[A-Za-z0-9]{64}", new_api_key())


def _domain(name: str) -> Domain:
    return Domain(name, "MIIBIjAN", "smtp", datetime(2026, 1, 1, tzinfo=UTC))


def test_tracker_cname_only_when_the_tracker_host_is_under_the_domain() -> None:
    under = records_for_domain(make_settings(), _domain("d.example"))
    assert ("CNAME", "track.d.example", SENDING_HOST) in [(r.type, r.name, r.value) for r in under]
    elsewhere = make_settings().model_copy(
        update={
            "tracker": make_settings().tracker.model_copy(
                update={"base_url": "https://t.kannon.test"}
            )
        }
    )
    records = records_for_domain(elsewhere, _domain("d.example"))
    assert [r.type for r in records] == ["TXT", "TXT", "MX"]


async def test_records_for_domain_name_reads_the_stored_domain(pool: asyncpg.Pool) -> None:
    await store_domain(pool, "dns.example", public_key="UEsDBA==", selector="sel2026")
    records = await records_for_domain_name(pool, make_settings(), "DNS.Example")
    assert records is not None
    assert [(r.type, r.name, r.value) for r in records] == [
        ("TXT", "sel2026._domainkey.dns.example", "v=DKIM1; k=rsa; p=UEsDBA=="),
        ("TXT", "dns.example", f"v=spf1 a:{SENDING_HOST} -all"),
        ("MX", "dns.example", f"10 {BOUNCE_HOST}"),
        ("CNAME", "track.dns.example", SENDING_HOST),
    ]
    assert await records_for_domain_name(pool, make_settings(), "missing.example") is None


async def test_domain_dns_command_prints_the_records(pool: asyncpg.Pool, database_url: str) -> None:
    await store_domain(pool, "cli.example", public_key="UEsDBA==")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kannon.cli",
        "domain",
        "dns",
        "cli.example",
        "--database-url",
        database_url,
        "--sender-hostname",
        SENDING_HOST,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "smtp._domainkey.cli.example" in text and "v=DKIM1; k=rsa; p=UEsDBA==" in text
    assert f"v=spf1 a:{SENDING_HOST} -all" in text
