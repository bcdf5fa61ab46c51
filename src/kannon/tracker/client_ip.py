"""Which address a tracking hit came from, given the proxies the operator trusts.

``X-Forwarded-For`` and ``X-Real-IP`` are plain request headers: anyone can send them. They are
believed only when the TCP peer is one of ``tracker.trusted_proxies``, and then
``X-Forwarded-For`` is read from the right: each proxy appends the address it saw, so the
right-most hop that is not itself a trusted proxy is the client (anything left of it was written
by the client and may be forged). ``X-Real-IP`` is the fallback for proxies that set only it.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """An address as proxies write it: bare, ``[v6]``, ``v4:port`` or ``[v6]:port``; else None.

    IPv4-mapped IPv6 (``::ffff:10.0.0.1``, what a dual-stack socket reports) becomes IPv4, so
    one trusted-proxy entry covers both spellings.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ClientAddress:
    """Resolves the client address of a request from its peer and proxy headers."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(net, strict=False) for net in trusted_proxies
        )

    def is_trusted(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str], real_ip: str | None) -> str:
        """The client address as text; ``forwarded_for`` is every X-Forwarded-For header value.

        Falls back to the peer whenever the headers are absent, untrusted or unreadable; "" when
        even the peer is unknown (e.g. a Unix socket).
        """
        if not peer:
            return ""
        if not self._trusted:
            # The common case, on every hit: skip address parsing (it costs more than the rest of
            # this function), only unwrapping what a dual-stack socket reports for IPv4 peers.
            return peer[7:] if peer.startswith("::ffff:") and "." in peer else peer
        peer_ip = parse_ip(peer)
        if peer_ip is None:
            return peer
        if not self.is_trusted(peer_ip):
            return str(peer_ip)
        hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
        if hops:
            client = peer_ip
            for hop in reversed(hops):
                ip = parse_ip(hop)
                if ip is None:
                    # Garbage where an address should be: the last hop we could read is the
                    # best we know (a trusted proxy, which at least is not a forgery).
                    break
                client = ip
                if not self.is_trusted(ip):
                    break
            return str(client)
        if real_ip:
            ip = parse_ip(real_ip)
            if ip is not None:
                return str(ip)
        return str(peer_ip)
