"""The Tracker's HTTP routes (a starlette app): open pixel, click redirect, one-click
unsubscribe, health.

* ``GET|HEAD /o/<token>``: 200 with a real 1x1 transparent GIF, never cacheable (a cached pixel
  hides every later open), and an Opened event.
* ``GET|HEAD /c/<token>``: 307 to the URL signed into the token, and a Clicked event. The URL
  comes only from a verified click token, so the Tracker is no open redirect; an open token
  presented at ``/c/`` (or the reverse) is refused.
* Opened and Clicked are recorded as the token's Tracking Mode says (ADR 0033): the identity in
  the token (an address, a stand-in or the anonymous sentinel) and, only in ``full``, the IP
  address and user agent; the event carries the mode so Stats knows what it may store.
* ``POST /u/<token>``: RFC 8058 one-click unsubscribe (a mail client posts
  ``List-Unsubscribe=One-Click``; the page's button posts the same): publishes Unsubscribed and
  answers only once the bus stored it (503 otherwise, so the client retries), once per
  Recipient and Batch whatever the number of posts (the event id is derived from them).
* ``GET|HEAD /u/<token>``: a small page with a button that posts; it never unsubscribes
  (link scanners and previews fetch every URL of a message).
* Unknown, tampered or expired tokens, and tokens whose Batch id has no domain: 404, no event.
* HEAD is answered like GET but publishes nothing: link scanners and prefetchers send it, and
  they neither show the pixel nor follow the link for a reader.
* ``GET /healthz``: 200 while serving.

Every hit is an event of its own (engagement repeats: a reader opens a mail twice), so event ids
are random rather than derived from the token.
"""

from __future__ import annotations

import html
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from urllib.parse import quote

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, Router

from kannon.envelope.tokens import Claim, ClickClaim, OpenClaim, UnsubscribeClaim
from kannon.model.event_ids import random_event_id, unsubscribed_event_id
from kannon.model.outcome import Clicked, Detail, Opened, Outcome, Unsubscribed, domain_of_batch
from kannon.model.tracking import TrackingMode
from kannon.tracker.client_ip import ClientAddress
from kannon.tracker.events import EventSink
from kannon.tracker.keys import KeyCache

log = logging.getLogger("kannon.tracker")

HITS = Counter(
    "kannon_tracker_hits_total", "Tracking hits, by route and result", ["route", "result"]
)
# Bound once: a labels() lookup per hit is measurable at thousands of hits per second.
_OPEN_OK = HITS.labels("open", "ok")
_OPEN_NOT_FOUND = HITS.labels("open", "not_found")
_CLICK_OK = HITS.labels("click", "ok")
_CLICK_NOT_FOUND = HITS.labels("click", "not_found")
_UNSUBSCRIBE_PAGE = HITS.labels("unsubscribe", "page")
_UNSUBSCRIBE_OK = HITS.labels("unsubscribe", "ok")
_UNSUBSCRIBE_NOT_FOUND = HITS.labels("unsubscribe", "not_found")
_UNSUBSCRIBE_FAILED = HITS.labels("unsubscribe", "failed")

# GIF89a, 1x1, one-colour palette, Graphics Control Extension marking colour 0 transparent.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
# User agents are attacker-chosen text that ends up in every stats row; bound what we store.
MAX_USER_AGENT = 1024
# Everything printable but space stays as signed (so Location equals the original URL); spaces,
# controls (no header injection) and non-ASCII (headers are Latin-1) are percent-encoded.
_LOCATION_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def location_header(url: str) -> str:
    return quote(url, safe=_LOCATION_SAFE)


def new_event_id(kind: str) -> str:
    """A fresh id for an open or a click: each is a new happening (`model.event_ids`)."""
    return random_event_id(kind, uuid.uuid4().hex)


