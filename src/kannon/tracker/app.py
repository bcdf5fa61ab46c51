"""The Tracker's HTTP routes (a starlette app): open pixel, click redirect, health.

* ``GET|HEAD /o/<token>``: 200 with a real 1x1 transparent GIF, never cacheable (a cached pixel
  hides every later open), and an Opened event.
* ``GET|HEAD /c/<token>``: 307 to the URL signed into the token, and a Clicked event. The URL
  comes only from a verified click token, so the Tracker is no open redirect; an open token
  presented at ``/c/`` (or the reverse) is refused.
* Unknown, tampered or expired tokens, and tokens whose Batch id has no domain: 404, no event.
* HEAD is answered like GET but publishes nothing: link scanners and prefetchers send it, and
  they neither show the pixel nor follow the link for a reader.
* ``GET /healthz``: 200 while serving.

Every hit is an event of its own (engagement repeats: a reader opens a mail twice), so event ids
are random rather than derived from the token.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from urllib.parse import quote

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, Router

from kannon.envelope.ids import domain_of_batch
from kannon.envelope.tokens import ClickClaim, OpenClaim
from kannon.model.outcome import Clicked, Detail, Opened, Outcome
from kannon.tracker.client_ip import ClientAddress
from kannon.tracker.events import EventSink
from kannon.tracker.keys import KeyCache

HITS = Counter(
    "kannon_tracker_hits_total", "Tracking hits, by route and result", ["route", "result"]
)
# Bound once: a labels() lookup per hit is measurable at thousands of hits per second.
_OPEN_OK = HITS.labels("open", "ok")
_OPEN_NOT_FOUND = HITS.labels("open", "not_found")
_CLICK_OK = HITS.labels("click", "ok")
_CLICK_NOT_FOUND = HITS.labels("click", "not_found")

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
    return f"{kind}.{uuid.uuid4().hex}"


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
            )
        )

    async def _claim(self, request: Request) -> OpenClaim | ClickClaim | None:
        claim = await self.keys.verify(request.path_params["token"])
        if claim is None:
            return None
        try:
            domain_of_batch(claim.batch_id)
        except ValueError:
            return None
        return claim

    async def open(self, request: Request) -> Response:
        claim = await self._claim(request)
        if not isinstance(claim, OpenClaim):
            _OPEN_NOT_FOUND.inc()
            return not_found()
        user_agent = request.headers.get("user-agent", "")[:MAX_USER_AGENT]
        if request.method == "GET":  # a HEAD (link scanners, prefetchers) shows nobody anything
            await self._report(claim, Opened(user_agent, self._client_ip(request)))
        _OPEN_OK.inc()
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)

    async def click(self, request: Request) -> Response:
        claim = await self._claim(request)
        if not isinstance(claim, ClickClaim):
            _CLICK_NOT_FOUND.inc()
            return not_found()
        user_agent = request.headers.get("user-agent", "")[:MAX_USER_AGENT]
        if request.method == "GET":  # a HEAD is a link checker, not a reader following the link
            await self._report(claim, Clicked(user_agent, self._client_ip(request), claim.url))
        _CLICK_OK.inc()
        return Response(
            status_code=307, headers={"Location": location_header(claim.url), **NO_CACHE}
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "keys": len(self.keys.kids)})


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
            Route("/healthz", routes.healthz, methods=["GET"]),
        ]
    )
