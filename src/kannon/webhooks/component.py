"""The webhooks Component (ADR 0032): every outcome event, signed, to each matching endpoint.

Two halves that meet in PostgreSQL:

* **Intake.** A durable JetStream consumer (`kannon-webhooks`, on `kannon.stats.*`) turns each
  event into one `webhook_deliveries` row per enabled endpoint of its Domain that wants its type
  (coalesced into batched INSERTs, idempotent on (endpoint, event)), then acks the event. An
  event is acked only once its rows are committed: at least once, and the bus is never held by a
  slow endpoint.
* **Sending.** A scheduler claims due rows (`FOR UPDATE SKIP LOCKED`, retaken after a timeout)
  and hands each to its endpoint's lane: at most `webhooks.endpoint_concurrency` POSTs in flight
  per endpoint, and endpoints whose lane is full are left out of the next claims. A dead endpoint
  therefore fills its own lane only; the others' rows keep flowing. Each attempt is recorded
  (status, latency, the answer's first bytes) together with the delivery's next state: delivered
  (2xx), retried after an exponential, jittered backoff while `webhooks.retry_window` lasts, or
  given up.

Endpoints are read through a cache of a few seconds: a change reaches events within
:data:`ENDPOINT_CACHE_TTL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result, outcome_consumer
from kannon.bus.subjects import WEBHOOK_EVENT_TYPES, WEBHOOKS_DURABLE
from kannon.config import Settings
from kannon.db import webhooks as store
from kannon.db.batching import Coalescer
from kannon.db.pool import Database, is_outage
from kannon.model.event_ids import webhook_id
from kannon.model.outcome import domain_of_batch
from kannon.model.retry import JITTER_MAX, JITTER_MIN, RetryPolicy
from kannon.model.webhooks import (
    LANE_DEPTH,
    PENDING,
    Endpoint,
    after_attempt,
    claim_timeout,
    is_success,
    payload,
    signed_headers,
    snippet,
)
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life, run_every
from kannon.webhooks.client import RefusedAddress, WebhookClient, describe
from kannon.wire.stats import UndecodableEvent, data_json, decode

if TYPE_CHECKING:
    pass

log = logging.getLogger("kannon.webhooks")

EVENTS = Counter(
    "kannon_webhooks_events_total",
    "Outcome events seen by the webhooks consumer",
    ["result"],  # queued, no_endpoint, skipped, undecodable
)
ATTEMPTS = Counter(
    "kannon_webhooks_attempts_total",
    "POSTs to webhook endpoints",
    ["result"],  # delivered, retry, given_up
)
FAILURES = Counter(
    "kannon_webhooks_failures_total",
    "Failed POSTs by kind",
    ["kind"],  # status, timeout, connection, refused
)
LAG = Histogram(
    "kannon_webhooks_lag_seconds",
    "From the outcome event to its successful POST",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
)

CONSUMER_CONCURRENCY = 256
CLAIM_BATCH = 500
ENDPOINT_CACHE_TTL = 2.0
WRITE_LINGER = 0.01
CLEANUP_INTERVAL = timedelta(minutes=10)


@dataclass
class _Lane:
    """One endpoint's claimed rows and its workers."""

    queue: asyncio.Queue[store.DueDelivery] = field(default_factory=asyncio.Queue)
    in_flight: int = 0
    workers: int = 0


