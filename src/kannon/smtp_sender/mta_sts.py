"""MTA-STS (RFC 8461) for direct MX delivery: a recipient domain's published policy, fetched,
cached, and turned into a `Plan` for each delivery (ADR 0042).

Owns the policy's two parts — the `_mta-sts.<domain>` TXT record announcing a policy `id`, and
the policy file at `https://mta-sts.<domain>/.well-known/mta-sts.txt` — their parsing, the
per-process cache (a policy is kept for its `max_age` and fetched again when the TXT `id`
changes), and what a policy means for one delivery:

* `enforce`: only MX hosts matching a policy `mx` pattern are tried, and each only over STARTTLS
  with a certificate that verifies for the MX name; when none qualifies the Delivery is deferred
  (a temporary failure the Dispatcher retries like any other);
* `testing`: delivery as without a policy; every violation is logged and counted;
* `none`, no policy, or no policy obtainable: delivery as without MTA-STS.

A failed lookup or fetch never blocks mail by itself (RFC 8461 §5.1): the cached policy, while
still valid, is used instead, else the domain is treated as having none. The SMTP side (what a
`TlsRule` asks of a session) lives in `delivery.py`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
from prometheus_client import Counter

from kannon.smtp_sender.mx import MxHost, MxResolver

log = logging.getLogger("kannon.sender.mta_sts")

Mode = Literal["enforce", "testing", "none"]

POLICY_PATH = "/.well-known/mta-sts.txt"
# RFC 8461 §3.2: max_age is at most 31557600 s (a year); §3.3 lets senders cap the body size.
MAX_AGE_LIMIT = 31_557_600
MAX_POLICY_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = MAX_POLICY_BYTES + 16 * 1024  # headers included
# Policies kept per process; each is a few hundred bytes. Beyond this, expired ones go first,
# then the oldest fetched.
CACHE_MAX = 50_000
_MODES: dict[str, Mode] = {"enforce": "enforce", "testing": "testing", "none": "none"}
_ID = re.compile(r"[A-Za-z0-9]{1,32}")

FETCHES = Counter(
    "kannon_sender_mta_sts_fetches_total",
    "MTA-STS policy fetches, by result (fetched, failed)",
    ["result"],
)
VIOLATIONS = Counter(
    "kannon_sender_mta_sts_violations_total",
    "MTA-STS policy violations seen, by policy mode and what failed (mx, starttls, certificate)",
    ["mode", "check"],
)


class PolicyError(ValueError):
    """A policy file or TXT record that does not follow RFC 8461."""


@dataclass(frozen=True)
class Policy:
    mode: Mode
    mx: tuple[str, ...]
    """Patterns: `mx.example.com`, or `*.example.com` (exactly one more label)."""
    max_age: int
    """Seconds the policy may be cached."""
    id: str = ""
    """The TXT record id it was fetched under."""

    def allows(self, host: str) -> bool:
        """Whether the MX host `host` matches one of the policy's `mx` patterns (§4.1)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, rest = host.partition(".")
                if label and dot and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_txt(records: Iterable[str]) -> str | None:
    """The policy id of a domain's `_mta-sts` TXT records, or None when it has no usable one.

    §3.1: records not starting with `v=STSv1` are ignored; anything but exactly one valid
    record means no policy is announced.
    """
    found = [r for r in records if r.startswith("v=STSv1")]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if not part.strip():
            continue
        if not eq:
            return None
        fields.setdefault(key.strip(), value.strip())
    record_id = fields.get("id", "")
    if fields.get("v") != "STSv1" or not _ID.fullmatch(record_id):
        return None
    return record_id


