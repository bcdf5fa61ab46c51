"""The Tracker over real HTTP (uvicorn on loopback), the real database and the real bus.

Tracking URLs are taken from messages built by ``build_envelope`` with keys from the database,
exactly as the Dispatcher builds them, and fetched with httpx.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import REGISTRY

from kannon.bus.client import Bus
from kannon.bus.subjects import STATS_STREAM
from kannon.db.database import Database, open_database
from kannon.db.tracking_keys import signing_key
from kannon.envelope import (
    BatchSpec,
    DkimSigner,
    RecipientPart,
    TrackingKey,
    build_envelope,
    make_batch_id,
    sign_click,
    sign_open,
)
from kannon.ids import new_token
from kannon.model.outcome import Clicked, Opened
from kannon.model.tracking import TrackingMode, TrackingPolicy
from kannon.tracker.app import PIXEL_GIF
from kannon.tracker.component import Tracker
from tests.support import html_of, read_events, stored_events
from tests.tracker.tracker_support import DOMAIN, PROXY_ADDRESS, TOKEN_TTL, StartTracker

BOUNCE_SECRET = b"bounce-secret-for-tests-0123456789"
RECIPIENT = "reader@example.org"
LANDING = "https://shop.example.com/landing?utm_source=mail&x=1&y=2"
HTML = """<html><body>
<p><a href="https://shop.example.com/landing?utm_source=mail&amp;x=1&amp;y=2">Shop</a></p>
<p><a href="mailto:help@k.example.com">Write to us</a></p>
<p><a data-no-track href="https://shop.example.com/untracked">Not tracked</a></p>
<p><a href='https://docs.example.com/a b?q=%C3%A9&amp;z=~x'>Docs</a></p>
</body></html>"""
HREF = re.compile(r"""<a\b[^>]*?href=(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
IMG = re.compile(r"""<img\b[^>]*?src="([^"]*)\"""", re.IGNORECASE)


async def keyed_tracker(
    pool: Database, start_tracker: StartTracker
) -> tuple[datetime, TrackingKey, Tracker]:
    """Now, the signing key (made before the Tracker loads its cache) and a running Tracker."""
    now = datetime.now(UTC)
    key = await signing_key(pool, now, TOKEN_TTL)
    return now, key, await start_tracker()


async def build_message(
    pool: Any, signer: DkimSigner, base_url: str, now: datetime
) -> tuple[str, str]:
    """A built Envelope's body (with the tracker at ``base_url``); returns (batch id, HTML)."""
    key = await signing_key(pool, now, TOKEN_TTL)
    batch_id = make_batch_id(new_token(), DOMAIN)
    envelope = build_envelope(
        BatchSpec(
            batch_id=batch_id,
            domain=DOMAIN,
            sender_email=f"news@{DOMAIN}",
            sender_alias="News",
            subject="Hello",
            html=HTML,
            tracker_base_url=base_url,
            tracking_key=key,
            token_expires_at=now + TOKEN_TTL,
            bounce_secret=BOUNCE_SECRET,
            now=now,
        ),
        # Full: these tests look at the IP address and user agent of each hit.
        RecipientPart(
            recipient=RECIPIENT, tracking=TrackingPolicy(TrackingMode.FULL, TrackingMode.FULL)
        ),
        signer,
    )
    return batch_id, html_of(envelope.body)


def links(html: str) -> list[str]:
    return [a or b for a, b in HREF.findall(html)]


def flip(token: str, index: int) -> str:
    ch = token[index]
    return token[:index] + ("B" if ch != "B" else "C") + token[index + 1 :]


def key_loads(trigger: str) -> float:
    value = REGISTRY.get_sample_value(
        "kannon_tracker_key_loads_total", {"trigger": trigger, "result": "ok"}
    )
    return value or 0.0


async def test_pixel_and_links_of_a_built_message(
    start_tracker: StartTracker, pool: Any, bus: Bus, signer: DkimSigner
) -> None:
    now = datetime.now(UTC)
    await signing_key(pool, now, TOKEN_TTL)  # the key exists before the Tracker loads its cache
    tracker = await start_tracker()
    base = f"http://127.0.0.1:{tracker.port}"
    batch_id, html = await build_message(pool, signer, base, now)

    hrefs = links(html)
    assert "mailto:help@k.example.com" in hrefs
    assert "https://shop.example.com/untracked" in hrefs  # data-no-track: left alone
    tracked = [h for h in hrefs if h.startswith(base + "/c/")]
    assert len(tracked) == 2
    pixels = [src for src in IMG.findall(html) if src.startswith(base + "/o/")]
    assert len(pixels) == 1

    loads_before = key_loads("unknown-kid") + key_loads("timer")
    async with httpx.AsyncClient(headers={"User-Agent": "TestMail/1.0"}) as client:
        pixel = await client.get(pixels[0])
        assert pixel.status_code == 200
        assert pixel.headers["content-type"] == "image/gif"
        assert "no-store" in pixel.headers["cache-control"]
        assert "no-cache" in pixel.headers["cache-control"]
        assert pixel.content == PIXEL_GIF

        first = await client.get(tracked[0])
        assert first.status_code == 307
        assert first.headers["location"] == LANDING
        second = await client.get(tracked[1])
        assert second.status_code == 307
        # Spaces are the one thing a Location header cannot carry as authored.
        assert second.headers["location"] == "https://docs.example.com/a%20b?q=%C3%A9&z=~x"

    opened = await read_events(bus, "kannon.stats.opened", 1)
    clicked = await read_events(bus, "kannon.stats.clicked", 2)
    assert [(e.batch_id, e.domain, e.recipient) for e in opened] == [(batch_id, DOMAIN, RECIPIENT)]
    assert opened[0].detail == Opened(user_agent="TestMail/1.0", ip="127.0.0.1")
    assert sorted(e.detail.url for e in clicked if isinstance(e.detail, Clicked)) == [
        "https://docs.example.com/a b?q=%C3%A9&z=~x",
        LANDING,
    ]
    for event in clicked:
        assert isinstance(event.detail, Clicked)
        assert event.detail == Clicked("TestMail/1.0", "127.0.0.1", event.detail.url)
        assert (event.batch_id, event.recipient) == (batch_id, RECIPIENT)
    # Every hit is its own event, and no hit needed the database.
    assert len({e.event_id for e in opened + clicked}) == 3
    assert key_loads("unknown-kid") + key_loads("timer") == loads_before


def test_pixel_is_a_transparent_1x1_gif() -> None:
    assert len(PIXEL_GIF) == 43
    assert PIXEL_GIF[:6] == b"GIF89a"
    assert int.from_bytes(PIXEL_GIF[6:8], "little") == 1
    assert int.from_bytes(PIXEL_GIF[8:10], "little") == 1
    gce = PIXEL_GIF.index(b"\x21\xf9\x04")
    assert PIXEL_GIF[gce + 3] & 0x01  # transparent-colour flag
    assert PIXEL_GIF.endswith(b";")


async def test_repeated_hits_are_separate_events(
    start_tracker: StartTracker, pool: Any, bus: Bus
) -> None:
    now, key, tracker = await keyed_tracker(pool, start_tracker)
    token = sign_open(key, make_batch_id(new_token(), DOMAIN), RECIPIENT, now + TOKEN_TTL)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            assert (
                await client.get(f"http://127.0.0.1:{tracker.port}/o/{token}")
            ).status_code == 200
    events = await read_events(bus, "kannon.stats.opened", 3)
    assert len({e.event_id for e in events}) == 3
    assert await stored_events(bus) == 3


async def test_bad_tokens_are_404_and_publish_nothing(
    start_tracker: StartTracker, pool: Any, bus: Bus
) -> None:
    now, key, tracker = await keyed_tracker(pool, start_tracker)
    base = f"http://127.0.0.1:{tracker.port}"
    batch_id = make_batch_id(new_token(), DOMAIN)
    open_token = sign_open(key, batch_id, RECIPIENT, now + TOKEN_TTL)
    click_token = sign_click(key, batch_id, RECIPIENT, LANDING, now + TOKEN_TTL)
    expired = sign_click(key, batch_id, RECIPIENT, LANDING, now - timedelta(seconds=1))
    forged = sign_click(
        TrackingKey(key.kid, b"x" * 32),
        batch_id,
        RECIPIENT,
        "https://evil.example",
        now + TOKEN_TTL,
    )
    no_domain = sign_open(key, "msg_abc", RECIPIENT, now + TOKEN_TTL)

    bad = [
        f"/o/{flip(open_token, len(open_token) // 2)}",
        f"/c/{flip(click_token, len(click_token) // 2)}",
        f"/c/{flip(click_token, 0)}",
        f"/c/{flip(click_token, len(click_token) - 1)}",
        f"/c/{click_token}x",
        f"/c/{expired}",
        f"/c/{forged}",
        f"/c/{open_token}",  # an open token is not a licence to redirect
        f"/o/{click_token}",
        f"/o/{no_domain}",
        "/o/",
        "/c/not-a-token",
    ]
    async with httpx.AsyncClient(base_url=base) as client:
        for path in bad:
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "location" not in response.headers
        # A good hit afterwards: once its event is stored, anything published before it is too.
        assert (await client.get(f"/o/{open_token}")).status_code == 200
    await read_events(bus, "kannon.stats.opened", 1)
    assert await stored_events(bus) == 1


async def test_head_requests_are_answered_but_not_counted(
    start_tracker: StartTracker, pool: Any, bus: Bus
) -> None:
    now, key, tracker = await keyed_tracker(pool, start_tracker)
    batch_id = make_batch_id(new_token(), DOMAIN)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tracker.port}") as client:
        pixel = await client.head(f"/o/{sign_open(key, batch_id, RECIPIENT, now + TOKEN_TTL)}")
        assert pixel.status_code == 200
        assert pixel.headers["content-length"] == "43"
        assert pixel.content == b""
        click = await client.head(
            f"/c/{sign_click(key, batch_id, RECIPIENT, LANDING, now + TOKEN_TTL)}"
        )
        assert click.status_code == 307
        assert click.headers["location"] == LANDING
        assert (await client.head("/o/garbage")).status_code == 404
        assert (
            await client.post(
                f"/c/{sign_click(key, batch_id, RECIPIENT, LANDING, now + TOKEN_TTL)}"
            )
        ).status_code == 405
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        # HEADs (link scanners) are answered but are not opens or clicks: only this GET counts.
        get = await client.get(f"/o/{sign_open(key, batch_id, RECIPIENT, now + TOKEN_TTL)}")
        assert get.status_code == 200
    await read_events(bus, "kannon.stats.opened", 1)
    assert await stored_events(bus) == 1


