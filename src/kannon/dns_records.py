"""The DNS records an operator publishes for a Domain, from the stored Domain and the settings,
and the check of what real DNS says about them.

Shared by the Admin API (Domain.dns_records, CheckDomain) and the `kannon domain dns NAME` and
`kannon domain check NAME` commands; the record rules themselves are pure and live in
:func:`kannon.model.domain.dns_records`, the lookups in :mod:`kannon.dns_check`. A check that
finds a pending DKIM key's record correct confirms the key (ADR 0035).
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from kannon.config import Settings
from kannon.db.database import Database
from kannon.db.domains import confirm_keys, get_domain
from kannon.dns_check import OK, Check, DkimExpectation, check_domain, make_resolver
from kannon.envelope.dkim import dns_txt_value
from kannon.model.domain import (
    ED25519_SHA256,
    PENDING,
    RETIRED,
    DkimKey,
    DnsRecord,
    Domain,
    dkim_dns_record,
    dns_records,
)
from kannon.runtime.clock import utc_now

__all__ = ["DnsRecord", "records_for_domain", "records_for_domain_name"]


def sending_host(settings: Settings) -> str:
    """The host outgoing mail comes from; without sender.hostname, the SMTP server's name."""
    return settings.sender.hostname or settings.smtp.domain


def tracker_host(settings: Settings, domain: str) -> str | None:
    base = settings.tracker.base_url.replace("{domain}", domain)
    host = urlsplit(base).hostname
    return host.lower() if host else None


def dkim_record(key: DkimKey, now: datetime) -> DnsRecord:
    return dkim_dns_record(key, dns_txt_value(key.public_key, key.algorithm), now)


def records_for_domain(
    settings: Settings, domain: Domain, now: datetime | None = None
) -> list[DnsRecord]:
    """Every record to publish: one TXT per DKIM key that is pending, signing or retiring (a
    retired key's record is the operator's to remove when it suits), SPF, MX, tracker."""
    now = now or utc_now()
    keys = [dkim_record(k, now) for k in domain.dkim_keys if k.status(now) != RETIRED]
    return dns_records(
        domain,
        dkim_value=dns_txt_value(domain.dkim_public_key),
        sending_host=sending_host(settings),
        bounce_mx_host=settings.smtp.domain,
        tracker_host=tracker_host(settings, domain.name),
        dkim=keys,
    )


async def records_for_domain_name(
    db: Database, settings: Settings, name: str
) -> list[DnsRecord] | None:
    """The records for the Domain called `name` (any case), or None when there is no such Domain."""
    canonical = name.strip().lower().removesuffix(".")
    domain = await get_domain(db, canonical)
    return None if domain is None else records_for_domain(settings, domain)


async def check_domain_dns(
    db: Database, settings: Settings, domain: Domain, now: datetime
) -> tuple[list[Check], list[DkimKey]]:
    """Check `domain`'s records in DNS (`sender.dns_servers`); confirm each pending DKIM key
    whose record is correct. Returns the checks and the keys confirmed."""
    live = [k for k in domain.dkim_keys if k.status(now) != RETIRED]
    expectations = [
        DkimExpectation(
            k.selector,
            "ed25519" if k.algorithm == ED25519_SHA256 else "rsa",
            k.public_key,
            dkim_record(k, now),
        )
        for k in live
    ]
    checks = await check_domain(
        make_resolver(settings.sender.dns_servers),
        domain=domain.name,
        records=records_for_domain(settings, domain, now),
        dkim_keys=expectations,
        sending_host=sending_host(settings),
        bounce_host=settings.smtp.domain,
        tracker_host=tracker_host(settings, domain.name),
    )
    published = {c.name for c in checks if c.kind == "dkim" and c.status == OK}
    confirmed: list[DkimKey] = []
    for key in live:
        if key.status(now) == PENDING and dkim_record(key, now).name in published:
            confirmed += await confirm_keys(
                db, domain.name, key.selector, now, settings.dkim.rotation_grace
            )
    return checks, confirmed
