"""Where mail for a domain goes: MX lookup (RFC 5321 §5.1, RFC 7505) with dnspython.

Owns the resolver configuration (`sender.dns_servers`, or the system resolver when empty), MX
ordering by preference (equal preferences shuffled, as RFC 5321 asks, so load spreads), the
implicit MX (a domain without MX records receives mail on its own A/AAAA), the null MX
(`MX 0 .`: the domain accepts no mail) and the A/AAAA lookup of each MX host.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import idna

from kannon.config.values import parse_dns_server
from kannon.smtp_sender.mx_cache import TtlCache, negative_ttl

# The original tried at most 5 MX hosts; a domain listing more is trying our patience.
MAX_MX_HOSTS = 5


@dataclass(frozen=True)
class MxHost:
    name: str
    """ASCII host name without the trailing dot."""
    preference: int
    implicit: bool = False
    """True when the domain had no MX and its own address records are used."""


@dataclass(frozen=True)
class Routes:
    hosts: tuple[MxHost, ...]


@dataclass(frozen=True)
class NullMx:
    """The domain publishes `MX 0 .`: it accepts no mail at all."""


@dataclass(frozen=True)
class LookupFailed:
    message: str


MxLookup = Routes | NullMx | LookupFailed
_Found = list[MxHost] | NullMx | LookupFailed


@dataclass(frozen=True)
class Addresses:
    addresses: tuple[str, ...]
    error: str = ""


def ascii_domain(domain: str) -> str:
    """The domain in its A-label (ASCII) form; raises ValueError when it is not a valid name."""
    domain = domain.strip().rstrip(".")
    if not domain:
        raise ValueError("empty domain")
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{domain!r} is not a valid internationalised domain: {exc}") from exc


def make_resolver(servers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
    if servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        nameservers: list[str | dns.nameserver.Nameserver] = []
        for entry in servers:
            host, port = parse_dns_server(entry)
            nameservers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = nameservers
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    # Honours each record's TTL; a bulk send to one domain then asks DNS once, not per message.
    resolver.cache = dns.resolver.LRUCache(4096)
    return resolver


class MxResolver:
    def __init__(
        self,
        servers: Sequence[str],
        *,
        timeout: float = 10.0,
        max_hosts: int = MAX_MX_HOSTS,
        rng: random.Random | None = None,
        cache: TtlCache[_Found] | None = None,
    ) -> None:
        self.resolver = make_resolver(servers, timeout)
        self.max_hosts = max_hosts
        self._rng = rng or random.Random()
        self._cache: TtlCache[_Found] = cache if cache is not None else TtlCache()
        self._inflight: dict[str, asyncio.Future[_Found]] = {}

    async def routes(self, domain: str) -> MxLookup:
        """MX hosts of an ASCII `domain`, most preferred first."""
        found = self._cache.get(domain)
        if found is None:
            # Concurrent sends to one domain share one query: a bulk send to a big provider
            # would otherwise ask max_jobs times at once whenever the cached answer expires.
            pending = self._inflight.get(domain)
            if pending is None:
                pending = asyncio.ensure_future(self._lookup_and_keep(domain))
                self._inflight[domain] = pending
                pending.add_done_callback(lambda _: self._inflight.pop(domain, None))
            found = await asyncio.shield(pending)
        if not isinstance(found, list):
            return found
        if len(found) == 1:  # most domains: nothing to order
            return Routes(tuple(found[: self.max_hosts]))
        ordered = list(found)
        self._rng.shuffle(ordered)
        ordered.sort(key=lambda host: host.preference)  # stable: equal preferences shuffled
        return Routes(tuple(ordered[: self.max_hosts]))

    async def _lookup_and_keep(self, domain: str) -> _Found:
        found, ttl = await self._lookup(domain)
        self._cache.put(domain, found, ttl)
        return found

    async def _lookup(self, domain: str) -> tuple[_Found, float]:
        """The answer and how many seconds it may be kept (0: not at all, e.g. a failure)."""
        try:
            answer = await self.resolver.resolve(domain, dns.rdatatype.MX)
        except dns.resolver.NoAnswer as exc:
            # No MX records: RFC 5321 §5.1's implicit MX is the domain itself. The address
            # lookup that follows tells whether the domain exists at all.
            # dnspython leaves these two exception methods unannotated.
            response: dns.message.Message = exc.response()  # type: ignore[no-untyped-call]
            return [MxHost(domain, 0, implicit=True)], negative_ttl(response)
        except dns.resolver.NXDOMAIN as exc:
            # Unannotated in dnspython, as above.
            responses: dict[dns.name.Name, dns.message.Message] = exc.responses()  # type: ignore[no-untyped-call]
            last = list(responses.values())[-1] if responses else None
            return [MxHost(domain, 0, implicit=True)], negative_ttl(last)
        except dns.exception.DNSException as exc:
            return LookupFailed(f"MX lookup for {domain} failed: {_describe(exc)}"), 0.0
        hosts = [
            MxHost(r.exchange.to_text(omit_final_dot=True).lower(), int(r.preference))
            for r in answer
            if r.exchange != dns.name.root
        ]
        # What is left of the TTL (the answer may come from dnspython's own cache).
        return hosts or NullMx(), answer.expiration - time.time()

    async def addresses(self, host: str) -> Addresses:
        """IPv4 then IPv6 addresses of `host` (IPv4 first: many containers have no v6 route)."""
        results = await asyncio.gather(
            self.resolver.resolve(host, dns.rdatatype.A),
            self.resolver.resolve(host, dns.rdatatype.AAAA),
            return_exceptions=True,
        )
        found: list[str] = []
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, dns.resolver.Answer):
                found.extend(r.to_text() for r in result)
            elif isinstance(result, dns.exception.DNSException):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
        if found:
            return Addresses(tuple(found))
        if errors and all(isinstance(e, dns.resolver.NXDOMAIN) for e in errors):
            return Addresses((), f"{host} does not exist (NXDOMAIN)")
        hard = [e for e in errors if not isinstance(e, dns.resolver.NoAnswer)]
        if hard:
            return Addresses((), f"address lookup for {host} failed: {_describe(hard[0])}")
        return Addresses((), f"{host} has no A/AAAA records")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no name server answered (SERVFAIL or REFUSED)"
    return str(exc) or type(exc).__name__