async def test_forwarded_for_only_from_trusted_proxies(
    start_tracker: StartTracker, pool: Any, bus: Bus
) -> None:
    now, key, tracker = await keyed_tracker(pool, start_tracker)
    token = sign_open(
        key, make_batch_id(new_token(), DOMAIN), RECIPIENT, now + TOKEN_TTL, TrackingMode.FULL
    )
    url = f"http://127.0.0.1:{tracker.port}/o/{token}"
    spoof = {"X-Forwarded-For": "198.51.100.7", "X-Real-IP": "198.51.100.8"}
    async with httpx.AsyncClient() as direct:
        assert (await direct.get(url, headers={**spoof, "User-Agent": "direct"})).status_code == 200
    proxied = httpx.AsyncHTTPTransport(local_address=PROXY_ADDRESS)
    async with httpx.AsyncClient(transport=proxied) as via_proxy:
        # The left-most entry was written by the client: only the hop the proxy saw counts.
        chain = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9", "User-Agent": "chain"}
        assert (await via_proxy.get(url, headers=chain)).status_code == 200
        real_ip = {"X-Real-IP": "203.0.113.10", "User-Agent": "real-ip"}
        assert (await via_proxy.get(url, headers=real_ip)).status_code == 200
        assert (await via_proxy.get(url, headers={"User-Agent": "bare"})).status_code == 200
    events = await read_events(bus, "kannon.stats.opened", 4)
    ips = {e.detail.user_agent: e.detail.ip for e in events if isinstance(e.detail, Opened)}
    assert ips == {
        "direct": "127.0.0.1",
        "chain": "203.0.113.9",
        "real-ip": "203.0.113.10",
        "bare": PROXY_ADDRESS,
    }


