"""MX answers kept for their TTL (ADR 0048): against a real dnsmasq that is stopped after the
first lookup, and the pure cache and negative-TTL rules on their own."""

from __future__ import annotations

import dns.message

from kannon.smtp_sender.mx import LookupFailed, MxResolver, Routes
from kannon.smtp_sender.mx_cache import MAX_NEGATIVE_TTL, MAX_TTL, TtlCache, negative_ttl
from tests.peers.dns import DnsServer
from tests.support import Ticks


def _serve_mx(ttl: int) -> DnsServer:
    dns = DnsServer(ttl=ttl)
    dns.add_mx("example.test", "mx.example.test", 10).add_host("mx.example.test", "127.0.0.1")
    return dns.start()


async def test_an_mx_answer_is_kept_for_its_ttl_so_dns_is_asked_once() -> None:
    dns = _serve_mx(ttl=300)
    try:
        resolver = MxResolver([dns.address], timeout=1.0)
        first = await resolver.routes("example.test")
        dns.stop()  # from here on, any query would time out
        second = await resolver.routes("example.test")
    finally:
        dns.close()
    assert isinstance(first, Routes)
    assert first == second
    assert [host.name for host in first.hosts] == ["mx.example.test"]


async def test_a_zero_ttl_answer_is_not_kept() -> None:
    dns = _serve_mx(ttl=0)
    try:
        resolver = MxResolver([dns.address], timeout=1.0)
        assert isinstance(await resolver.routes("example.test"), Routes)
        dns.stop()
        again = await resolver.routes("example.test")
    finally:
        dns.close()
    assert isinstance(again, LookupFailed)


async def test_a_failed_lookup_is_not_kept() -> None:
    dns = DnsServer(ttl=300)
    try:
        dns.add_mx("example.test", "mx.example.test", 10).add_host("mx.example.test", "127.0.0.1")
        dns.start()
        port = dns.port
        dns.stop()
        resolver = MxResolver([f"127.0.0.1:{port}"], timeout=0.5)
        assert isinstance(await resolver.routes("example.test"), LookupFailed)
        dns.start()  # same port
        assert isinstance(await resolver.routes("example.test"), Routes)
    finally:
        dns.close()


def test_entries_expire_and_the_cache_is_bounded() -> None:
    clock = Ticks(1000.0)
    cache: TtlCache[str] = TtlCache(max_entries=2, clock=clock)
    cache.put("a", "A", 10)
    cache.put("b", "B", 10)
    assert cache.get("a") == "A"  # now the most recently used
    cache.put("c", "C", 10)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    clock.now += 10
    assert cache.get("a") is None and len(cache) == 1


def test_ttls_are_capped_and_zero_keeps_nothing() -> None:
    clock = Ticks(1000.0)
    cache: TtlCache[str] = TtlCache(clock=clock)
    cache.put("a", "A", 10 * MAX_TTL)
    clock.now += MAX_TTL - 1
    assert cache.get("a") == "A"
    clock.now += 1
    assert cache.get("a") is None
    cache.put("b", "B", 0)
    assert cache.get("b") is None


def _negative(authority: str) -> dns.message.Message:
    text = "id 1\nopcode QUERY\nrcode NXDOMAIN\nflags QR AA RD RA\n;QUESTION\nnx.test. IN MX\n"
    return dns.message.from_text(text + f";AUTHORITY\n{authority}\n")


def test_negative_answers_keep_the_soa_negative_ttl_capped_and_none_without_soa() -> None:
    soa = "test. {ttl} IN SOA ns.test. admin.test. 1 3600 600 86400 {minimum}"
    assert negative_ttl(_negative(soa.format(ttl=900, minimum=60))) == 60
    assert negative_ttl(_negative(soa.format(ttl=30, minimum=60))) == 30
    assert negative_ttl(_negative(soa.format(ttl=86400, minimum=86400))) == MAX_NEGATIVE_TTL
    assert negative_ttl(_negative("")) == 0
    assert negative_ttl(None) == 0
