"""Webhooks end to end against real PostgreSQL, nats-server and HTTP receivers the tests start:
outcome events published on the bus reach the endpoints signed per Standard Webhooks (verified
with the `standardwebhooks` library), a receiver that fails for a while gets every event after
dedup by webhook-id, a dead endpoint does not delay a healthy one, non-public addresses are
refused without webhooks.allow_private, a failing endpoint is given up after the window."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook

from kannon.bus.client import Bus
from kannon.bus.subjects import STAT_TYPES, WEBHOOK_EVENT_TYPES
from kannon.config import Settings
from kannon.db import webhooks as store
from kannon.db.database import Database
from kannon.ids import new_webhook_endpoint_id, new_webhook_secret
from kannon.model.event_ids import webhook_id
from kannon.model.outcome import Bounced, Delivered, Errored, Outcome
from kannon.model.webhooks import Endpoint
from kannon.webhooks.component import WebhooksWorker
from kannon.wire.stats import publish_outcome
from tests.support import http_receiver, running, store_domain, wait_for

DOMAIN = "hooks.example"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
"""`stale_before` of replays in tests whose claims all belong to a live worker."""
BATCH = f"msg_hookbatch@{DOMAIN}"


@dataclass
class Receiver:
    """An HTTP endpoint on loopback recording every request; `respond` decides the answer."""

    respond: Callable[[Receiver], Awaitable[int]]
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered_ids(self) -> list[str]:
        return [h["webhook-id"] for h, _, status in self.requests if 200 <= status < 300]


async def always(status: int) -> Callable[[Receiver], Awaitable[int]]:
    async def respond(_: Receiver) -> int:
        return status

    return respond


@contextlib.asynccontextmanager
async def receiver(respond: Callable[[Receiver], Awaitable[int]]) -> AsyncIterator[Receiver]:
    state = Receiver(respond)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        status = await state.respond(state)
        state.requests.append(({k.lower(): v for k, v in request.headers.items()}, body, status))
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async with http_receiver("/hook", handle) as state.port:
        yield state


async def given_up(pool: asyncpg.Pool, count: int) -> bool:
    """Whether `count` deliveries (or more) have been given up."""
    found = await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'given_up'")
    return bool(found >= count)


async def replay(
    pool: asyncpg.Pool,
    endpoint: Endpoint,
    *,
    now: datetime | None = None,
    stale_before: datetime = LONG_AGO,
    **which: Any,
) -> int:
    """Replay to `endpoint` what `which` names (`event_id=`, or `start=` and `end=`)."""
    when = now or datetime.now(UTC)
    return await store.replay(
        pool, DOMAIN, endpoint.id, now=when, stale_before=stale_before, **which
    )


def settings(**webhooks: Any) -> Settings:
    values = {
        "allow_http": True,
        "allow_private": True,
        "backoff_min": "100ms",
        "backoff_max": "500ms",
        "timeout": "2s",
        "idle_interval": "50ms",
        **webhooks,
    }
    return Settings.model_validate({"webhooks": values, "nats": {"ack_wait": "10s"}})


@pytest.fixture
async def pool(pool: Database) -> Database:
    await store_domain(pool, DOMAIN)
    return pool


async def add_endpoint(pool: asyncpg.Pool, url: str, *types: str) -> tuple[Endpoint, str]:
    now = datetime.now(UTC)
    endpoint = Endpoint(
        id=new_webhook_endpoint_id(),
        domain=DOMAIN,
        url=url,
        event_types=tuple(types),
        enabled=True,
        description="",
        created_at=now,
        updated_at=now,
    )
    secret = new_webhook_secret()
    await store.insert_endpoint(pool, endpoint, secret)
    return endpoint, secret


def outcome(i: int, detail: Any = None) -> Outcome:
    return Outcome(
        batch_id=BATCH,
        domain=DOMAIN,
        recipient=f"r{i}@example.org",
        timestamp=datetime.now(UTC),
        detail=detail or Delivered(),
        event_id=f"delivered.hooktest.{i}",
    )


async def test_events_arrive_signed_per_standard_webhooks(pool: asyncpg.Pool, bus: Bus) -> None:
    async with receiver(await always(200)) as hook:
        endpoint, secret = await add_endpoint(pool, hook.url)
        _, other_secret = await add_endpoint(pool, hook.url + "?only=bounced", "bounced")
        async with running(WebhooksWorker(settings(), pool, bus)):
            await publish_outcome(bus, outcome(1))
            bounced = outcome(2, Bounced(permanent=True, code=550, message="no such user"))
            bounced = Outcome(**{**bounced.__dict__, "event_id": "bounced.hooktest.2"})
            await publish_outcome(bus, bounced)
            # Not an outcome: one failed attempt that will be retried.
            await publish_outcome(bus, outcome(3, Errored(code=451, message="later")))
            await wait_for(lambda: len(hook.requests) >= 3, what="three POSTs", timeout=30)
            await asyncio.sleep(0.3)  # nothing more may come (the error event is not sent)
        assert len(hook.requests) == 3
        verified = []
        for headers, body, _ in hook.requests:
            # The reference library checks id, timestamp and v1 signature with the right secret.
            try:
                verified.append(Webhook(secret).verify(body, headers))
            except Exception:
                verified.append(Webhook(other_secret).verify(body, headers))
        kinds = sorted(event["type"] for event in verified)
        assert kinds == ["bounced", "bounced", "delivered"]
        delivered = next(e for e in verified if e["type"] == "delivered")
        assert delivered["data"]["email"] == "r1@example.org"
        assert delivered["data"]["message_id"] == BATCH
        ids = {h["webhook-id"] for h, _, _ in hook.requests}
        assert webhook_id("delivered.hooktest.1") in ids
        # A wrong secret does not verify.
        with pytest.raises(Exception, match=r"(?i)signature"):
            Webhook(new_webhook_secret()).verify(hook.requests[0][1], hook.requests[0][0])
        attempts, total = await store.list_attempts(pool, DOMAIN, endpoint.id, offset=0, limit=10)
        assert total == 2 and all(a.status_code == 200 for a in attempts)


def metric_values() -> dict[str, float]:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return {
        "delivered": value("kannon_webhooks_attempts_total", result="delivered"),
        "retry": value("kannon_webhooks_attempts_total", result="retry"),
        "status": value("kannon_webhooks_failures_total", kind="status"),
        "lag": value("kannon_webhooks_lag_seconds_count"),
    }


async def test_a_receiver_that_fails_for_a_while_gets_every_event(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    started = time.monotonic()

    async def flaky(_: Receiver) -> int:
        return 503 if time.monotonic() - started < 1.5 else 200

    before = metric_values()
    async with receiver(flaky) as hook:
        await add_endpoint(pool, hook.url)
        async with running(WebhooksWorker(settings(), pool, bus)):
            for i in range(60):
                await publish_outcome(bus, outcome(i))
            expected = {webhook_id(f"delivered.hooktest.{i}") for i in range(60)}
            await wait_for(
                lambda: set(hook.delivered_ids()) >= expected, what="every event", timeout=60
            )
        assert any(status == 503 for _, _, status in hook.requests)  # it did fail for a while
        # Attempts, failures and lag as exported on /metrics.
        after = metric_values()
        failed = sum(1 for _, _, status in hook.requests if status == 503)
        assert after["delivered"] - before["delivered"] == 60
        assert after["retry"] - before["retry"] == failed
        assert after["status"] - before["status"] == failed
        assert after["lag"] - before["lag"] == 60
        assert set(hook.delivered_ids()) == expected  # exactly once after dedup by webhook-id
        rows = await pool.fetch("SELECT status, attempts FROM webhook_deliveries")
        assert {r["status"] for r in rows} == {"delivered"} and len(rows) == 60
        assert max(r["attempts"] for r in rows) >= 2


async def test_a_dead_endpoint_does_not_delay_a_healthy_one(pool: asyncpg.Pool, bus: Bus) -> None:
    async def hang(_: Receiver) -> int:
        await asyncio.sleep(3600)
        return 200

    async with receiver(hang) as dead, receiver(await always(204)) as healthy:
        await add_endpoint(pool, dead.url)
        await add_endpoint(pool, healthy.url)
        config = settings(timeout="5s", endpoint_concurrency=4)
        async with running(WebhooksWorker(config, pool, bus)):
            began = time.monotonic()
            for i in range(100):
                await publish_outcome(bus, outcome(i))
            await wait_for(
                lambda: len(healthy.delivered_ids()) >= 100, what="the healthy endpoint", timeout=30
            )
            took = time.monotonic() - began
            # The dead one needs 100 / 4 × 5 s ≈ 2 min for its first attempts alone.
            pending = await pool.fetchval(
                """SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints e
                   ON e.id = d.endpoint_id WHERE e.url = $1 AND d.attempts = 0""",
                dead.url,
            )
        assert took < 30 and pending > 50, (took, pending)


async def test_non_public_addresses_are_refused_without_allow_private(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    async with receiver(await always(200)) as hook:
        # `localhost` is a name: refused when it resolves, at the POST.
        endpoint, _ = await add_endpoint(pool, f"http://localhost:{hook.port}/hook")
        literal, _ = await add_endpoint(pool, hook.url)
        config = settings(
            allow_private=False, retry_window="1s", backoff_min="2s", backoff_max="2s"
        )
        async with running(WebhooksWorker(config, pool, bus)):
            await publish_outcome(bus, outcome(1))

            await wait_for(lambda: given_up(pool, 2), what="both deliveries given up", timeout=30)
        assert hook.requests == []
        for ep in (endpoint, literal):
            attempts, _ = await store.list_attempts(pool, DOMAIN, ep.id, offset=0, limit=5)
            assert attempts and attempts[0].status_code is None
            assert attempts[0].error.startswith("refused:"), attempts[0].error
            assert "non-public" in attempts[0].error or "loopback" in attempts[0].error


async def test_given_up_after_the_retry_window(pool: asyncpg.Pool, bus: Bus) -> None:
    async with receiver(await always(500)) as hook:
        endpoint, _ = await add_endpoint(pool, hook.url)
        config = settings(retry_window="1s", backoff_min="200ms")
        async with running(WebhooksWorker(config, pool, bus)):
            await publish_outcome(bus, outcome(7))

            await wait_for(lambda: given_up(pool, 1), what="given up", timeout=30)
        attempts, total = await store.list_attempts(pool, DOMAIN, endpoint.id, offset=0, limit=50)
        assert total >= 2 and total == len(hook.requests)
        assert all(a.status_code == 500 and a.error == "HTTP 500" for a in attempts)
        assert attempts[0].response == "nope" and attempts[0].delivery_status == "given_up"


async def test_a_redelivered_event_is_posted_once(pool: asyncpg.Pool, bus: Bus) -> None:
    async with receiver(await always(200)) as hook:
        await add_endpoint(pool, hook.url)
        worker = WebhooksWorker(settings(), pool, bus)
        async with running(worker):
            event = outcome(5)
            await publish_outcome(bus, event)
            await wait_for(lambda: len(hook.requests) >= 1, what="the POST", timeout=30)
            # The same event handled again (a redelivery after a lost ack): no second row.
            from kannon.bus.client import BusMessage
            from kannon.wire.stats import encode

            again = BusMessage("kannon.stats.delivered", encode(event), event.event_id, 2, 1)
            await worker.handle(again)
            await asyncio.sleep(0.3)
        assert len(hook.requests) == 1


def test_event_types_follow_the_stat_types() -> None:
    # Data-driven: a type added to STAT_TYPES (complained, unsubscribed) is sent without code.
    assert set(WEBHOOK_EVENT_TYPES) == set(STAT_TYPES) - {"error"}


async def test_a_replay_resends_exactly_the_selected_events(pool: asyncpg.Pool, bus: Bus) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)

    def at(i: int) -> Outcome:
        return Outcome(**{**outcome(i).__dict__, "timestamp": base + timedelta(minutes=i)})

    async with receiver(await always(200)) as hook, receiver(await always(200)) as other:
        endpoint, _ = await add_endpoint(pool, hook.url)
        await add_endpoint(pool, other.url)
        async with running(WebhooksWorker(settings(), pool, bus)):
            for i in range(10):
                await publish_outcome(bus, at(i))
            await wait_for(
                lambda: len(hook.requests) >= 10 and len(other.requests) >= 10,
                what="all",
                timeout=30,
            )
            one = await replay(pool, endpoint, event_id="delivered.hooktest.3")
            await wait_for(lambda: len(hook.requests) >= 11, what="the replayed event", timeout=30)
            span = await replay(
                pool, endpoint, start=base + timedelta(minutes=5), end=base + timedelta(minutes=8)
            )
            await wait_for(lambda: len(hook.requests) >= 14, what="the replayed range", timeout=30)
            await asyncio.sleep(0.5)  # nothing more may come
        assert (one, span) == (1, 3)
        ids = [h["webhook-id"] for h, _, _ in hook.requests[10:]]
        assert sorted(ids) == sorted(webhook_id(f"delivered.hooktest.{i}") for i in (3, 5, 6, 7))
        assert len(other.requests) == 10  # the other endpoint was not replayed to


async def test_a_replay_during_a_post_sends_once_more_after_it(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    spans: list[tuple[float, float]] = []
    release = asyncio.Event()

    async def slow(_: Receiver) -> int:
        began = time.monotonic()
        await release.wait()
        spans.append((began, time.monotonic()))
        return 200

    async with receiver(slow) as hook:
        endpoint, _ = await add_endpoint(pool, hook.url)
        async with running(WebhooksWorker(settings(endpoint_concurrency=4), pool, bus)):
            await publish_outcome(bus, outcome(0))

            async def in_flight() -> bool:
                return bool(
                    await pool.fetchval(
                        "SELECT count(*) FROM webhook_deliveries WHERE claimed_at IS NOT NULL"
                    )
                )

            await wait_for(in_flight, what="the first POST in flight", timeout=30)
            replayed = await replay(pool, endpoint, event_id="delivered.hooktest.0")
            await asyncio.sleep(0.5)  # scheduler cycles: the claimed row must not go out twice
            release.set()
            await wait_for(
                lambda: len(hook.requests) >= 2, what="the replay after the first POST", timeout=30
            )
            await asyncio.sleep(0.5)  # nothing more may come
        assert replayed == 1 and len(hook.requests) == 2
        (_, first_end), (second_start, _) = sorted(spans)
        assert second_start >= first_end  # the replay did not race the POST in flight
        row = await pool.fetchrow("SELECT status, attempts FROM webhook_deliveries")
        # The replay's own attempt decides the state, counted from the replay.
        assert (row["status"], row["attempts"]) == ("delivered", 1)


async def test_a_replay_releases_the_claim_of_a_dead_worker(pool: asyncpg.Pool) -> None:
    endpoint, _ = await add_endpoint(pool, "http://127.0.0.1:9/hook")
    now = datetime.now(UTC)
    delivery = store.NewDelivery(
        endpoint.id, "delivered.dead.1", "msg_x", DOMAIN, "delivered", now, b"{}"
    )
    await store.insert_deliveries(pool, [delivery], now)
    # Claimed an hour ago by a worker that died, and one claimed just now by a live one.
    await pool.execute(
        "UPDATE webhook_deliveries SET claimed_at = $1",
        (now - timedelta(hours=1)).replace(tzinfo=None),
    )
    scheduled = await replay(
        pool, endpoint, now=now, stale_before=now - timedelta(minutes=5), event_id="msg_x"
    )
    assert scheduled == 1
    assert await pool.fetchval("SELECT claimed_at FROM webhook_deliveries") is None
    live = now.replace(tzinfo=None)
    await pool.execute("UPDATE webhook_deliveries SET claimed_at = $1", live)
    await replay(pool, endpoint, now=now, stale_before=now - timedelta(minutes=5), event_id="msg_x")
    assert await pool.fetchval("SELECT claimed_at FROM webhook_deliveries") == live
