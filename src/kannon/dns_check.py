"""The DNS check of a Domain: what real DNS says about each record Kannon needs (ADR 0035).

Looked up with dnspython through the configured resolvers (`sender.dns_servers`, else the
system's), each reported ``ok``, ``missing`` or ``wrong`` with what was found and the record to
publish:

* ``spf``: one ``v=spf1`` TXT at the Domain whose mechanisms authorise the sending host
  (``a:<host>``, ``include:<host>``, or ``ip4:``/``ip6:``/``a``/``mx`` covering one of its
  addresses; ``include:`` and ``redirect=`` are followed, at most 10 lookups as RFC 7208 says);
* ``dkim``: for every pending, signing and retiring key, the TXT at its selector carries the same
  key type and ``p=``; a pending key found correct is confirmed by the caller (it may sign);
* ``dmarc``: a ``v=DMARC1`` TXT with a ``p=`` policy at ``_dmarc.<domain>`` or, as receivers
  fall back, at the parent domains'; the policy is reported;
* ``bounce_mx``: the Domain's MX (bounce addresses live under it) names Kannon's SMTP host;
* ``tracker``: the tracker host resolves, and when it is the Domain's own subdomain, to the
  addresses of the host it should alias.

NXDOMAIN and an empty answer are ``missing``. A lookup the resolvers answer with an error
(SERVFAIL, REFUSED, a timeout after other lookups were answered) makes its check ``error``, with
the reason, and the other checks still report. When the resolvers do not answer at all (the
first lookup times out), :class:`kannon.model.errors.Unavailable` is raised: nothing can be said.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from kannon.model.domain import DnsRecord, dkim_record_name
from kannon.model.errors import Unavailable

OK = "ok"
MISSING = "missing"
WRONG = "wrong"
ERROR = "error"
"""The lookup failed (the resolver answered with an error): the record's state is unknown."""
SPF_LOOKUP_LIMIT = 10
DMARC_SUGGESTED = "v=DMARC1; p=none; adkim=r; aspf=r"


@dataclass(frozen=True)
class Check:
    kind: str
    name: str
    status: str
    detail: str
    expected: DnsRecord
    found: tuple[str, ...] = ()


@dataclass(frozen=True)
class DkimExpectation:
    """A key whose record the check looks for: its selector, `k=` type and `p=`."""

    selector: str
    key_type: str
    public_key: str
    record: DnsRecord


class LookupFailed(Exception):
    """One lookup got an error instead of an answer; its check reports ``error``."""

    def __init__(self, name: str, rdtype: str, reason: str) -> None:
        super().__init__(f"lookup of {name} {rdtype} failed: {reason}"[:500])


