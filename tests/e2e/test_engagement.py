"""End to end in one process, the loop closed from the outside world: a delivered message's pixel
and links hit the real Tracker, and a DSN for a delivered message reaches the real SMTPServer;
what they record is read back through GetStats (the real gRPC client, the tenant's API key).

The pipeline (`pipeline.py`) runs with a Tracker and an SmtpServer on the same Settings (see
`engagement_support.py`). Tracking URLs and bounce addresses are taken from the message the SMTP
sink received, never built by the test. Nothing sleeps: the Tracker answers after its event is
in flight and the SmtpServer answers 250 only after its event is stored (PubAck), so a later
event stored is a barrier for an earlier one, and the stats stream's message count says whether
anything extra was published.
"""

from __future__ import annotations

import re
import struct

import httpx

from kannon.bus.client import Bus
from tests.e2e.conftest import Launch
from tests.e2e.engagement_support import (
    Engaged,
    dsn,
    get_stats,
    launch_engaged,
    set_tracking_ceiling,
    submit_report,
)
from tests.e2e.pipeline import RCPT_DOMAIN, TENANT, Pipeline
from tests.peers.smtp_sink import ReceivedMessage, SmtpSink
from tests.support import parse_message, stored_events, wait_for

FULL = 5  # TRACKING_MODE_FULL
LANDING = "https://shop.example.org/deal?id=7&ref=mail"
MAILTO = f"mailto:help@{TENANT}?subject=Question"
UNTRACKED = f"https://{TENANT}/account?u=42"
HTML = (
    "<html><body><p>Hi {{ name }}, this week's deal is waiting for you.</p>"
    '<p><a href="https://shop.example.org/deal?id=7&amp;ref=mail">See the deal</a></p>'
    f'<p><a href="{MAILTO}">Write to us</a></p>'
    f'<p><a data-no-track href="{UNTRACKED}">Your account</a></p>'
    "</body></html>"
)
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) KannonE2E/1.0"
HREF = re.compile(r"""<a\b[^>]*?\bhref="([^"]*)\"""", re.IGNORECASE)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def flip(token: str, index: int) -> str:
    """`token` with the character at `index` replaced by the base64url digit one bit away."""
    value = B64URL.index(token[index])
    return token[:index] + B64URL[value ^ 1] + token[index + 1 :]


def alter(address: str, index: int) -> str:
    """`address` with one character changed (also when compared case-insensitively)."""
    ch = address[index].lower()
    return address[:index] + ("x" if ch != "x" else "y") + address[index + 1 :]


async def stats_stored(pipeline: Pipeline, batch: str, count: int) -> None:
    async def enough() -> bool:
        return len(await pipeline.stats(batch)) >= count

    await wait_for(enough, what=f"{count} stats rows of {batch}")


async def deliver(
    engaged: Engaged, sink: SmtpSink, rcpt: str, html: str = HTML
) -> tuple[str, ReceivedMessage]:
    """Send one message to `rcpt`, wait for accepted + delivered; (batch id, what the sink got)."""
    pipeline = engaged.pipeline
    batch = (await pipeline.send_html({rcpt: {"name": "Ann"}}, html=html)).message_id
    rows = await pipeline.wait_until_settled(batch, 1)
    assert [r.type for r in rows] == ["accepted", "delivered"]
    [received] = sink.messages_to(rcpt)
    return batch, received


