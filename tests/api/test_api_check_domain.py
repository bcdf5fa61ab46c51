"""Admin CheckDomain against real DNS: a lookup the resolver refuses is reported as that
record's `error` while the others still report; resolvers that do not answer at all make the
call UNAVAILABLE (nothing can be said, retry later)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import asyncpg
import grpc
import pytest

from kannon.config import Settings
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from tests.api.api_test_support import (
    ADMIN_TOKEN,
    BOUNCE_HOST,
    SENDING_HOST,
    admin_md,
    create_domain,
    running_api,
    status_of,
)
from tests.peers.dns import DnsServer

DOMAIN = "half.test"


def settings_with(dns_servers: list[str]) -> Settings:
    return Settings.model_validate(
        {
            "api": {"port": 0, "http_port": 0, "host": "127.0.0.1", "admin_token": ADMIN_TOKEN},
            "sender": {"hostname": SENDING_HOST, "dns_servers": dns_servers},
            "smtp": {"domain": BOUNCE_HOST},
            "tracker": {"base_url": "https://track.{domain}"},
        }
    )


@pytest.fixture
def silent_resolver() -> Iterator[str]:
    """A UDP port that is bound (no ICMP refusal) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_refused_lookup_is_that_records_error(
    pool: asyncpg.Pool,
    dns_server: DnsServer,
) -> None:
    dns_server.add_zone(DOMAIN)
    dns_server.add_host(SENDING_HOST, "192.0.2.10")
    # The include's zone is not served: dnsmasq (no upstream) answers REFUSED for it.
    dns_server.add_txt(DOMAIN, "v=spf1 include:_spf.outside.example -all")
    dns_server.start()
    async with running_api(settings_with([dns_server.address]), pool) as api:
        await create_domain(api, DOMAIN)
        res = await api.admin().CheckDomain(
            admin_pb.CheckDomainReq(domain=DOMAIN), metadata=admin_md()
        )
    by_kind = {check.kind: check for check in res.checks}
    assert not res.ok
    assert by_kind["spf"].status == "error"
    assert "_spf.outside.example" in by_kind["spf"].detail
    assert "REFUSED" in by_kind["spf"].detail
    assert by_kind["spf"].expected.value.startswith("v=spf1")
    # The other records were still looked up and reported.
    others = {kind: check.status for kind, check in by_kind.items() if kind != "spf"}
    assert others == dict.fromkeys(("dkim", "dmarc", "bounce_mx", "tracker"), "missing")


async def test_resolvers_that_do_not_answer_make_it_unavailable(
    pool: asyncpg.Pool, silent_resolver: str
) -> None:
    async with running_api(settings_with([silent_resolver]), pool) as api:
        await create_domain(api, DOMAIN)
        code, details = await status_of(
            api.admin().CheckDomain(admin_pb.CheckDomainReq(domain=DOMAIN), metadata=admin_md())
        )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "did not answer" in details and silent_resolver.split(":", maxsplit=1)[0] in details
