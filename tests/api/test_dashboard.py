"""The dashboard under /dashboard/ on api.http_port, driven by a real headless Chromium.

Debian's `chromium` (installed by `make test`) is driven with Playwright using that executable:
it signs in with a Domain's API key and with the admin token, opens every page, finds the
numbers GetStats and GetStatsAggregated return for a seeded data set, and writes a screenshot of
each page under the test's output folder. With JavaScript off the tables are still there. Over
plain HTTP: a Domain's session cannot open another Domain's pages, and a change without the CSRF
token is refused (and changes nothing).
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import ConsumerConfig
from playwright.async_api import Browser, Page, async_playwright
from prometheus_client import REGISTRY

from kannon.bus.client import Bus
from kannon.bus.subjects import STATS_STREAM
from kannon.db import suppressions
from kannon.db.stats_store import record_events
from kannon.model.outcome import (
    Accepted,
    Bounced,
    Clicked,
    Delivered,
    Detail,
    Opened,
    Outcome,
)
from kannon.model.suppression import Suppression
from kannon.pb.stats.apiv1 import statsapiv1_pb2 as stats_pb
from kannon.wire.stats import data_json
from tests.api.api_test_support import (
    ADMIN_TOKEN,
    RunningApi,
    basic_md,
    create_domain,
    create_key,
    make_settings,
    running_api,
)

DOMAIN = "dash.example"
OTHER = "other.example"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = ("overview", "bounces", "engagement", "domain", "suppressions", "webhooks")


def base(api: RunningApi) -> str:
    return f"http://127.0.0.1:{api.component.http_port}/dashboard"


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


async def seed(api: RunningApi) -> None:
    """A Batch's worth of outcomes over the last hours, as the Stats worker records them."""
    now = datetime.now(UTC) - timedelta(minutes=5)
    plan: list[tuple[int, Detail]] = []
    plan += [(i, Accepted()) for i in range(12)]
    plan += [(i, Delivered()) for i in range(9)]
    plan += [
        (9, Bounced(permanent=True, code=550, message="5.1.1 no such user here", status="5.1.1",
                    reason="userunknown", hard_bounce=True)),
        (10, Bounced(permanent=True, code=552, message="5.2.2 mailbox full", status="5.2.2",
                     reason="mailboxfull")),
    ]  # fmt: skip
    plan += [(i, Opened(user_agent="UA", ip="192.0.2.1")) for i in range(5)]
    plan += [(i, Clicked(user_agent="UA", ip="192.0.2.1", url="https://x.test/a")) for i in (0, 1)]
    plan += [(3, Clicked(user_agent="UA", ip="192.0.2.1", url="https://x.test/b"))]
    events = []
    for n, (i, detail) in enumerate(plan):
        outcome = Outcome(
            batch_id=f"msg_b1@{DOMAIN}",
            recipient=f"r{i}@rcpt{i % 2}.test",
            domain=DOMAIN,
            timestamp=now - timedelta(hours=i % 3, minutes=n % 50),
            detail=detail,
            event_id=f"ev-{n}",
        )
        events.append((outcome, data_json(detail)))
    await record_events(api.pool, events)
    await suppressions.add(
        api.pool,
        Suppression(DOMAIN, "gone@rcpt0.test", "manual", datetime.now(UTC)),
        datetime.now(UTC),
    )


async def sign_in_domain(page: Page, api: RunningApi, key: str) -> None:
    await page.goto(f"{base(api)}/login")
    await page.fill("#domain-login input[name=domain]", DOMAIN)
    await page.fill("#domain-login input[name=api_key]", key)
    await page.click("#domain-login button")
    await page.wait_for_url(re.compile(r".*/overview$"))


async def counts_on(page: Page) -> dict[str, int]:
    cells = await page.query_selector_all("#counts td[data-type]")
    return {
        str(await cell.get_attribute("data-type")): int(await cell.inner_text()) for cell in cells
    }


@pytest.fixture
async def api(pool: asyncpg.Pool) -> AsyncIterator[RunningApi]:
    """The API with its HTTP side on a free port (the default 50052 may be taken)."""
    async with running_api(make_settings(http_port=0), pool) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()