async def test_pixel_and_click_of_a_delivered_message_show_in_get_stats(
    launch: Launch, smtp_sink: SmtpSink, bus: Bus
) -> None:
    engaged = await launch_engaged(launch)
    pipeline, base = engaged.pipeline, engaged.tracker_base
    # Full tracking (IP and user agent kept) needs the Domain's ceiling raised from identified.
    await set_tracking_ceiling(pipeline, FULL, FULL)
    rcpt = f"ann@{RCPT_DOMAIN}"
    batch, received = await deliver(engaged, smtp_sink, rcpt)
    assert await stored_events(bus) == 2

    # The HTML as the reader's client sees it, quoted-printable decoded.
    part = parse_message(received.data).get_body(("html",))
    assert part is not None
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    html = part.get_content()
    assert isinstance(html, str)
    assert "Hi Ann, this week" in html
    # mailto: and data-no-track links are untouched; the opt-out attribute is gone.
    assert f'<a href="{MAILTO}">Write to us</a>' in html
    assert f'<a href="{UNTRACKED}">Your account</a>' in html
    assert "data-no-track" not in html
    # The one trackable link now goes through the Tracker; the original URL is only in the token.
    [click_url, mailto, untracked] = HREF.findall(html)
    assert (mailto, untracked) == (MAILTO, UNTRACKED)
    assert click_url.startswith(f"{base}/c/")
    assert "shop.example.org" not in html
    [pixel_url] = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', html)
    assert pixel_url.startswith(f"{base}/o/")

    async with httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, timeout=15) as client:
        pixel = await client.get(pixel_url)
        assert pixel.status_code == 200
        assert pixel.headers["content-type"] == "image/gif"
        assert "no-store" in pixel.headers["cache-control"]
        assert pixel.content.startswith(b"GIF89a")
        assert struct.unpack("<HH", pixel.content[6:10]) == (1, 1)
        click = await client.get(click_url)
        assert click.status_code == 307
        assert click.headers["location"] == LANDING

    await stats_stored(pipeline, batch, 4)
    rows = await get_stats(pipeline, rcpt)
    # Newest first: the click came after the open, both after the delivery.
    assert [r.type for r in rows] == ["clicked", "opened", "delivered", "accepted"]
    assert {r.message_id for r in rows} == {batch}
    assert {r.domain for r in rows} == {TENANT}
    clicked, opened = rows[0].data.clicked, rows[1].data.opened
    assert (clicked.url, clicked.user_agent, clicked.ip) == (LANDING, USER_AGENT, "127.0.0.1")
    assert (opened.user_agent, opened.ip) == (USER_AGENT, "127.0.0.1")

    # Tampered tokens: one character flipped at the start, the middle and the very end.
    click_token = click_url.removeprefix(f"{base}/c/")
    open_token = pixel_url.removeprefix(f"{base}/o/")
    tampered = [f"{base}/c/{flip(click_token, i)}" for i in (0, len(click_token) // 2, -1)]
    tampered.append(f"{base}/o/{flip(open_token, len(open_token) // 2)}")
    async with httpx.AsyncClient(headers={"User-Agent": "forger/0.1"}, timeout=15) as client:
        for url in tampered:
            assert url not in (click_url, pixel_url)
            res = await client.get(url)
            assert res.status_code == 404, url
            assert "location" not in res.headers
        # A second, genuine open afterwards: once it is stored, any event of the requests
        # before it would be stored too (published first, on the same connection).
        again = await client.get(pixel_url, headers={"User-Agent": "barrier/1.0"})
        assert again.status_code == 200

    await stats_stored(pipeline, batch, 5)
    assert await stored_events(bus) == 5
    rows = await get_stats(pipeline, rcpt)
    assert [r.type for r in rows] == ["opened", "clicked", "opened", "delivered", "accepted"]
    assert rows[0].data.opened.user_agent == "barrier/1.0"


async def test_a_dsn_after_delivery_shows_bounced_before_delivered(
    launch: Launch, smtp_sink: SmtpSink, bus: Bus
) -> None:
    engaged = await launch_engaged(launch)
    pipeline, port = engaged.pipeline, engaged.smtp.port
    rcpt = f"rosa@{RCPT_DOMAIN}"
    batch, received = await deliver(engaged, smtp_sink, rcpt)
    bounce_address = received.mail_from
    assert bounce_address.endswith(f"@{TENANT}")
    returned_headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert await stored_events(bus) == 2

    def report(action: str, status: str, diagnostic: str, message_id: str) -> bytes:
        return dsn(
            bounce_address=bounce_address,
            recipient=rcpt,
            returned_headers=returned_headers,
            message_id=message_id,
            action=action,
            status=status,
            diagnostic=diagnostic,
        )

    # A delay notice is accepted and recorded as nothing. The server answers 250 only after
    # publishing (PubAck), so an event would already be in the stream.
    delayed = report(
        "delayed", "4.4.7", "smtp; 451 4.4.7 mailbox busy, will retry", "<delay-1@mx.example.test>"
    )
    conversation = await submit_report(port, bounce_address, delayed)
    assert conversation.rcpt[0] == 250
    assert conversation.data[0] == 250
    assert await stored_events(bus) == 2

    failed = report("failed", "5.1.1", "smtp; 550 5.1.1 user unknown", "<fail-1@mx.example.test>")
    # The same DSN to an altered bounce address (Batch token, Recipient hash or tag changed):
    # refused at RCPT, so the message is never taken.
    local = bounce_address.partition("@")[0]
    first_dot, last_dot = local.index("."), local.rindex(".")
    for index in (first_dot - 1, first_dot + 1, last_dot - 1, len(local) - 1):
        forged = alter(bounce_address, index)
        conversation = await submit_report(port, forged, failed)
        assert conversation.rcpt[0] == 550, (forged, conversation)
        assert conversation.rcpt[1].startswith(b"5.7.1"), conversation
        assert conversation.data[0] >= 500, (forged, conversation)
    assert await stored_events(bus) == 2

    # The genuine report: Bounced, stored before the 250.
    conversation = await submit_report(port, bounce_address, failed)
    assert conversation.rcpt[0] == 250
    assert conversation.data[0] == 250
    assert await stored_events(bus) == 3
    await stats_stored(pipeline, batch, 3)

    rows = await get_stats(pipeline, rcpt)
    # Latest wins: the bounce, newest, comes first; the delivery is still on record.
    assert [r.type for r in rows] == ["bounced", "delivered", "accepted"]
    assert {r.message_id for r in rows} == {batch}
    bounced = rows[0].data.bounced
    assert bounced.from_dsn
    assert (bounced.code, bounced.status, bounced.permanent) == (550, "5.1.1", True)
    assert bounced.hard_bounce
    assert bounced.reason == "userunknown"
    assert "user unknown" in bounced.msg
    assert bounced.remote_mta == "mx.example.test"
    # The Dispatcher's bounce consumer took a bounce for a Delivery already gone in its stride.
    assert await pipeline.pool_rows(batch) == {}
