"""The Tracker's parts on their own: client address rules, Location encoding, the key cache."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kannon.db.tracking_keys import signing_key, verification_keys
from kannon.envelope import ClickClaim, TrackingKey, make_batch_id, sign_click, sign_open
from kannon.tracker.app import location_header
from kannon.tracker.client_ip import ClientAddress
from kannon.tracker.keys import KeyCache
from tests.support import Ticks
from tests.tracker.tracker_support import DOMAIN, TOKEN_TTL

TRUSTED = ClientAddress(["10.0.0.0/8", "2001:db8::/32", "127.0.0.2"])


@pytest.mark.parametrize(
    ("peer", "xff", "real_ip", "expected"),
    [
        # Untrusted peers: headers ignored whatever they say.
        ("198.51.100.1", ["203.0.113.5"], "203.0.113.6", "198.51.100.1"),
        ("127.0.0.1", ["203.0.113.5"], None, "127.0.0.1"),
        # Trusted peer: right-most hop that is not a trusted proxy.
        ("10.1.1.1", ["203.0.113.5"], None, "203.0.113.5"),
        ("10.1.1.1", ["1.1.1.1, 203.0.113.5, 10.2.2.2"], None, "203.0.113.5"),
        ("10.1.1.1", ["1.1.1.1", "203.0.113.5, 10.2.2.2"], None, "203.0.113.5"),  # two headers
        ("10.1.1.1", ["10.3.3.3, 10.2.2.2"], None, "10.3.3.3"),  # all trusted: left-most
        ("10.1.1.1", ["203.0.113.5:4711"], None, "203.0.113.5"),
        ("10.1.1.1", ["[2001:db9::1]:443"], None, "2001:db9::1"),
        ("10.1.1.1", ["nonsense, 10.2.2.2"], None, "10.2.2.2"),  # garbage stops the walk
        ("10.1.1.1", ["203.0.113.5, nonsense"], None, "10.1.1.1"),
        ("10.1.1.1", [], "203.0.113.7", "203.0.113.7"),
        ("10.1.1.1", [], "not an ip", "10.1.1.1"),
        ("10.1.1.1", [" "], None, "10.1.1.1"),
        ("::ffff:10.1.1.1", ["203.0.113.5"], None, "203.0.113.5"),  # dual-stack socket
        ("2001:db8::9", ["2001:db9::5"], None, "2001:db9::5"),
        (None, ["203.0.113.5"], None, ""),
    ],
)
def test_client_address(
    peer: str | None, xff: list[str], real_ip: str | None, expected: str
) -> None:
    assert TRUSTED.resolve(peer, xff, real_ip) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("10.1.1.1", "10.1.1.1"),
        ("::ffff:10.1.1.1", "10.1.1.1"),
        ("2001:db8::1", "2001:db8::1"),
        (None, ""),
    ],
)
def test_no_trusted_proxies_means_the_peer(peer: str | None, expected: str) -> None:
    assert ClientAddress([]).resolve(peer, ["203.0.113.5"], "203.0.113.6") == expected


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("https://a.example/p?x=1&y=%20#frag", "https://a.example/p?x=1&y=%20#frag"),
        ("https://a.example/~user/(1)!*';:@$,[]", "https://a.example/~user/(1)!*';:@$,[]"),
        ("https://a.example/a b", "https://a.example/a%20b"),
        ("https://a.example/\r\nSet-Cookie: x=1", "https://a.example/%0D%0ASet-Cookie:%20x=1"),
        ("https://bücher.example/ü", "https://b%C3%BCcher.example/%C3%BC"),
    ],
)
def test_location_keeps_urls_as_signed_and_headers_safe(url: str, location: str) -> None:
    assert location_header(url) == location


async def test_key_cache_reloads_for_unknown_kid_at_most_once_per_interval(pool: Any) -> None:
    loads = 0

    async def load(now: datetime) -> Mapping[str, bytes]:
        nonlocal loads
        loads += 1
        return await verification_keys(pool, now)

    now = datetime.now(UTC)
    monotonic = Ticks()
    cache = KeyCache(load, monotonic=monotonic, miss_interval=timedelta(seconds=5))
    await cache.load("start")
    assert loads == 1 and cache.kids == frozenset()

    key = await signing_key(pool, now, TOKEN_TTL)
    batch_id = make_batch_id("abc123", DOMAIN)
    token = sign_click(key, batch_id, "r@example.org", "https://x.example", now + TOKEN_TTL)
    # Ten concurrent hits with the new kid share one reload, and all of them succeed.
    claims = await asyncio.gather(*(cache.verify(token) for _ in range(10)))
    assert all(isinstance(c, ClickClaim) for c in claims)
    assert loads == 2

    # Known kid, bad MAC / expired / garbage: no reload, whatever the interval.
    monotonic.now = 100.0
    assert await cache.verify(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None
    expired = sign_open(key, batch_id, "r@example.org", now - timedelta(seconds=1))
    assert await cache.verify(expired) is None
    assert await cache.verify("garbage!") is None
    assert loads == 2

    stranger = sign_open(TrackingKey("key_nobody", b"n" * 32), batch_id, "r", now + TOKEN_TTL)
    assert await cache.verify(stranger) is None
    assert loads == 3
    monotonic.now = 104.9
    assert await cache.verify(stranger) is None
    assert loads == 3
    monotonic.now = 105.0
    assert await cache.verify(stranger) is None
    assert loads == 4


async def test_key_cache_keeps_its_keys_when_a_reload_fails(pool: Any) -> None:
    now = datetime.now(UTC)
    key = await signing_key(pool, now, TOKEN_TTL)
    fail = False

    async def load(at: datetime) -> Mapping[str, bytes]:
        if fail:
            raise ConnectionError("database down")
        return await verification_keys(pool, at)

    cache = KeyCache(load)
    await cache.load("start")
    fail = True
    stranger = sign_open(TrackingKey("key_new", b"n" * 32), "msg_a@x.example", "r", now + TOKEN_TTL)
    assert await cache.verify(stranger) is None  # reload failed: logged, not raised
    token = sign_open(key, "msg_a@x.example", "r", now + TOKEN_TTL)
    assert await cache.verify(token) is not None
    with pytest.raises(ConnectionError):
        await cache.load("start")
    assert cache.kids == {key.kid}


async def test_a_hit_does_not_wait_long_for_a_slow_key_load(pool: Any) -> None:
    now = datetime.now(UTC)
    release = asyncio.Event()
    loads = 0

    async def load(at: datetime) -> Mapping[str, bytes]:
        nonlocal loads
        loads += 1
        if loads > 1:
            await release.wait()  # the database is slow to answer
        return await verification_keys(pool, at)

    cache = KeyCache(load, miss_wait=timedelta(milliseconds=500))
    await cache.load("start")
    key = await signing_key(pool, now, TOKEN_TTL)
    token = sign_open(key, "msg_a@x.example", "r", now + TOKEN_TTL)
    assert await cache.verify(token) is None  # gave up waiting: 404 rather than a hung request
    release.set()
    # The load carried on in the background: the next hit joins it instead of starting another.
    assert await cache.verify(token) is not None
    assert loads == 2