class WebhooksWorker:
    name = "webhooks"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        *,
        clock: Callable[[], datetime] = utc_now,
        client: WebhookClient | None = None,
    ) -> None:
        self._settings = settings
        self._config = settings.webhooks
        self._db = db
        self._bus = bus
        self._clock = clock
        self._policy = RetryPolicy(
            window=self._config.retry_window,
            base=self._config.backoff_min,
            min=self._config.backoff_min,
            max=self._config.backoff_max,
        )
        self._client = client or WebhookClient(
            allow_http=self._config.allow_http,
            allow_private=self._config.allow_private,
            per_host=self._config.endpoint_concurrency,
        )
        self._endpoints: dict[str, tuple[float, list[Endpoint]]] = {}
        self._inserts: Coalescer[list[store.NewDelivery], int] = Coalescer(
            self._insert, max_items=256, linger=WRITE_LINGER
        )
        self._results: Coalescer[store.AttemptRecord, None] = Coalescer(
            self._record, max_items=256, linger=WRITE_LINGER
        )
        self._lanes: dict[str, _Lane] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._claim_timeout = claim_timeout(self._config.timeout)

    @property
    def consumer(self) -> ConsumerSpec:
        return outcome_consumer(
            WEBHOOKS_DURABLE, self._settings.nats, CONSUMER_CONCURRENCY, is_outage
        )

    async def run(self, life: Life) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._schedule_loop(life))
                tasks.create_task(
                    run_every(
                        life,
                        CLEANUP_INTERVAL,
                        self.cleanup,
                        lambda exc: log.warning("webhook retention cleanup failed: %s", exc),
                    )
                )
                await self._bus.consume(
                    self.consumer, self.handle, life.stopping, on_ready=life.ready
                )
        finally:
            await self._drain()
            await self._client.close()

    # --- intake ------------------------------------------------------------------------------

    async def _endpoints_of(self, domain: str) -> list[Endpoint]:
        now = time.monotonic()
        cached = self._endpoints.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await store.enabled_endpoints(self._db, [domain])
        self._endpoints[domain] = (now + ENDPOINT_CACHE_TTL, found)
        return found

    async def handle(self, msg: BusMessage) -> Result:
        try:
            outcome = decode(msg.data, msg.msg_id)
        except UndecodableEvent as exc:
            # Not ours to judge: Stats dead-letters it; webhooks just do not send it.
            log.warning("undecodable outcome event skipped", extra={"kv": {"error": str(exc)}})
            EVENTS.labels("undecodable").inc()
            return Result.ack()
        if outcome.type not in WEBHOOK_EVENT_TYPES:
            EVENTS.labels("skipped").inc()
            return Result.ack()
        domain = outcome.domain or domain_of_batch(outcome.batch_id)
        wanted = [e for e in await self._endpoints_of(domain) if e.wants(outcome.type)]
        if not wanted:
            EVENTS.labels("no_endpoint").inc()
            return Result.ack()
        body = payload(
            outcome.type,
            timestamp=outcome.timestamp,
            event_id=outcome.event_id,
            batch_id=outcome.batch_id,
            domain=domain,
            recipient=outcome.recipient,
            details=data_json(outcome.detail),
        )
        hook_id = webhook_id(outcome.event_id)
        await self._inserts.submit(
            [
                store.NewDelivery(
                    endpoint_id=endpoint.id,
                    event_id=outcome.event_id,
                    webhook_id=hook_id,
                    domain=domain,
                    event_type=outcome.type,
                    event_at=outcome.timestamp,
                    payload=body,
                )
                for endpoint in wanted
            ]
        )
        EVENTS.labels("queued").inc()
        self._wake.set()
        return Result.ack()

    async def _insert(self, batches: list[list[store.NewDelivery]]) -> list[int | BaseException]:
        rows = [row for batch in batches for row in batch]
        await store.insert_deliveries(self._db, rows, self._clock())
        return [len(batch) for batch in batches]

    # --- sending -----------------------------------------------------------------------------

    def _busy(self) -> list[str]:
        limit = self._config.endpoint_concurrency * LANE_DEPTH
        return [
            endpoint_id
            for endpoint_id, lane in self._lanes.items()
            if lane.queue.qsize() + lane.in_flight >= limit
        ]

    async def claim(self) -> int:
        """One scheduling cycle: claim due rows into their lanes; how many were claimed."""
        now = self._clock()
        due = await store.claim_due(
            self._db,
            now=now,
            stale_before=now - self._claim_timeout,
            limit=CLAIM_BATCH,
            busy_endpoints=self._busy(),
        )
        for delivery in due:
            self._enqueue(delivery)
        return len(due)

    def _enqueue(self, delivery: store.DueDelivery) -> None:
        lane = self._lanes.setdefault(delivery.endpoint_id, _Lane())
        lane.queue.put_nowait(delivery)
        if lane.workers < self._config.endpoint_concurrency:
            lane.workers += 1
            task = asyncio.create_task(self._work(delivery.endpoint_id, lane))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self, endpoint_id: str, lane: _Lane) -> None:
        refill_at = self._config.endpoint_concurrency * LANE_DEPTH // 2
        try:
            while not lane.queue.empty():
                delivery = lane.queue.get_nowait()
                lane.in_flight += 1
                try:
                    await self.attempt(delivery)
                finally:
                    lane.in_flight -= 1
                    # Half the lane is free: claim again, since rows may have waited while it
                    # was full. Once per crossing, not after every POST: a claim per POST was
                    # a database round trip per event, most of them finding nothing.
                    if lane.queue.qsize() + lane.in_flight == refill_at:
                        self._wake.set()
        finally:
            lane.workers -= 1
            if lane.workers == 0 and lane.queue.empty():
                self._lanes.pop(endpoint_id, None)

    async def attempt(self, delivery: store.DueDelivery) -> store.AttemptRecord:
        """POST one delivery once and record the attempt with the delivery's next state."""
        attempted_at = self._clock()
        headers = signed_headers(
            delivery.secret, delivery.webhook_id, attempted_at, delivery.payload
        )
        started = time.perf_counter()
        status_code: int | None = None
        error = response = ""
        try:
            answer = await self._client.post(
                delivery.url, headers, delivery.payload, self._config.timeout.total_seconds()
            )
            status_code, response = answer.status_code, snippet(answer.body)
            if not is_success(answer.status_code):
                error = f"HTTP {answer.status_code}"
                FAILURES.labels("status").inc()
        except RefusedAddress as exc:
            error = f"refused: {exc}"
            FAILURES.labels("refused").inc()
        except TimeoutError as exc:
            error = describe(exc)
            FAILURES.labels("timeout").inc()
        except Exception as exc:  # aiohttp.ClientError, OSError: no answer
            error = describe(exc)
            FAILURES.labels("connection").inc()
        latency_ms = int((time.perf_counter() - started) * 1000)
        succeeded = status_code is not None and is_success(status_code)
        step = after_attempt(
            succeeded=succeeded,
            policy=self._policy,
            created_at=delivery.created_at,
            attempts_before=delivery.attempts,
            now=self._clock(),
            jitter=random.uniform(JITTER_MIN, JITTER_MAX),
        )
        record = store.AttemptRecord(
            delivery_id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            attempted_at=attempted_at,
            status_code=status_code,
            error=error,
            latency_ms=latency_ms,
            response=response,
            status=step.status,
            next_attempt_at=step.next_attempt_at,
            created_at=delivery.created_at,
        )
        await self._results.submit(record)
        if succeeded:
            ATTEMPTS.labels("delivered").inc()
            LAG.observe(max(0.0, (self._clock() - delivery.event_at).total_seconds()))
        elif step.status == PENDING:
            ATTEMPTS.labels("retry").inc()
        else:
            ATTEMPTS.labels("given_up").inc()
            log.warning(
                "webhook given up",
                extra={
                    "kv": {
                        "endpoint": delivery.endpoint_id,
                        "webhook_id": delivery.webhook_id,
                        "attempts": delivery.attempts + 1,
                        "error": error,
                    }
                },
            )
        return record

    async def _record(self, records: list[store.AttemptRecord]) -> list[BaseException | None]:
        await store.record_attempts(self._db, records)
        return [None] * len(records)

    async def _schedule_loop(self, life: Life) -> None:
        failures = 0
        while not life.stopping.is_set():
            self._wake.clear()
            try:
                claimed = await self.claim()
                failures = 0
            except Exception as exc:
                failures += 1
                claimed = 0
                log.warning("webhook claim failed: %s", exc)
            if claimed >= CLAIM_BATCH and not self._busy():
                continue
            idle = self._config.idle_interval.total_seconds() * (2 ** min(failures, 5))
            stop = asyncio.ensure_future(life.stopping.wait())
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({stop, wake}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                wake.cancel()
            if wake.done() and not stop.done():
                # Woken by new rows: let the inserts of the next few milliseconds land too, so
                # one claim takes a batch rather than each claim a handful of rows.
                await asyncio.sleep(WRITE_LINGER)

    async def _drain(self) -> None:
        """On stop: let POSTs in flight finish (bounded), give back rows not yet started."""
        waiting: list[int] = []
        for lane in self._lanes.values():
            while not lane.queue.empty():
                waiting.append(lane.queue.get_nowait().id)
        if self._workers:
            await asyncio.wait(set(self._workers), timeout=self._config.timeout.total_seconds() + 1)
        for task in list(self._workers):
            task.cancel()
        if waiting:
            with contextlib.suppress(Exception):
                await store.release_claims(self._db, waiting)

    async def cleanup(self) -> int:
        deleted = await store.delete_finished_before(
            self._db, self._clock() - self._config.retention
        )
        if deleted:
            log.info("webhook retention cleanup", extra={"kv": {"deliveries": deleted}})
        return deleted
