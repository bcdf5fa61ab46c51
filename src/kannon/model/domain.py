"""The Domain (sender tenant): canonical names, who may send as it, and the DNS records it needs.

A Domain name is stored in one canonical form — lower-case A-labels, no trailing dot — and must
pass the same rule as the `domains_domain_canonical` CHECK of the schema
(``^[a-z0-9_-]+(\\.[a-z0-9_-]+)+$``), so a bad name is refused here with a message naming the
field instead of surfacing as a constraint violation.

A Domain signs with DKIM keys (:class:`DkimKey`) that rotate (ADR 0035): a new key is *pending*
until its DNS record is confirmed (by the operator or by the DNS check), then *active*; the key
it replaces keeps signing beside it, *retiring*, until the grace period ends, and is *retired*
after that. A pending key never signs, so no message carries a signature its receiver cannot
verify.

Pure: no I/O; the DNS record values are computed from what the caller passes in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import idna

from kannon.model.address import ascii_domain
from kannon.model.errors import InvalidArgument
from kannon.model.ip_pool import DEFAULT_POOL
from kannon.model.tracking import DEFAULT_CEILING, TrackingPolicy

MAX_DOMAIN_NAME = 253  # DNS limit; the column allows 254
MAX_LABEL = 63
DEFAULT_DKIM_SELECTOR = "smtp"
DEFAULT_ED25519_SELECTOR = "smtp-ed25519"
RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"
KEY_ALGORITHMS = (RSA_SHA256, ED25519_SHA256)
PENDING = "pending"
ACTIVE = "active"
RETIRING = "retiring"
RETIRED = "retired"
_CANONICAL = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)+")
_SELECTOR = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


@dataclass(frozen=True)
class DkimKey:
    """One DKIM key of a Domain; its status depends on the time asked about."""

    domain: str
    selector: str
    algorithm: str
    public_key: str  # the DNS `p=` value
    created_at: datetime
    confirmed_at: datetime | None = None
    retire_at: datetime | None = None

    def status(self, now: datetime) -> str:
        if self.confirmed_at is None:
            return PENDING
        if self.retire_at is None:
            return ACTIVE
        return RETIRING if now < self.retire_at else RETIRED

    def signs(self, now: datetime) -> bool:
        return self.status(now) in (ACTIVE, RETIRING)


@dataclass(frozen=True)
class Domain:
    name: str
    dkim_public_key: str  # base64 SubjectPublicKeyInfo DER: the DKIM `p=` value
    dkim_selector: str
    created_at: datetime
    tracking: TrackingPolicy = DEFAULT_CEILING
    one_click_unsubscribe: bool = False
    dkim_keys: tuple[DkimKey, ...] = field(default=())
    ip_pool: str = DEFAULT_POOL
    """The IP pool its Batches are sent through unless a Batch names another (ADR 0039)."""


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


def check_selector(selector: str, field: str = "selector") -> str:
    value = selector.strip().lower()
    if not _SELECTOR.fullmatch(value) or len(value) > MAX_LABEL:
        raise InvalidArgument(f"{field}: {selector!r} is not a DKIM selector")
    return value


def rotation_selectors(now: datetime) -> dict[str, str]:
    """The selectors of the keys a rotation at `now` creates, by algorithm: dated to the
    second, so they sort by age and never repeat an earlier rotation's."""
    stamp = now.strftime("k%Y%m%d%H%M%S")
    return {RSA_SHA256: f"{stamp}-rsa", ED25519_SHA256: f"{stamp}-ed25519"}


def is_strict_subdomain(host: str, domain: str) -> bool:
    return host.endswith("." + domain) and host != domain


def dkim_dns_record(key: DkimKey, value: str, now: datetime) -> DnsRecord:
    """The TXT record of one key; `value` is its ``v=DKIM1; k=...; p=...`` text."""
    status = key.status(now)
    why = {
        PENDING: "publish it, then confirm it (ConfirmDkimKeys or CheckDomain) to sign with it",
        ACTIVE: "receivers verify Kannon's signatures with it",
        RETIRING: "still signs until its successor's grace period ends; keep it",
        RETIRED: "no longer signs; keep it while mail signed with it may still be verified",
    }[status]
    return DnsRecord(
        "TXT",
        dkim_record_name(key.selector, key.domain),
        value,
        f"dkim ({key.algorithm}, {status}): {why}",
    )


def dns_records(
    domain: Domain,
    *,
    dkim_value: str,
    sending_host: str,
    bounce_mx_host: str,
    tracker_host: str | None,
    dkim: Sequence[DnsRecord] = (),
) -> list[DnsRecord]:
    """The records that make a Domain's mail verifiable and its bounces and clicks come home.

    * DKIM TXT at ``<selector>._domainkey.<domain>`` with `dkim_value` (``v=DKIM1; k=rsa;
      p=<public key>``): receivers verify our signatures with it. `dkim`, when given, replaces
      it with one record per key (see ``dkim_dns_record``).
    * SPF TXT at the domain: bounce addresses (SMTP MAIL FROM) live under the Domain, so SPF is
      checked against it; it authorises the host the SMTPSender sends from.
    * MX at the domain: DSNs for ``bump_...@<domain>`` must reach Kannon's SMTPServer.
    * CNAME for the tracker host, only when it is a subdomain of the Domain (when the tracker
      base URL points elsewhere, that host is the operator's to publish, not the tenant's).
    """
    name = domain.name
    records = list(dkim) or [
        DnsRecord(
            "TXT",
            dkim_record_name(domain.dkim_selector, name),
            dkim_value,
            "dkim: public key receivers use to verify Kannon's DKIM signatures",
        )
    ]
    records += [
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
