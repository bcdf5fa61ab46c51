"""The MX answers of recent domains, each kept for its DNS TTL (ADR 0048).

A bulk send goes to a handful of domains, so without this every Envelope asked DNS again (a
UDP round trip and a parse: about a tenth of the sender's CPU). Owns: how long an answer may be
kept (the record's TTL; a negative answer the SOA's negative TTL per RFC 2308 §5, or not at all
without an SOA; both capped), and the bound on the number of domains (least recently used go
first). Pure: the clock is passed in.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import dns.message
import dns.rdatatype
import dns.rdtypes.ANY.SOA

# A TTL above this is treated as this: a changed MX is followed within the hour at the latest.
MAX_TTL = 3600.0
# Negative answers (no MX records, no such domain) are kept at most this long, as most
# resolvers do: the domain may be set up at any moment.
MAX_NEGATIVE_TTL = 300.0
MAX_DOMAINS = 4096

V = TypeVar("V")


def negative_ttl(response: dns.message.Message | None) -> float:
    """Seconds a NXDOMAIN/NODATA `response` may be cached: min(SOA TTL, SOA MINIMUM) of the
    authority section (RFC 2308 §5), capped; 0 when it carries no SOA."""
    if response is None:
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            for rdata in rrset:
                if isinstance(rdata, dns.rdtypes.ANY.SOA.SOA):
                    return float(min(rrset.ttl, rdata.minimum, MAX_NEGATIVE_TTL))
    return 0.0


class TtlCache(Generic[V]):
    """Values by key until their own expiry, at most `max_entries` of them."""

    def __init__(
        self, *, max_entries: int = MAX_DOMAINS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: V, ttl: float) -> None:
        """Keep `value` for `ttl` seconds (capped at MAX_TTL); a ttl of 0 or less keeps nothing."""
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._clock() + min(ttl, MAX_TTL), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
