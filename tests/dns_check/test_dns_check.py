"""The DNS check against a real DNS server (dnsmasq on loopback) serving, for three Domains,
every record right, none at all, and each one wrong."""

from __future__ import annotations

from datetime import UTC, datetime

from kannon.dns_check import DkimExpectation, check_domain, make_resolver
from kannon.envelope.dkim import ED25519_SHA256, dns_txt_value, generate_ed25519_keypair
from kannon.model.domain import DkimKey, DnsRecord, Domain, dkim_dns_record, dns_records
from tests.peers.dns import DnsServer

SENDING_HOST = "out.kannon.test"
BOUNCE_HOST = "bounces.kannon.test"
NOW = datetime(2026, 11, 28, tzinfo=UTC)
_, PUBLIC = generate_ed25519_keypair()
_, OTHER_PUBLIC = generate_ed25519_keypair()


def expectations(domain: str) -> tuple[list[DkimExpectation], list[DnsRecord]]:
    key = DkimKey(domain, "sel", ED25519_SHA256, PUBLIC, NOW, NOW)
    record = dkim_dns_record(key, dns_txt_value(PUBLIC, ED25519_SHA256), NOW)
    stored = Domain(domain, "", "sel", NOW, dkim_keys=(key,))
    records = dns_records(
        stored,
        dkim_value="",
        sending_host=SENDING_HOST,
        bounce_mx_host=BOUNCE_HOST,
        tracker_host=f"track.{domain}",
        dkim=[record],
    )
    return [DkimExpectation("sel", "ed25519", PUBLIC, record)], list(records)


async def run(server: DnsServer, domain: str) -> dict[str, tuple[str, str]]:
    keys, records = expectations(domain)
    checks = await check_domain(
        make_resolver([server.address]),
        domain=domain,
        records=records,
        dkim_keys=keys,
        sending_host=SENDING_HOST,
        bounce_host=BOUNCE_HOST,
        tracker_host=f"track.{domain}",
    )
    return {c.kind: (c.status, c.detail) for c in checks}


async def test_correct_missing_and_wrong_records(dns_server: DnsServer) -> None:
    dns_server.add_zone("test")
    dns_server.add_host(SENDING_HOST, "192.0.2.10")
    dns_server.add_host("elsewhere.test", "192.0.2.99")
    # good.test: everything as Kannon asks (SPF through an include and an ip4 range).
    dns_server.add_txt("good.test", "v=spf1 include:_spf.good.test -all")
    dns_server.add_txt("_spf.good.test", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_server.add_txt("sel._domainkey.good.test", dns_txt_value(PUBLIC, ED25519_SHA256))
    dns_server.add_txt("_dmarc.good.test", "v=DMARC1; p=quarantine; rua=mailto:d@good.test")
    dns_server.add_mx("good.test", BOUNCE_HOST, 10)
    dns_server.add_host("track.good.test", "192.0.2.10")
    # wrong.test: each record present and wrong.
    dns_server.add_txt("wrong.test", "v=spf1 a:elsewhere.test -all")
    dns_server.add_txt("sel._domainkey.wrong.test", dns_txt_value(OTHER_PUBLIC, ED25519_SHA256))
    dns_server.add_txt("_dmarc.wrong.test", "v=DMARC1; p=whatever")
    dns_server.add_mx("wrong.test", "mx.elsewhere.test", 10)
    dns_server.add_host("track.wrong.test", "192.0.2.99")
    # missing.test: nothing (its zone is local, so every name is NXDOMAIN).
    dns_server.add_zone("missing.test")
    dns_server.start()

    good = await run(dns_server, "good.test")
    assert {kind: status for kind, (status, _) in good.items()} == dict.fromkeys(
        ("spf", "dkim", "dmarc", "bounce_mx", "tracker"), "ok"
    )
    assert "quarantine" in good["dmarc"][1]

    missing = await run(dns_server, "missing.test")
    assert {kind: status for kind, (status, _) in missing.items()} == dict.fromkeys(
        ("spf", "dkim", "dmarc", "bounce_mx", "tracker"), "missing"
    )

    wrong = await run(dns_server, "wrong.test")
    assert {kind: status for kind, (status, _) in wrong.items()} == dict.fromkeys(
        ("spf", "dkim", "dmarc", "bounce_mx", "tracker"), "wrong"
    )
    assert SENDING_HOST in wrong["spf"][1]
    assert "mx.elsewhere.test" in wrong["bounce_mx"][1]


async def test_dmarc_is_inherited_from_the_parent_domain(dns_server: DnsServer) -> None:
    dns_server.add_zone("test")
    dns_server.add_txt("_dmarc.parent.test", "v=DMARC1; p=reject")
    dns_server.start()
    checks = await run(dns_server, "mail.parent.test")
    assert checks["dmarc"][0] == "ok"
    assert "reject" in checks["dmarc"][1] and "parent.test" in checks["dmarc"][1]