async def test_key_minted_after_start_is_loaded_on_first_use(
    start_tracker: StartTracker, pool: Any, bus: Bus
) -> None:
    now = datetime.now(UTC)
    old = await signing_key(pool, now, TOKEN_TTL)
    tracker = await start_tracker(unknown_kid_interval=timedelta(hours=1))
    assert tracker.keys.kids == {old.kid}
    # Rotation: 91 days on, the old key would not outlive a new token, so a new one is minted.
    new = await signing_key(pool, now + timedelta(days=91), TOKEN_TTL)
    assert new.kid != old.kid
    batch_id = make_batch_id(new_token(), DOMAIN)
    loads = key_loads("unknown-kid")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tracker.port}") as client:
        fresh = sign_click(new, batch_id, RECIPIENT, LANDING, now + TOKEN_TTL)
        assert (await client.get(f"/c/{fresh}")).headers["location"] == LANDING
        assert key_loads("unknown-kid") == loads + 1
        # Tokens of the previous key keep working until they expire.
        previous = sign_click(old, batch_id, RECIPIENT, LANDING, now + TOKEN_TTL)
        assert (await client.get(f"/c/{previous}")).status_code == 307
        # Another unknown kid inside the interval: refused without asking the database again.
        stranger = sign_open(
            TrackingKey("key_unknown", b"s" * 32), batch_id, RECIPIENT, now + TOKEN_TTL
        )
        assert (await client.get(f"/o/{stranger}")).status_code == 404
        assert key_loads("unknown-kid") == loads + 1
    await read_events(bus, "kannon.stats.clicked", 2)