def parse_policy(text: str, policy_id: str = "") -> Policy:
    """The policy file's content (§3.2); raises PolicyError naming what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"line {line[:60]!r} is not 'key: value'")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)  # the first occurrence counts
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not 'STSv1'")
    mode = _MODES.get(fields.get("mode", ""))
    if mode is None:
        raise PolicyError(f"mode is {fields.get('mode')!r}, not enforce, testing or none")
    raw_age = fields.get("max_age", "")
    if not raw_age.isdigit() or len(raw_age) > 10:
        raise PolicyError(f"max_age is {raw_age!r}, not a number of seconds")
    max_age = min(int(raw_age), MAX_AGE_LIMIT)
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without any mx pattern")
    return Policy(mode, tuple(mx), max_age, policy_id)


@dataclass(frozen=True)
class TlsRule:
    """What a domain's policy asks of each SMTP session to its MX hosts."""

    domain: str
    policy: Policy
    context: ssl.SSLContext
    """Verifying context: the configured CA file, or the system trust store."""

    @property
    def enforce(self) -> bool:
        return self.policy.mode == "enforce"

    def violated(self, check: str, problem: str) -> str:
        """Log and count a violation (`check`: mx, starttls, certificate); the reason text."""
        VIOLATIONS.labels(self.policy.mode, check).inc()
        action = "deferred" if self.enforce else "delivering anyway (testing mode)"
        reason = (
            f"MTA-STS policy of {self.domain} (mode {self.policy.mode}, id {self.policy.id}): "
            f"{problem}"
        )
        log.warning(
            "MTA-STS policy violated",
            extra={
                "kv": {
                    "domain": self.domain,
                    "mode": self.policy.mode,
                    "policy_id": self.policy.id,
                    "check": check,
                    "problem": problem,
                    "action": action,
                }
            },
        )
        return reason


@dataclass(frozen=True)
class Plan:
    """How to deliver to a domain under its policy."""

    hosts: tuple[MxHost, ...]
    """The MX hosts that may be tried, in order."""
    rule: TlsRule | None = None
    """None: no policy applies, TLS stays opportunistic."""
    refusal: str = ""
    """Non-empty: no host may be used; the Delivery is deferred with this reason."""


@dataclass(frozen=True)
class _Cached:
    policy: Policy
    expires: float


