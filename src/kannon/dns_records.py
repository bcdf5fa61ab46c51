"""The DNS records an operator publishes for a Domain, from the stored Domain and the settings.

Shared by the Admin API (Domain.dns_records) and the `kannon domain dns NAME` command; the
record rules themselves are pure and live in :func:`kannon.model.domain.dns_records`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from kannon.config import Settings
from kannon.db.domains import get_domain
from kannon.envelope.dkim import dns_txt_value
from kannon.model.domain import (
    RETIRED,
    DkimKey,
    DnsRecord,
    Domain,
    dkim_dns_record,
    dns_records,
)

if TYPE_CHECKING:
    # Types only: asyncpg is imported at run time by kannon.db alone.
    import asyncpg

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
    now = now or datetime.now(UTC)
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
    pool: asyncpg.Pool, settings: Settings, name: str
) -> list[DnsRecord] | None:
    """The records for the Domain called `name` (any case), or None when there is no such Domain."""
    canonical = name.strip().lower().removesuffix(".")
    domain = await get_domain(pool, canonical)
    return None if domain is None else records_for_domain(settings, domain)