async def test_hits_need_no_database(
    start_tracker: StartTracker, database_url: str, bus: Bus
) -> None:
    own_pool = await open_database(database_url)
    now = datetime.now(UTC)
    key = await signing_key(own_pool, now, TOKEN_TTL)
    tracker = await start_tracker(pool=own_pool)
    await own_pool.close()
    token = sign_click(key, make_batch_id(new_token(), DOMAIN), RECIPIENT, LANDING, now + TOKEN_TTL)
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            response = await client.get(f"http://127.0.0.1:{tracker.port}/c/{token}")
            assert response.headers["location"] == LANDING
    await read_events(bus, "kannon.stats.clicked", 5)


async def test_hits_are_answered_when_publishing_fails(
    start_tracker: StartTracker, pool: Any, bus: Bus
) -> None:
    now, key, tracker = await keyed_tracker(pool, start_tracker)
    batch_id = make_batch_id(new_token(), DOMAIN)
    failures = REGISTRY.get_sample_value(
        "kannon_tracker_publish_failures_total", {"type": "clicked"}
    )
    await bus.js.delete_stream(STATS_STREAM)  # JetStream now refuses kannon.stats.* publishes
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tracker.port}") as client:
        click = sign_click(key, batch_id, RECIPIENT, LANDING, now + TOKEN_TTL)
        assert (await client.get(f"/c/{click}")).headers["location"] == LANDING
        pixel = await client.get(f"/o/{sign_open(key, batch_id, RECIPIENT, now + TOKEN_TTL)}")
        assert pixel.content == PIXEL_GIF
    await tracker.sink.drain(30)
    after = REGISTRY.get_sample_value("kannon_tracker_publish_failures_total", {"type": "clicked"})
    assert (after or 0) == (failures or 0) + 1