async def expected_counts(api: RunningApi, key: str) -> tuple[dict[str, int], int]:
    """What the Stats API says for the dashboard's default range (the last 24 hours)."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    span = {"domain": DOMAIN, "from_date": ts(end - timedelta(hours=24)), "to_date": ts(end)}
    stub = api.stats()
    aggregated = await stub.GetStatsAggregated(
        stats_pb.GetStatsAggregatedReq(**span), metadata=basic_md(DOMAIN, key)
    )
    totals: Counter[str] = Counter()
    for bucket in aggregated.stats:
        totals[bucket.type] += bucket.count
    raw = await stub.GetStats(stats_pb.GetStatsReq(**span, take=1), metadata=basic_md(DOMAIN, key))
    return dict(totals), raw.total


async def test_browser_signs_in_opens_every_page_and_finds_the_stats_numbers(
    api: RunningApi, browser: Browser, tmp_path: Path
) -> None:
    await create_domain(api, DOMAIN)
    key = await create_key(api, DOMAIN)
    await seed(api)
    totals, total = await expected_counts(api, key)
    assert totals["delivered"] == 9 and total == sum(totals.values())

    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    await sign_in_domain(page, api, key)
    shown = await counts_on(page)
    for type_, count in totals.items():
        assert shown[type_] == count, type_
    assert shown["all events"] == total
    assert await page.locator("svg.chart").count() == 1
    for name in PAGES:
        await page.click(f"#nav-{name}")
        await page.wait_for_url(re.compile(rf".*/{name}$"))
        await page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    await page.click("#nav-pipeline")
    await page.wait_for_url(re.compile(r".*/pipeline$"))
    await page.screenshot(path=str(tmp_path / "pipeline.png"), full_page=True)

    await page.goto(f"{base(api)}/d/{DOMAIN}/bounces")
    text = await page.inner_text("main")
    assert "userunknown" in text and "5.1.1 no such user here" in text and "rcpt1.test" in text
    await page.goto(f"{base(api)}/d/{DOMAIN}/engagement")
    assert "https://x.test/a" in await page.inner_text("main")
    await page.goto(f"{base(api)}/d/{DOMAIN}/suppressions?q=gone")
    assert "gone@rcpt0.test" in await page.inner_text("main")
    await page.click("text=Remove")
    await page.wait_for_url(re.compile(r".*/suppressions$"))
    assert "gone@rcpt0.test" not in await page.inner_text("main")
    await page.goto(f"{base(api)}/d/{DOMAIN}/domain")
    assert f"smtp._domainkey.{DOMAIN}" in await page.inner_text("main")
    await context.close()

    # The operator sees every Domain and manages keys.
    admin = await browser.new_context()
    page = await admin.new_page()
    await page.goto(f"{base(api)}/login")
    await page.fill("#admin-login input[name=admin_token]", ADMIN_TOKEN)
    await page.click("#admin-login button")
    await page.wait_for_url(re.compile(r".*/dashboard/$"))
    await page.click(f"text={DOMAIN}")
    await page.wait_for_url(re.compile(r".*/overview$"))
    assert (await counts_on(page))["delivered"] == 9
    await page.click("#nav-domain")
    await page.fill("input[name=name]", "from-dashboard")
    await page.click("text=Create API key")
    new_key = (await page.inner_text("#new-key")).strip()
    assert new_key.startswith("k_")
    await page.screenshot(path=str(tmp_path / "domain-admin.png"), full_page=True)
    # Sign-out from the Domain list too (its form carries the CSRF token).
    await page.goto(f"{base(api)}/")
    await page.click("text=Sign out")
    await page.wait_for_url(re.compile(r".*/login$"))
    await page.goto(f"{base(api)}/")
    assert page.url.endswith("/login")
    await admin.close()
    # The key just created signs in.
    fresh = await browser.new_context()
    await sign_in_domain(await fresh.new_page(), api, new_key)
    await fresh.close()
    assert len(list(tmp_path.glob("*.png"))) == len(PAGES) + 2  # noqa: ASYNC240


async def test_pages_stay_readable_with_javascript_off(api: RunningApi, browser: Browser) -> None:
    await create_domain(api, DOMAIN)
    key = await create_key(api, DOMAIN)
    await seed(api)
    totals, _ = await expected_counts(api, key)
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await sign_in_domain(page, api, key)
    assert (await counts_on(page))["delivered"] == totals["delivered"]
    await page.goto(f"{base(api)}/d/{DOMAIN}/bounces")
    assert "mailboxfull" in await page.inner_text("main")
    await context.close()


async def signed_in(api: RunningApi, client: httpx.AsyncClient, key: str) -> None:
    response = await client.post(
        f"{base(api)}/login", data={"domain": DOMAIN, "api_key": key}, follow_redirects=False
    )
    assert response.status_code == 303
    assert "httponly" in response.headers["set-cookie"].lower()
    assert "samesite=strict" in response.headers["set-cookie"].lower()


async def test_a_domain_key_cannot_open_another_domains_pages(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    await create_domain(api, OTHER)
    key = await create_key(api, DOMAIN)
    async with httpx.AsyncClient() as client:
        await signed_in(api, client, key)
        assert (await client.get(f"{base(api)}/d/{DOMAIN}/overview")).status_code == 200
        for name in PAGES:
            response = await client.get(f"{base(api)}/d/{OTHER}/{name}")
            assert response.status_code == 403, name
        # Nor the operator's Domain list, which sends it to its own overview.
        home = await client.get(f"{base(api)}/", follow_redirects=False)
        assert home.headers["location"].endswith(f"/d/{DOMAIN}/overview")
        # A wrong key does not sign in; a forged cookie is ignored.
        wrong = await client.post(f"{base(api)}/login", data={"domain": DOMAIN, "api_key": "k_x"})
        assert wrong.status_code == 401
    async with httpx.AsyncClient(cookies={"kannon_dashboard": "e30.forged"}) as client:
        response = await client.get(f"{base(api)}/d/{DOMAIN}/overview", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].endswith("/login")


async def test_a_change_without_the_csrf_token_is_refused(api: RunningApi) -> None:
    await create_domain(api, DOMAIN)
    key = await create_key(api, DOMAIN)
    now = datetime.now(UTC)
    await suppressions.add(api.pool, Suppression(DOMAIN, "keep@x.test", "manual", now), now)
    remove = f"{base(api)}/d/{DOMAIN}/suppressions/remove"
    async with httpx.AsyncClient() as client:
        await signed_in(api, client, key)
        refused = await client.post(remove, data={"address": "keep@x.test"})
        assert refused.status_code == 403
        wrong = await client.post(remove, data={"address": "keep@x.test", "csrf": "nope"})
        assert wrong.status_code == 403
        assert await suppressions.get(api.pool, DOMAIN, "keep@x.test", now) is not None
        page = (await client.get(f"{base(api)}/d/{DOMAIN}/suppressions")).text
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        done = await client.post(remove, data={"address": "keep@x.test", "csrf": token.group(1)})
        assert done.status_code == 303
        assert await suppressions.get(api.pool, DOMAIN, "keep@x.test", now) is None
        # Signing out also needs the token; afterwards the cookie is gone.
        assert (await client.post(f"{base(api)}/logout")).status_code == 403


async def test_metrics_count_calls_by_method_and_code_and_sample_the_pool(
    api: RunningApi,
) -> None:
    """The /metrics side of the dashboard's figures (ADR 0045)."""
    await create_domain(api, DOMAIN)
    key = await create_key(api, DOMAIN)

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok = value("kannon_api_calls_total", method="GetStats", code="OK")
    refused = value("kannon_api_calls_total", method="GetStats", code="UNAUTHENTICATED")
    timed = value("kannon_api_call_seconds_count", method="GetStats")
    now = datetime.now(UTC)
    request = stats_pb.GetStatsReq(
        domain=DOMAIN, from_date=ts(now - timedelta(hours=1)), to_date=ts(now)
    )
    await api.stats().GetStats(request, metadata=basic_md(DOMAIN, key))
    with pytest.raises(grpc.aio.AioRpcError):
        await api.stats().GetStats(request, metadata=basic_md(DOMAIN, "k_wrong"))
    assert value("kannon_api_calls_total", method="GetStats", code="OK") == ok + 1
    assert value("kannon_api_calls_total", method="GetStats", code="UNAUTHENTICATED") == refused + 1
    assert value("kannon_api_call_seconds_count", method="GetStats") == timed + 1

    await api.pool.execute(
        """INSERT INTO messages (message_id, subject, sender_email, sender_alias, template_id,
                                 domain)
           VALUES ('msg_m1@dash.example', 's', 'a@dash.example', 'A', 't', $1)""",
        DOMAIN,
    )
    await api.pool.execute(
        """INSERT INTO sending_pool_emails (email, message_id, status, domain,
                                            original_scheduled_time, created_at)
           VALUES ('x@y.test', 'msg_m1@dash.example', 'scheduled', $1, now(),
                   now() - interval '90 seconds')""",
        DOMAIN,
    )
    await api.component._sample_pool()
    assert value("kannon_pool_deliveries", status="scheduled") == 1
    assert value("kannon_pool_deliveries", status="queued") == 0
    assert value("kannon_pool_oldest_seconds", status="scheduled") >= 90


async def test_jetstream_backlogs_per_durable_in_metrics_and_on_the_pipeline_page(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    """Two events wait for a stats consumer: /metrics and the operator's Pipeline page say so."""
    durable = "dashboard-test-durable"
    await bus.js.add_consumer(
        STATS_STREAM, ConsumerConfig(durable_name=durable, filter_subject="kannon.stats.*")
    )
    for n in range(2):
        await bus.publish("kannon.stats.delivered", b"x", f"dash-{n}")
    async with running_api(make_settings(http_port=0), pool, bus) as api:
        await api.component._sample_consumers()
        labels = {"stream": STATS_STREAM, "durable": durable}
        assert REGISTRY.get_sample_value("kannon_jetstream_pending", labels) == 2
        assert REGISTRY.get_sample_value("kannon_jetstream_redelivered", labels) == 0
        async with httpx.AsyncClient() as client:
            signed = await client.post(f"{base(api)}/login", data={"admin_token": ADMIN_TOKEN})
            assert signed.status_code == 303
            page = (await client.get(f"{base(api)}/pipeline")).text
        assert durable in page and "JetStream consumers" in page