class MtaSts:
    """Policies of recipient domains, cached for this process."""

    def __init__(
        self,
        resolver: MxResolver,
        *,
        ca_file: str | None,
        port: int = 443,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.port = port
        self.timeout = timeout
        self._clock = clock
        # One verifying context for policy fetches and MX sessions alike; loaded once.
        self.context = ssl.create_default_context(cafile=ca_file)
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Future[Policy | None]] = {}

    async def plan(self, domain: str, hosts: Sequence[MxHost]) -> Plan:
        """Which of `hosts` (MX of the ASCII `domain`) to try, and under what TLS rule."""
        policy = await self.policy(domain)
        if policy is None or policy.mode == "none":
            return Plan(tuple(hosts))
        rule = TlsRule(domain, policy, self.context)
        allowed = tuple(h for h in hosts if policy.allows(h.name))
        if len(allowed) == len(hosts):
            return Plan(tuple(hosts), rule)
        outside = ", ".join(h.name for h in hosts if h not in allowed)
        reason = rule.violated(
            "mx", f"MX host(s) {outside} match none of the policy's mx {', '.join(policy.mx)}"
        )
        if not rule.enforce:
            return Plan(tuple(hosts), rule)
        if not allowed:
            return Plan((), rule, f"{reason}; no MX host may be used")
        return Plan(allowed, rule)

    async def policy(self, domain: str) -> Policy | None:
        """The domain's current policy, from the cache or fetched; None when it has none."""
        # Concurrent deliveries to one domain share one TXT lookup and fetch.
        pending = self._inflight.get(domain)
        if pending is None:
            pending = asyncio.ensure_future(self._current(domain))
            self._inflight[domain] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(domain, None))
        return await asyncio.shield(pending)

    async def _current(self, domain: str) -> Policy | None:
        cached = self._cache.get(domain)
        if cached is not None and cached.expires <= self._clock():
            del self._cache[domain]
            cached = None
        announced = await self._announced_id(domain)
        if cached is not None and announced in (None, cached.policy.id):
            # §5.1: a missing or unreadable TXT record does not end a cached policy early.
            return cached.policy
        if announced is None:
            return None
        try:
            policy = parse_policy(await self._fetch(domain), announced)
        except (PolicyError, OSError, TimeoutError, ssl.SSLError, UnicodeDecodeError) as exc:
            FETCHES.labels("failed").inc()
            log.warning(
                "MTA-STS policy fetch failed",
                extra={
                    "kv": {
                        "domain": domain,
                        "policy_id": announced,
                        "error": str(exc) or type(exc).__name__,
                        "using": "cached policy" if cached is not None else "no policy",
                    }
                },
            )
            return cached.policy if cached is not None else None
        FETCHES.labels("fetched").inc()
        log.info(
            "MTA-STS policy fetched",
            extra={
                "kv": {
                    "domain": domain,
                    "policy_id": announced,
                    "mode": policy.mode,
                    "mx": ",".join(policy.mx),
                    "max_age": policy.max_age,
                }
            },
        )
        self._remember(domain, policy)
        return policy

    def _remember(self, domain: str, policy: Policy) -> None:
        now = self._clock()
        self._cache.pop(domain, None)  # re-inserted last: the dict's order is fetch order
        if len(self._cache) >= CACHE_MAX:
            self._cache = {d: c for d, c in self._cache.items() if c.expires > now}
            while len(self._cache) >= CACHE_MAX:
                del self._cache[next(iter(self._cache))]
        self._cache[domain] = _Cached(policy, now + policy.max_age)

    async def _announced_id(self, domain: str) -> str | None:
        try:
            answer = await self.resolver.resolver.resolve(f"_mta-sts.{domain}", dns.rdatatype.TXT)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            log.info(
                "MTA-STS TXT lookup failed",
                extra={"kv": {"domain": domain, "error": str(exc) or type(exc).__name__}},
            )
            return None
        records = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        return parse_txt(records)

    async def _fetch(self, domain: str) -> str:
        """The policy file's text; raises PolicyError, OSError, TimeoutError or ssl.SSLError."""
        host = f"mta-sts.{domain}"
        found = await self.resolver.addresses(host)
        if not found.addresses:
            raise PolicyError(found.error)
        async with asyncio.timeout(self.timeout):
            error: Exception | None = None
            for address in found.addresses:
                try:
                    return await self._get(host, address)
                except (OSError, ssl.SSLError) as exc:
                    # ssl.SSLCertVerificationError is both; the next address will not differ.
                    if isinstance(exc, ssl.SSLCertVerificationError):
                        raise
                    error = exc
            assert error is not None
            raise error

    async def _get(self, host: str, address: str) -> str:
        # HTTP/1.0 keeps the response simple (no chunked encoding, the server closes); every
        # policy host serves it. The certificate must verify for `host` (§3.3).
        reader, writer = await asyncio.open_connection(
            address, self.port, ssl=self.context, server_hostname=host
        )
        try:
            authority = host if self.port == 443 else f"{host}:{self.port}"
            writer.write(
                f"GET {POLICY_PATH} HTTP/1.0\r\nHost: {authority}\r\n"
                "Accept: text/plain\r\nUser-Agent: Kannon-MTA-STS/1\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_RESPONSE_BYTES:  # beyond it _policy_text refuses the body anyway
                more = await reader.read(MAX_RESPONSE_BYTES)
                if not more:
                    break
                chunks.append(more)
                size += len(more)
        finally:
            writer.close()
        return _policy_text(b"".join(chunks), host)


def _policy_text(raw: bytes, host: str) -> str:
    """The body of an HTTP response to the policy GET, checked as §3.3 asks."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise PolicyError(f"{host} sent no complete HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/"):
        raise PolicyError(f"{host} sent no HTTP status line")
    # §3.3: redirects are not followed; anything but 200 means no policy from this fetch.
    if status[1] != "200":
        raise PolicyError(f"{host} answered HTTP {' '.join(status[1:])}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "text/plain":
        raise PolicyError(f"{host} served the policy as {content_type!r}, not text/plain")
    length = headers.get("content-length", "")
    if length.isdigit():
        body = body[: int(length)]
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyError(f"{host} served a policy over {MAX_POLICY_BYTES} bytes")
    return body.decode("utf-8")
