"""The analytics dashboard: server-rendered HTML pages under ``/dashboard/`` (ADR 0043).

Served by the `api` Component on `api.http_port`, beside the Connect/gRPC-Web app (see
:func:`with_dashboard`). Every page is plain HTML with its charts as inline SVG, so it works
with JavaScript off; the stylesheet is shipped in the package. Sign-in takes the admin token
(every Domain) or a Domain and one of its API keys (that Domain only); the session lives in a
signed HttpOnly SameSite=Strict cookie, and every POST but sign-in carries the session's CSRF
token (ADR 0044). A Domain session asking for another Domain's page gets 403.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kannon.bus.subjects import SENDING_STREAM, STATS_STREAM
from kannon.dashboard import charts
from kannon.dashboard.session import (
    COOKIE_NAME,
    Session,
    csrf_ok,
    csrf_token,
    decode,
    encode,
    signing_key,
)
from kannon.db import apikeys, suppressions, templates, webhooks
from kannon.db import dashboard as queries
from kannon.db.database import Database
from kannon.db.stats_queries import aggregated_stats
from kannon.ids import new_api_key, new_api_key_id
from kannon.model.apikey import ApiKey, check_name, hash_key, key_prefix
from kannon.model.domain import canonical_domain_name
from kannon.model.errors import KannonError
from kannon.model.webhooks import claim_timeout
from kannon.runtime.clock import utc_now

if TYPE_CHECKING:
    from kannon.bus.client import Bus
    from kannon.config import Settings

PREFIX = "/dashboard"
SESSION_TTL = timedelta(hours=12)
RANGES = {"24h": 24, "7d": 24 * 7, "30d": 24 * 30}
TYPES = (
    "accepted",
    "delivered",
    "bounced",
    "failed",
    "opened",
    "clicked",
    "complained",
    "unsubscribed",
    "rejected",
)
MAX_FORM = 16 * 1024


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


@dataclass
class Page:
    """What one page shows; `blocks` are rendered in order by page.html."""

    title: str
    domain: str | None
    blocks: list[dict[str, Any]]
    range_key: str = "24h"


class Dashboard:
    def __init__(self, settings: Settings, db: Database, bus: Bus | None = None) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self._key: bytes | None = None
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("kannon.dashboard", "templates"),
            autoescape=True,
        )

    async def key(self) -> bytes:
        if self._key is None:
            secret = await queries.session_secret(self.db)
            self._key = signing_key(secret, self.settings.api.admin_token)
        return self._key

    # --- sessions ----------------------------------------------------------------------------

    async def session(self, request: Request) -> Session | None:
        cookie = request.cookies.get(COOKIE_NAME)
        if not cookie:
            return None
        now = utc_now()
        session = decode(cookie, await self.key(), now)
        if session is None or session.domain is None:
            return session
        # A deactivated or expired key ends its sessions.
        assert session.key_hash is not None
        key = await apikeys.find_key_by_hash(self.db, session.domain, session.key_hash)
        return session if key is not None and key.usable_at(now) else None

    def _render(
        self,
        request: Request,
        session: Session | None,
        page: Page,
        status: int = 200,
        csrf: str = "",
    ) -> HTMLResponse:
        template = self.env.get_template("page.html")
        body = template.render(
            page=page,
            session=session,
            csrf=csrf,
            prefix=PREFIX,
            ranges=list(RANGES),
            nav=_NAV,
            quote=quote,
        )
        return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)

    async def _form(self, request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM:
            return {}
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in parsed.items()}

    # --- sign-in -----------------------------------------------------------------------------

    async def login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        blocks: list[dict[str, Any]] = []
        if error:
            blocks.append({"kind": "error", "text": error})
        blocks.append({"kind": "login", "admin": self.settings.api.admin_token is not None})
        return self._render(request, None, Page("Sign in", None, blocks), status)

    async def login(self, request: Request) -> Response:
        form = await self._form(request)
        now = utc_now()
        nonce = secrets.token_urlsafe(16)
        expires = int((now + SESSION_TTL).timestamp())
        token = self.settings.api.admin_token
        if form.get("admin_token"):
            if token is None or not hmac.compare_digest(
                form["admin_token"].strip().encode(), token.strip().encode()
            ):
                return await self.login_page(request, "Wrong admin token.", 401)
            session = Session(None, None, expires, nonce)
            target = f"{PREFIX}/"
        else:
            try:
                domain = canonical_domain_name(form.get("domain", ""))
            except KannonError:
                return await self.login_page(request, "Wrong Domain or API key.", 401)
            key_hash = hash_key(form.get("api_key", "").strip())
            key = await apikeys.find_key_by_hash(self.db, domain, key_hash)
            if key is None or not key.usable_at(now):
                return await self.login_page(request, "Wrong Domain or API key.", 401)
            session = Session(domain, key_hash, expires, nonce)
            target = f"{PREFIX}/d/{quote(domain)}/overview"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            encode(session, await self.key()),
            max_age=int(SESSION_TTL.total_seconds()),
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request, session: Session) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path=PREFIX)
        return response

    async def home(self, request: Request, session: Session) -> Response:
        if session.domain is not None:
            return RedirectResponse(f"{PREFIX}/d/{quote(session.domain)}/overview", 303)
        names = await queries.domain_names(self.db)
        rows = [[{"text": n, "href": f"{PREFIX}/d/{quote(n)}/overview"}] for n in names]
        block = {"kind": "table", "title": "Domains", "head": ["Domain"], "rows": rows}
        page = Page("Domains", None, [block])
        return self._render(request, session, page, csrf=await self._csrf(session))

    # --- pages of one Domain -----------------------------------------------------------------

    @staticmethod
    def _range(request: Request) -> tuple[str, datetime, datetime]:
        key = request.query_params.get("range", "24h")
        if key not in RANGES:
            key = "24h"
        end = utc_now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return key, end - timedelta(hours=RANGES[key]), end

    async def overview(self, request: Request, session: Session, domain: str) -> Page:
        key, start, end = self._range(request)
        totals = await queries.totals(self.db, domain, start, end)
        buckets = await aggregated_stats(self.db, domain, start, end)
        hours = [start + timedelta(hours=i) for i in range(RANGES[key])]
        index = {hour: i for i, hour in enumerate(hours)}
        shown = [t for t in TYPES if t in totals or t not in ("complained", "unsubscribed")]
        series = {t: [0] * len(hours) for t in shown if t != "rejected"}
        for bucket in buckets:
            i = index.get(bucket.timestamp)
            if i is not None and bucket.type in series:
                series[bucket.type][i] += bucket.count
        labels = [h.strftime("%m-%d %H:00") for h in hours]
        accepted, delivered = totals.get("accepted", 0), totals.get("delivered", 0)
        rates = [
            ["delivery rate", _rate(delivered, accepted)],
            ["bounce rate", _rate(totals.get("bounced", 0), accepted)],
            ["open rate", _rate(totals.get("opened", 0), delivered)],
            ["click rate", _rate(totals.get("clicked", 0), delivered)],
        ]
        return Page(
            f"Overview of {domain}",
            domain,
            [
                {"kind": "chart", "svg": charts.line_chart(f"{domain}, hourly", labels, series)},
                {
                    "kind": "counts",
                    "title": "Events in range",
                    "rows": [[t, totals.get(t, 0)] for t in shown]
                    + [["all events", sum(totals.values())]],
                },
                {
                    "kind": "table",
                    "title": "Rates",
                    "head": ["Rate", "Value"],
                    "rows": [[{"text": a}, {"text": b}] for a, b in rates],
                },
            ],
            key,
        )

    async def bounces(self, request: Request, session: Session, domain: str) -> Page:
        key, start, end = self._range(request)
        reasons = await queries.bounce_reasons(self.db, domain, start, end)
        by_domain = await queries.bounce_domains(self.db, domain, start, end)
        latest = await queries.latest_bounces(self.db, domain, start, end)
        return Page(
            f"Bounces of {domain}",
            domain,
            [
                _counted_table("By reason", "Reason", reasons),
                _counted_table("By recipient domain", "Recipient domain", by_domain),
                {
                    "kind": "table",
                    "title": "Latest bounces",
                    "head": ["Time", "Recipient", "Code", "Status", "Hard", "Diagnostic"],
                    "rows": [
                        [
                            _t(b.timestamp),
                            {"text": b.email},
                            {"text": str(b.code)},
                            {"text": b.status},
                            {"text": "yes" if b.hard else "no"},
                            {"text": b.diagnostic},
                        ]
                        for b in latest
                    ],
                },
            ],
            key,
        )

    async def engagement(self, request: Request, session: Session, domain: str) -> Page:
        key, start, end = self._range(request)
        links = await queries.top_links(self.db, domain, start, end)
        buckets = await aggregated_stats(self.db, domain, start, end)
        hours = [start + timedelta(hours=i) for i in range(RANGES[key])]
        index = {hour: i for i, hour in enumerate(hours)}
        series = {"opened": [0] * len(hours), "clicked": [0] * len(hours)}
        for bucket in buckets:
            i = index.get(bucket.timestamp)
            if i is not None and bucket.type in series:
                series[bucket.type][i] += bucket.count
        labels = [h.strftime("%m-%d %H:00") for h in hours]
        return Page(
            f"Engagement of {domain}",
            domain,
            [
                {"kind": "chart", "svg": charts.line_chart("Opens and clicks", labels, series)},
                _counted_table("Most-clicked links", "Link", links),
            ],
            key,
        )

    async def pipeline(self, request: Request, session: Session) -> Page:
        now = utc_now()
        statuses = await queries.pool_statuses(self.db, session.domain)
        rates = await queries.recent_rates(self.db, session.domain, now - timedelta(minutes=1))
        consumers: dict[str, Any]
        if self.bus is None:
            consumers = {"kind": "text", "text": "JetStream: the API has no NATS connection."}
        elif not session.is_admin:
            consumers = {"kind": "text", "text": "JetStream backlogs are shown to the operator."}
        else:
            states = await self.bus.consumer_states((SENDING_STREAM, STATS_STREAM))
            consumers = {
                "kind": "table",
                "title": "JetStream consumers",
                "head": ["Stream", "Durable", "Pending", "Unacknowledged", "Redelivered"],
                "rows": [
                    [
                        {"text": c.stream},
                        {"text": c.durable},
                        {"text": str(c.pending)},
                        {"text": str(c.ack_pending)},
                        {"text": str(c.redelivered)},
                    ]
                    for c in states
                ],
            }
        return Page(
            "Pipeline now" + (f" ({session.domain})" if session.domain else ""),
            session.domain,
            [
                {
                    "kind": "table",
                    "title": "Deliveries in the Pool",
                    "head": ["Status", "Deliveries", "Oldest"],
                    "rows": [
                        [{"text": s.status}, {"text": str(s.count)}, _t(s.oldest)] for s in statuses
                    ],
                },
                {
                    "kind": "table",
                    "title": "Events in the last minute",
                    "head": ["Type", "Events", "Per second"],
                    "rows": [
                        [{"text": t}, {"text": str(n)}, {"text": f"{n / 60:.2f}"}]
                        for t, n in sorted(rates.items())
                    ],
                },
                consumers,
            ],
        )

    async def domain_page(
        self,
        request: Request,
        session: Session,
        domain: str,
        new_key: str = "",
        checks: list[Any] | None = None,
    ) -> Page:
        from kannon.db.domains import get_domain
        from kannon.dns_records import records_for_domain

        found = await get_domain(self.db, domain)
        if found is None:
            return Page("Not found", domain, [{"kind": "error", "text": "No such Domain."}])
        now = utc_now()
        blocks: list[dict[str, Any]] = []
        if new_key:
            blocks.append({"kind": "secret", "text": new_key})
        records = records_for_domain(self.settings, found, now)
        blocks.append(
            {
                "kind": "table",
                "title": "DNS records to publish",
                "head": ["Type", "Name", "Value", "Purpose"],
                "rows": [
                    [
                        {"text": r.type},
                        {"text": r.name},
                        {"text": r.value, "code": True},
                        {"text": r.purpose},
                    ]
                    for r in records
                ],
            }
        )
        if checks is not None:
            blocks.append(
                {
                    "kind": "table",
                    "title": "DNS check",
                    "head": ["Kind", "Name", "Status", "Detail"],
                    "rows": [
                        [{"text": c.kind}, {"text": c.name}, {"text": c.status}, {"text": c.detail}]
                        for c in checks
                    ],
                }
            )
        blocks.append(
            {
                "kind": "button",
                "action": f"{PREFIX}/d/{quote(domain)}/dns-check",
                "label": "Check DNS now",
            }
        )
        keys, _ = await apikeys.list_api_keys(
            self.db, domain, only_active=False, now=now, offset=0, limit=queries.MAX_ROWS
        )
        blocks.append(
            {
                "kind": "table",
                "title": "API keys",
                "head": ["Name", "Key", "Created", "Expires", "Active", ""],
                "rows": [
                    [
                        {"text": k.name},
                        {"text": k.masked},
                        _t(k.created_at),
                        _t(k.expires_at),
                        {"text": "yes" if k.usable_at(now) else "no"},
                        {
                            "action": f"{PREFIX}/d/{quote(domain)}/keys/{quote(k.id)}/deactivate",
                            "label": "Deactivate",
                        }
                        if session.is_admin and k.is_active
                        else {},
                    ]
                    for k in keys
                ],
            }
        )
        if session.is_admin:
            blocks.append(
                {
                    "kind": "form",
                    "action": f"{PREFIX}/d/{quote(domain)}/keys",
                    "fields": [("name", "Key name")],
                    "label": "Create API key",
                }
            )
        found_templates, _ = await templates.list_templates(
            self.db, domain, offset=0, limit=queries.MAX_ROWS
        )
        blocks.append(
            {
                "kind": "table",
                "title": "Templates",
                "head": ["Template", "Title", "Updated"],
                "rows": [
                    [
                        {
                            "text": t.template_id,
                            "href": f"{PREFIX}/d/{quote(domain)}/templates/{quote(t.template_id)}",
                        },
                        {"text": t.title},
                        _t(t.updated_at),
                    ]
                    for t in found_templates
                ],
            }
        )
        return Page(f"Domain {domain}", domain, blocks)

    async def template_page(self, request: Request, session: Session, domain: str) -> Page:
        template_id = request.path_params["template_id"]
        found = await templates.get_template(self.db, template_id, domain=domain)
        if found is None:
            return Page("Not found", domain, [{"kind": "error", "text": "No such template."}])
        return Page(
            f"Template {found.template_id}",
            domain,
            [
                {
                    "kind": "table",
                    "title": found.title,
                    "head": ["HTML"],
                    "rows": [[{"text": found.html, "code": True}]],
                },
            ],
        )

    async def suppressions_page(self, request: Request, session: Session, domain: str) -> Page:
        search = request.query_params.get("q", "").strip()
        found, total = await suppressions.list_suppressions(
            self.db, domain, utc_now(), prefix=search, limit=queries.MAX_ROWS
        )
        action = f"{PREFIX}/d/{quote(domain)}/suppressions/remove"
        return Page(
            f"Suppressions of {domain}",
            domain,
            [
                {"kind": "search", "value": search, "label": "Address starts with"},
                {
                    "kind": "table",
                    "title": f"{total} suppressed addresses",
                    "head": ["Address", "Reason", "Since", "Expires", ""],
                    "rows": [
                        [
                            {"text": s.address},
                            {"text": s.reason},
                            _t(s.created_at),
                            _t(s.expires_at),
                            {"action": action, "label": "Remove", "hidden": {"address": s.address}},
                        ]
                        for s in found
                    ],
                },
            ],
        )

    async def webhooks_page(self, request: Request, session: Session, domain: str) -> Page:
        endpoints = await webhooks.list_endpoints(self.db, domain)
        blocks: list[dict[str, Any]] = []
        for endpoint in endpoints:
            attempts, total = await webhooks.list_attempts(
                self.db, domain, endpoint.id, offset=0, limit=50
            )
            action = f"{PREFIX}/d/{quote(domain)}/webhooks/{quote(endpoint.id)}/replay"
            blocks.append(
                {
                    "kind": "table",
                    "title": f"{endpoint.url} ({'enabled' if endpoint.enabled else 'disabled'}; "
                    f"{', '.join(endpoint.event_types) or 'every type'}; {total} attempts)",
                    "head": ["Time", "Event", "Type", "HTTP", "Error", "ms", "State", ""],
                    "rows": [
                        [
                            _t(a.attempted_at),
                            {"text": a.event_id},
                            {"text": a.event_type},
                            {"text": str(a.status_code or "")},
                            {"text": a.error},
                            {"text": str(a.latency_ms)},
                            {"text": a.delivery_status},
                            {
                                "action": action,
                                "label": "Replay",
                                "hidden": {"event_id": a.event_id},
                            },
                        ]
                        for a in attempts
                    ],
                }
            )
        if not endpoints:
            blocks.append({"kind": "text", "text": "No webhook endpoints."})
        return Page(f"Webhooks of {domain}", domain, blocks)

    # --- changes (POST, CSRF-checked) ----------------------------------------------------------

    async def create_key(
        self, request: Request, session: Session, domain: str, form: dict[str, str]
    ) -> Response:
        if not session.is_admin:
            return _forbidden()
        now = utc_now()
        try:
            name = check_name(form.get("name", ""))
        except KannonError as exc:
            page = Page("Invalid", domain, [{"kind": "error", "text": str(exc)}])
            return self._render(request, session, page, 400, await self._csrf(session))
        plaintext = new_api_key()
        key = ApiKey(new_api_key_id(), domain, name, key_prefix(plaintext), now, None, True, None)
        await apikeys.insert_api_key(self.db, key, hash_key(plaintext))
        page = await self.domain_page(request, session, domain, new_key=plaintext)
        return self._render(request, session, page, 200, await self._csrf(session))

    async def deactivate_key(
        self, request: Request, session: Session, domain: str, form: dict[str, str]
    ) -> Response:
        if not session.is_admin:
            return _forbidden()
        key_id = request.path_params["key_id"]
        await apikeys.deactivate_api_key(self.db, domain, key_id, utc_now())
        return RedirectResponse(f"{PREFIX}/d/{quote(domain)}/domain", 303)

    async def dns_check(
        self, request: Request, session: Session, domain: str, form: dict[str, str]
    ) -> Response:
        from kannon.db.domains import get_domain
        from kannon.dns_records import check_domain_dns

        found = await get_domain(self.db, domain)
        if found is None:
            return _forbidden()
        checks, _ = await check_domain_dns(self.db, self.settings, found, utc_now())
        page = await self.domain_page(request, session, domain, checks=checks)
        return self._render(request, session, page, 200, await self._csrf(session))

    async def remove_suppression(
        self, request: Request, session: Session, domain: str, form: dict[str, str]
    ) -> Response:
        await suppressions.remove(self.db, domain, form.get("address", ""))
        return RedirectResponse(f"{PREFIX}/d/{quote(domain)}/suppressions", 303)

    async def replay_webhook(
        self, request: Request, session: Session, domain: str, form: dict[str, str]
    ) -> Response:
        endpoint_id = request.path_params["endpoint_id"]
        now = utc_now()
        await webhooks.replay(
            self.db,
            domain,
            endpoint_id,
            now=now,
            stale_before=now - claim_timeout(self.settings.webhooks.timeout),
            event_id=form.get("event_id"),
        )
        return RedirectResponse(f"{PREFIX}/d/{quote(domain)}/webhooks", 303)

    async def _csrf(self, session: Session) -> str:
        return csrf_token(session, await self.key())

    # --- wiring --------------------------------------------------------------------------------

    def _page(self, build: Callable[..., Awaitable[Page]], scoped: bool = True) -> Any:
        async def endpoint(request: Request) -> Response:
            session = await self.session(request)
            if session is None:
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            if scoped:
                domain = request.path_params["domain"].lower()
                if not session.may_see(domain):
                    return _forbidden()
                page = await build(request, session, domain)
            else:
                page = await build(request, session)
            return self._render(request, session, page, csrf=await self._csrf(session))

        return endpoint

    def _change(self, handle: Callable[..., Awaitable[Response]], scoped: bool = True) -> Any:
        async def endpoint(request: Request) -> Response:
            session = await self.session(request)
            if session is None:
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            form = await self._form(request)
            if not csrf_ok(session, await self.key(), form.get("csrf", "")):
                return Response("CSRF token missing or wrong", 403, headers=_SECURITY_HEADERS)
            if not scoped:
                return await handle(request, session)
            domain = request.path_params["domain"].lower()
            if not session.may_see(domain):
                return _forbidden()
            return await handle(request, session, domain, form)

        return endpoint

    async def _home(self, request: Request) -> Response:
        session = await self.session(request)
        if session is None:
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        return await self.home(request, session)

    def app(self) -> Starlette:
        d = "/d/{domain}"
        static = resources.files("kannon.dashboard") / "static"
        routes = [
            Route("/", self._home),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self._change(self.logout, scoped=False), methods=["POST"]),
            Route("/pipeline", self._page(self.pipeline, scoped=False)),
            Route(f"{d}/overview", self._page(self.overview)),
            Route(f"{d}/bounces", self._page(self.bounces)),
            Route(f"{d}/engagement", self._page(self.engagement)),
            Route(f"{d}/domain", self._page(self.domain_page)),
            Route(f"{d}/templates/{{template_id}}", self._page(self.template_page)),
            Route(f"{d}/suppressions", self._page(self.suppressions_page)),
            Route(f"{d}/webhooks", self._page(self.webhooks_page)),
            Route(f"{d}/keys", self._change(self.create_key), methods=["POST"]),
            Route(
                f"{d}/keys/{{key_id}}/deactivate",
                self._change(self.deactivate_key),
                methods=["POST"],
            ),
            Route(f"{d}/dns-check", self._change(self.dns_check), methods=["POST"]),
            Route(
                f"{d}/suppressions/remove", self._change(self.remove_suppression), methods=["POST"]
            ),
            Route(
                f"{d}/webhooks/{{endpoint_id}}/replay",
                self._change(self.replay_webhook),
                methods=["POST"],
            ),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ]
        return Starlette(routes=routes)


_NAV = (
    ("overview", "Overview"),
    ("bounces", "Bounces"),
    ("engagement", "Engagement"),
    ("domain", "Domain"),
    ("suppressions", "Suppressions"),
    ("webhooks", "Webhooks"),
)
_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _forbidden() -> Response:
    return Response("This session may not see that Domain.", 403, headers=_SECURITY_HEADERS)


def _t(value: datetime | None) -> dict[str, str]:
    return {"text": "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")}


def _counted_table(title: str, label: str, rows: list[queries.Counted]) -> dict[str, Any]:
    return {
        "kind": "table",
        "title": title,
        "head": [label, "Count"],
        "rows": [[{"text": r.label}, {"text": str(r.count)}] for r in rows],
    }


def with_dashboard(settings: Settings, db: Database, api_app: Any, bus: Bus | None = None) -> Any:
    """One ASGI app: ``/dashboard...`` to the dashboard, everything else to `api_app`."""
    dashboard = Mount(PREFIX, app=Dashboard(settings, db, bus).app())
    inner = Starlette(routes=[dashboard])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (
            scope["path"] == PREFIX or scope["path"].startswith(PREFIX + "/")
        ):
            if scope["path"] == PREFIX:
                await RedirectResponse(PREFIX + "/", 307)(scope, receive, send)
                return
            await inner(scope, receive, send)
            return
        await api_app(scope, receive, send)

    return app