class TrackerRoutes:
    """Request handlers; state shared with the Component (keys, event sink) is injected."""

    def __init__(
        self,
        keys: KeyCache,
        sink: EventSink,
        client_address: ClientAddress,
        clock: Callable[[], datetime],
    ) -> None:
        self.keys = keys
        self.sink = sink
        self.client_address = client_address
        self.clock = clock

    def _client_ip(self, request: Request) -> str:
        peer = request.client.host if request.client is not None else None
        return self.client_address.resolve(
            peer, request.headers.getlist("x-forwarded-for"), request.headers.get("x-real-ip")
        )

    async def _report(self, claim: OpenClaim | ClickClaim, detail: Detail) -> None:
        await self.sink.submit(
            Outcome(
                batch_id=claim.batch_id,
                domain=domain_of_batch(claim.batch_id),
                recipient=claim.recipient,
                timestamp=self.clock(),
                detail=detail,
                event_id=new_event_id(detail.type),
                tracking_mode=claim.mode,
            )
        )

    def _client(self, request: Request, mode: TrackingMode) -> tuple[str, str]:
        """(user agent, IP address) as the mode allows keeping them: only in ``full``."""
        if not mode.keeps_client:
            return "", ""
        user_agent = request.headers.get("user-agent", "")[:MAX_USER_AGENT]
        return user_agent, self._client_ip(request)

    async def _claim(self, request: Request) -> Claim | None:
        claim = await self.keys.verify(request.path_params["token"])
        if claim is None:
            return None
        if not domain_of_batch(claim.batch_id):
            return None
        return claim

    async def open(self, request: Request) -> Response:
        claim = await self._claim(request)
        if not isinstance(claim, OpenClaim):
            _OPEN_NOT_FOUND.inc()
            return not_found()
        if request.method == "GET":  # a HEAD (link scanners, prefetchers) shows nobody anything
            await self._report(claim, Opened(*self._client(request, claim.mode)))
        _OPEN_OK.inc()
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)

    async def click(self, request: Request) -> Response:
        claim = await self._claim(request)
        if not isinstance(claim, ClickClaim):
            _CLICK_NOT_FOUND.inc()
            return not_found()
        if request.method == "GET":  # a HEAD is a link checker, not a reader following the link
            user_agent, ip = self._client(request, claim.mode)
            await self._report(claim, Clicked(user_agent, ip, claim.url))
        _CLICK_OK.inc()
        return Response(
            status_code=307, headers={"Location": location_header(claim.url), **NO_CACHE}
        )

    async def unsubscribe_page(self, request: Request) -> Response:
        """GET/HEAD: the confirmation page. Never unsubscribes (see module doc)."""
        claim = await self._claim(request)
        if not isinstance(claim, UnsubscribeClaim):
            _UNSUBSCRIBE_NOT_FOUND.inc()
            return not_found()
        _UNSUBSCRIBE_PAGE.inc()
        return HTMLResponse(
            unsubscribe_page(domain_of_batch(claim.batch_id), done=False), headers=NO_CACHE
        )

    async def unsubscribe(self, request: Request) -> Response:
        """POST: one-click unsubscribe; 200 once the Unsubscribed event is stored."""
        claim = await self._claim(request)
        if not isinstance(claim, UnsubscribeClaim):
            _UNSUBSCRIBE_NOT_FOUND.inc()
            return not_found()
        domain = domain_of_batch(claim.batch_id)
        outcome = Outcome(
            batch_id=claim.batch_id,
            domain=domain,
            recipient=claim.recipient,
            timestamp=self.clock(),
            detail=Unsubscribed(),
            event_id=unsubscribed_event_id(claim.batch_id, claim.recipient),
        )
        try:
            # Awaited, unlike opens and clicks: a reader's request to stop mail must not be
            # lost, and the client can retry when we say it failed.
            await self.sink.publish_now(outcome)
        except Exception as exc:
            _UNSUBSCRIBE_FAILED.inc()
            log.error(
                "could not record an unsubscribe; the client is told to retry",
                extra={"kv": {"batch_id": claim.batch_id, "error": repr(exc)}},
            )
            return PlainTextResponse(
                "503 try again later", status_code=503, headers={"Retry-After": "60", **NO_CACHE}
            )
        _UNSUBSCRIBE_OK.inc()
        return HTMLResponse(unsubscribe_page(domain, done=True), headers=NO_CACHE)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "keys": len(self.keys.kids)})


def unsubscribe_page(domain: str, *, done: bool) -> str:
    """The page behind Kannon's unsubscribe URL: a button that posts, or the confirmation."""
    sender = html.escape(domain)
    if done:
        body = f"<h1>You are unsubscribed</h1><p>You will get no more mail from {sender}.</p>"
    else:
        # An empty action posts back to this very URL; the field is what RFC 8058 clients send.
        body = (
            f"<h1>Unsubscribe</h1><p>Stop receiving mail from {sender}?</p>"
            '<form method="post" action="">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Unsubscribe</title></head><body>{body}</body></html>"
    )


def not_found() -> Response:
    return PlainTextResponse("404 page not found", status_code=404, headers=NO_CACHE)


def build_app(routes: TrackerRoutes) -> Router:
    """The ASGI app: a bare Router. Starlette's application wrapper adds two middleware layers
    per request (error pages, exception handlers) that we do not use; an unexpected exception
    still becomes a 500 from uvicorn."""
    # GET routes answer HEAD too (starlette adds it), with the same status and headers.
    return Router(
        routes=[
            Route("/o/{token}", routes.open, methods=["GET"]),
            Route("/c/{token}", routes.click, methods=["GET"]),
            Route("/u/{token}", routes.unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", routes.unsubscribe, methods=["POST"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
        ]
    )