@dataclass
class Lookups:
    """Cached TXT/A/AAAA/MX lookups for one check."""

    resolver: dns.asyncresolver.Resolver
    _cache: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    answered: bool = False
    """Whether a resolver has answered anything yet (an answer, NXDOMAIN or an error code)."""

    async def get(self, name: str, rdtype: str) -> list[str]:
        """The answers as text (TXT strings joined); [] for NXDOMAIN or no such record.
        Raises LookupFailed, or Unavailable when no resolver has answered anything."""
        key = (name.lower().rstrip("."), rdtype)
        if key in self._cache:
            return self._cache[key]
        try:
            answer = await self.resolver.resolve(key[0], rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            values: list[str] = []
        except dns.exception.Timeout as exc:
            if not self.answered:
                servers = ", ".join(str(s) for s in self.resolver.nameservers)
                raise Unavailable(
                    f"the DNS resolvers ({servers}) did not answer within "
                    f"{self.resolver.lifetime:g} s"
                ) from exc
            raise LookupFailed(key[0], rdtype, "no answer in time") from exc
        except dns.exception.DNSException as exc:  # SERVFAIL, REFUSED, YXDOMAIN, bad answers
            self.answered = True
            raise LookupFailed(key[0], rdtype, str(exc) or type(exc).__name__) from exc
        else:
            if rdtype == "TXT":
                values = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
            elif rdtype == "MX":
                values = [
                    f"{r.preference} {r.exchange.to_text().rstrip('.').lower()}" for r in answer
                ]
            else:
                values = [r.to_text() for r in answer]
        self.answered = True
        self._cache[key] = values
        return values

    async def addresses(self, name: str) -> set[str]:
        return {*await self.get(name, "A"), *await self.get(name, "AAAA")}


def make_resolver(servers: Sequence[str], timeout: float = 5.0) -> dns.asyncresolver.Resolver:
    """A resolver asking `servers` (``ip[:port]``), or the system's when there are none."""
    if not servers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        hosts, ports = [], set()
        for server in servers:
            host, port = _split(server)
            hosts.append(host)
            ports.add(port)
        resolver.nameservers = hosts
        resolver.port = ports.pop() if len(ports) == 1 else 53
    resolver.lifetime = timeout
    return resolver


def _split(server: str) -> tuple[str, int]:
    if server.startswith("["):
        host, _, port = server[1:].partition("]:")
        return host.rstrip("]"), int(port or 53)
    if server.count(":") == 1:
        host, _, port = server.partition(":")
        return host, int(port)
    return server, 53


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags[name.strip().lower()] = "".join(value.split())
    return tags


# --- SPF -----------------------------------------------------------------------------------------


class _Budget:
    def __init__(self) -> None:
        self.left = SPF_LOOKUP_LIMIT

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _in(addresses: Iterable[str], network: str) -> bool:
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False
    return any(ipaddress.ip_address(a) in net for a in addresses if _is_ip(a))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _spf_allows(  # noqa: PLR0917  (one SPF evaluation's whole state)
    lookups: Lookups, domain: str, record: str, host: str, addresses: set[str], budget: _Budget
) -> bool:
    """Whether `record` (of `domain`) passes mail from `host` at `addresses` (a "+" result)."""
    terms = record.split()[1:]
    for term in terms:
        qualifier = term[0] if term[0] in "+-~?" else "+"
        mechanism = term.lstrip("+-~?")
        name, _, arg = mechanism.partition(":")
        name = name.lower()
        matched = False
        if name == "all":
            return qualifier == "+"
        if name in ("ip4", "ip6"):
            matched = _in(addresses, arg)
        elif name in ("a", "mx", "include"):
            if not budget.spend():
                return False
            target = (arg or domain).split("/")[0].lower().rstrip(".")
            if name == "a":
                matched = target == host or bool(addresses & await lookups.addresses(target))
            elif name == "mx":
                for mx in await lookups.get(target, "MX"):
                    exchange = mx.split()[-1]
                    if exchange == host or addresses & await lookups.addresses(exchange):
                        matched = True
                        break
            else:
                matched = target == host or await _spf_of(lookups, target, host, addresses, budget)
        if matched:
            return qualifier == "+"
    for term in terms:
        if term.lower().startswith("redirect=") and budget.spend():
            target = term.partition("=")[2].lower().rstrip(".")
            return await _spf_of(lookups, target, host, addresses, budget)
    return False


async def _spf_of(
    lookups: Lookups, domain: str, host: str, addresses: set[str], budget: _Budget
) -> bool:
    records = [r for r in await lookups.get(domain, "TXT") if r.lower().startswith("v=spf1")]
    if len(records) != 1:
        return False
    return await _spf_allows(lookups, domain, records[0], host, addresses, budget)


async def check_spf(lookups: Lookups, domain: str, host: str, expected: DnsRecord) -> Check:
    found = [r for r in await lookups.get(domain, "TXT") if r.lower().startswith("v=spf1")]
    if not found:
        return Check("spf", domain, MISSING, "no v=spf1 record", expected)
    if len(found) > 1:
        detail = f"{len(found)} SPF records: receivers treat that as an error (RFC 7208 §4.5)"
        return Check("spf", domain, WRONG, detail, expected, tuple(found))
    addresses = await lookups.addresses(host)
    if await _spf_allows(lookups, domain, found[0], host, addresses, _Budget()):
        return Check("spf", domain, OK, f"authorises {host}", expected, tuple(found))
    detail = f"does not authorise {host} (addresses: {', '.join(sorted(addresses)) or 'none'})"
    return Check("spf", domain, WRONG, detail, expected, tuple(found))


# --- DKIM, DMARC, MX, tracker -----------------------------------------------------------------


async def check_dkim(lookups: Lookups, domain: str, key: DkimExpectation) -> Check:
    name = dkim_record_name(key.selector, domain)
    found = [r for r in await lookups.get(name, "TXT") if "p=" in r]
    if not found:
        return Check(
            "dkim", name, MISSING, f"no DKIM record for selector {key.selector}", key.record
        )
    for record in found:
        tags = _tags(record)
        if tags.get("p") == key.public_key and tags.get("k", "rsa").lower() == key.key_type:
            return Check("dkim", name, OK, f"{key.key_type} key matches", key.record, tuple(found))
    detail = f"the published key is not the {key.key_type} key Kannon signs with"
    return Check("dkim", name, WRONG, detail, key.record, tuple(found))


def dmarc_expected(domain: str) -> DnsRecord:
    return DnsRecord(
        "TXT",
        f"_dmarc.{domain}",
        DMARC_SUGGESTED,
        "dmarc: tells receivers what to do with mail "
        "that fails SPF and DKIM alignment (start with p=none, then quarantine or reject)",
    )


async def check_dmarc(lookups: Lookups, domain: str) -> Check:
    expected = dmarc_expected(domain)
    labels = domain.split(".")
    for start in range(len(labels) - 1):
        name = "_dmarc." + ".".join(labels[start:])
        found = [r for r in await lookups.get(name, "TXT") if r.lower().startswith("v=dmarc1")]
        if not found:
            continue
        policy = _tags(found[0]).get("p", "").lower()
        if len(found) > 1 or policy not in ("none", "quarantine", "reject"):
            detail = "more than one DMARC record" if len(found) > 1 else "no valid p= policy"
            return Check("dmarc", name, WRONG, detail, expected, tuple(found))
        where = "" if start == 0 else f" (inherited from {'.'.join(labels[start:])})"
        return Check("dmarc", name, OK, f"policy {policy}{where}", expected, tuple(found))
    return Check("dmarc", f"_dmarc.{domain}", MISSING, "no DMARC record", expected)


async def check_bounce_mx(
    lookups: Lookups, domain: str, bounce_host: str, expected: DnsRecord
) -> Check:
    found = await lookups.get(domain, "MX")
    if not found:
        return Check("bounce_mx", domain, MISSING, "no MX: bounces cannot come back", expected)
    exchanges = {mx.split()[-1] for mx in found}
    if bounce_host.lower() in exchanges:
        return Check(
            "bounce_mx", domain, OK, f"{bounce_host} receives bounces", expected, tuple(found)
        )
    detail = f"bounces go to {', '.join(sorted(exchanges))}, not to Kannon's {bounce_host}"
    return Check("bounce_mx", domain, WRONG, detail, expected, tuple(found))


async def check_tracker(
    lookups: Lookups, host: str, alias_of: str | None, expected: DnsRecord
) -> Check:
    if _is_ip(host):
        return Check("tracker", host, OK, "an address: nothing to look up", expected, (host,))
    found = await lookups.addresses(host)
    if not found:
        return Check("tracker", host, MISSING, "the tracker host does not resolve", expected)
    if alias_of is not None:
        wanted = await lookups.addresses(alias_of)
        if wanted and not (found & wanted):
            detail = f"resolves to {', '.join(sorted(found))}, not to {alias_of}'s addresses"
            return Check("tracker", host, WRONG, detail, expected, tuple(sorted(found)))
    return Check("tracker", host, OK, "resolves", expected, tuple(sorted(found)))


async def check_domain(
    resolver: dns.asyncresolver.Resolver,
    *,
    domain: str,
    records: Sequence[DnsRecord],
    dkim_keys: Sequence[DkimExpectation],
    sending_host: str,
    bounce_host: str,
    tracker_host: str | None,
) -> list[Check]:
    """Every check of `domain`; `records` are the ones Kannon asks the operator to publish
    (:func:`kannon.dns_records.records_for_domain`), used as the "record to publish"."""
    lookups = Lookups(resolver)
    by_kind = {_kind(r): r for r in records}
    checks = [
        await _reported(
            "spf", domain, by_kind["spf"], check_spf(lookups, domain, sending_host, by_kind["spf"])
        )
    ]
    for key in dkim_keys:
        name = dkim_record_name(key.selector, domain)
        checks.append(await _reported("dkim", name, key.record, check_dkim(lookups, domain, key)))
    checks.append(
        await _reported(
            "dmarc", f"_dmarc.{domain}", dmarc_expected(domain), check_dmarc(lookups, domain)
        )
    )
    checks.append(
        await _reported(
            "bounce_mx",
            domain,
            by_kind["mx"],
            check_bounce_mx(lookups, domain, bounce_host, by_kind["mx"]),
        )
    )
    if tracker_host is not None:
        expected = by_kind.get("cname") or DnsRecord(
            "A", tracker_host, "<the tracker's address>", "tracking: host of tracking links"
        )
        alias_of = expected.value if expected.type == "CNAME" else None
        checks.append(
            await _reported(
                "tracker",
                tracker_host,
                expected,
                check_tracker(lookups, tracker_host, alias_of, expected),
            )
        )
    return checks


async def _reported(
    kind: str, name: str, expected: DnsRecord, check: Coroutine[Any, Any, Check]
) -> Check:
    """The check's result, or ``error`` with the reason when one of its lookups failed."""
    try:
        return await check
    except LookupFailed as exc:
        return Check(kind, name, ERROR, str(exc), expected)


def _kind(record: DnsRecord) -> str:
    if record.type == "MX":
        return "mx"
    if record.type == "CNAME":
        return "cname"
    if record.value.lower().startswith("v=spf1"):
        return "spf"
    return "dkim:" + record.name
