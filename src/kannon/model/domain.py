"""The Domain (sender tenant): canonical names, who may send as it, and the DNS records it needs.

A Domain name is stored in one canonical form — lower-case A-labels, no trailing dot — and must
pass the same rule as the `domains_domain_canonical` CHECK of the schema
(``^[a-z0-9_-]+(\\.[a-z0-9_-]+)+$``), so a bad name is refused here with a message naming the
field instead of surfacing as a constraint violation.

Pure: no I/O; the DNS record values are computed from what the caller passes in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import idna

from kannon.model.address import ascii_domain
from kannon.model.errors import InvalidArgument

MAX_DOMAIN_NAME = 253  # DNS limit; the column allows 254
MAX_LABEL = 63
DEFAULT_DKIM_SELECTOR = "smtp"
_CANONICAL = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)+")


@dataclass(frozen=True)
class Domain:
    name: str
    dkim_public_key: str  # base64 SubjectPublicKeyInfo DER: the DKIM `p=` value
    dkim_selector: str
    created_at: datetime


@dataclass(frozen=True)
class DnsRecord:
    """One record an operator publishes for a Domain; `purpose` says why, for people."""

    type: str
    name: str
    value: str
    purpose: str


def canonical_domain_name(value: str, field: str = "domain") -> str:
    """The canonical form of a Domain name, or InvalidArgument naming `field`.

    Case and one trailing dot are forgiven (DNS is case-insensitive and `example.com.` is the
    same name); internationalised names become their A-label form.
    """
    name = value.strip()
    if not name:
        raise InvalidArgument(f"{field}: a domain name is required")
    try:
        name = ascii_domain(name)
    except idna.IDNAError as exc:
        raise InvalidArgument(
            f"{field}: {value!r} is not a valid internationalised domain name ({exc})"
        ) from None
    if len(name) > MAX_DOMAIN_NAME:
        raise InvalidArgument(
            f"{field}: the domain name is longer than {MAX_DOMAIN_NAME} characters"
        )
    if not _CANONICAL.fullmatch(name):
        raise InvalidArgument(
            f"{field}: {value!r} is not a domain name (need at least two dot-separated labels of "
            "letters, digits, '-' or '_', e.g. mail.example.com)"
        )
    for label in name.split("."):
        if len(label) > MAX_LABEL:
            raise InvalidArgument(
                f"{field}: the label {label!r} is longer than {MAX_LABEL} characters"
            )
    return name


def sender_domain_allowed(sender_domain: str, tenant: str) -> bool:
    """True when mail from `sender_domain` may be sent by the `tenant` Domain.

    The tenant itself, or a parent of it: a tenant `mail.example.com` proves control of a
    subdomain of `example.com` and may use `news@example.com` (as in the original). Both names
    must already be canonical (lower-case, no trailing dot).
    """
    return sender_domain == tenant or tenant.endswith("." + sender_domain)


def dkim_record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def is_strict_subdomain(host: str, domain: str) -> bool:
    return host.endswith("." + domain) and host != domain


def dns_records(
    domain: Domain,
    *,
    dkim_value: str,
    sending_host: str,
    bounce_mx_host: str,
    tracker_host: str | None,
) -> list[DnsRecord]:
    """The records that make a Domain's mail verifiable and its bounces and clicks come home.

    * DKIM TXT at ``<selector>._domainkey.<domain>`` with `dkim_value` (``v=DKIM1; k=rsa;
      p=<public key>``): receivers verify our signatures with it.
    * SPF TXT at the domain: bounce addresses (SMTP MAIL FROM) live under the Domain, so SPF is
      checked against it; it authorises the host the SMTPSender sends from.
    * MX at the domain: DSNs for ``bump_...@<domain>`` must reach Kannon's SMTPServer.
    * CNAME for the tracker host, only when it is a subdomain of the Domain (when the tracker
      base URL points elsewhere, that host is the operator's to publish, not the tenant's).
    """
    name = domain.name
    records = [
        DnsRecord(
            "TXT",
            dkim_record_name(domain.dkim_selector, name),
            dkim_value,
            "dkim: public key receivers use to verify Kannon's DKIM signatures",
        ),
        DnsRecord(
            "TXT",
            name,
            f"v=spf1 a:{sending_host} -all",
            f"spf: authorises {sending_host} to send with bounce addresses under {name} "
            "(merge with an existing SPF record: one per name)",
        ),
        DnsRecord(
            "MX",
            name,
            f"10 {bounce_mx_host}",
            f"bounces: delivery reports to bump_...@{name} reach Kannon's SMTP server",
        ),
    ]
    if tracker_host is not None and is_strict_subdomain(tracker_host, name):
        records.append(
            DnsRecord(
                "CNAME",
                tracker_host,
                sending_host,
                "tracking: host of open-pixel and click links",
            )
        )
    return records
