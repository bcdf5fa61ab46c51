"""The webhooks Component (ADR 0032, 0052): every outcome event, signed, to each matching
endpoint.

Two halves that meet in PostgreSQL:

* **Intake.** A durable JetStream consumer (`kannon-webhooks`, on `kannon.stats.*`) takes the
  events a fetch at a time and turns each into one `webhook_deliveries` row per enabled endpoint
  of its Domain that wants its type (one INSERT per fetch, idempotent on (endpoint, event)), then
  acks the events. An event is acked only once its rows are committed: at least once, and the
  bus is never held by a slow endpoint.
* **Sending.** A scheduler claims due rows (`FOR UPDATE SKIP LOCKED`, retaken after a timeout)
  and hands each to its endpoint's lane: at most `webhooks.endpoint_concurrency` POSTs in flight
  per endpoint, and endpoints whose lane is full are left out of the next claims. A dead endpoint
  therefore fills its own lane only; the others' rows keep flowing. Each attempt is recorded
  (status, latency, the answer's first bytes) together with the delivery's next state: delivered
  (2xx), retried after an exponential, jittered backoff while `webhooks.retry_window` lasts, or
  given up. Records are written in batches while the lane POSTs on; a row stays claimed until
  its record is written.

Endpoints are read through a cache of a few seconds: a change reaches events within
:data:`ENDPOINT_CACHE_TTL`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import Counter, Histogram

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result, outcome_consumer
from kannon.bus.subjects import WEBHOOK_EVENT_TYPES, WEBHOOKS_DURABLE
from kannon.config import Settings
from kannon.db import webhooks as store
from kannon.db.database import Database, is_outage
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
from kannon.runtime.coalescer import Coalescer
from kannon.runtime.component import Life, run_every
from kannon.webhooks.client import RefusedAddress, WebhookClient, describe
from kannon.wire.stats import UndecodableEvent, data_json, decode

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

# Bound once: `labels()` looked the child up again for every event.
_DELIVERED = ATTEMPTS.labels("delivered")
_RETRY = ATTEMPTS.labels("retry")
_GIVEN_UP = ATTEMPTS.labels("given_up")
_FAILED_STATUS = FAILURES.labels("status")
_FAILED_REFUSED = FAILURES.labels("refused")
_FAILED_TIMEOUT = FAILURES.labels("timeout")
_FAILED_CONNECTION = FAILURES.labels("connection")

CONSUMER_BATCH = 256
"""Events per fetch, written in one INSERT (ADR 0052)."""
CONSUMER_CONCURRENCY = 2
"""Batches in hand at once: the next one is decoded while the last one's INSERT is under way."""
CONSUMER_LINGER = timedelta(milliseconds=20)
"""How long a fetch waits for its batch to fill: events trickle in, and a fetch of one or two
cost a pull request, an endpoint lookup and an INSERT apiece (ADR 0058)."""
CLAIM_BATCH = 500
ENDPOINT_CACHE_TTL = 2.0
WRITE_LINGER = 0.01
CLEANUP_INTERVAL = timedelta(minutes=10)


@dataclass
class _Lane:
    """One endpoint's claimed rows and its workers."""

    queue: collections.deque[store.DueDelivery] = field(default_factory=collections.deque)
    in_flight: int = 0
    unrecorded: int = 0
    """Attempts made whose record is not written yet. Their rows are still claimed: past a
    lane's worth of them the lane counts as full, so that claims stay bounded while the
    database is slow; below that they do not hold the lane's POSTs back (ADR 0052)."""
    workers: int = 0

    def load(self) -> int:
        """Claimed rows not yet POSTed or being POSTed."""
        return len(self.queue) + self.in_flight

    def idle(self) -> bool:
        return self.workers == 0 and self.unrecorded == 0 and not self.queue


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
        self._results: Coalescer[store.AttemptRecord, None] = Coalescer(
            self._record, max_items=256, linger=WRITE_LINGER
        )
        self._lanes: dict[str, _Lane] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._writes: set[asyncio.Future[None]] = set()
        """Attempt records handed to `_results` and not written yet."""
        self._wake = asyncio.Event()
        self._new_rows = False
        self._claim_timeout = claim_timeout(self._config.timeout)

    @property
    def consumer(self) -> ConsumerSpec:
        spec = outcome_consumer(
            WEBHOOKS_DURABLE,
            self._settings.nats,
            CONSUMER_CONCURRENCY,
            is_outage,
            batch=CONSUMER_BATCH,
        )
        return dataclasses.replace(spec, linger=CONSUMER_LINGER)

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
                await self._bus.consume_batches(
                    self.consumer, self.handle_batch, life.stopping, on_ready=life.ready
                )
        finally:
            await self._drain()
            await self._client.close()

    # --- intake ------------------------------------------------------------------------------

    async def _endpoints_of(self, domains: Collection[str]) -> dict[str, list[Endpoint]]:
        """The enabled endpoints of each of `domains`: cached ones, and one query for the rest."""
        now = time.monotonic()
        found: dict[str, list[Endpoint]] = {}
        missing: list[str] = []
        for domain in domains:
            cached = self._endpoints.get(domain)
            if cached is not None and cached[0] > now:
                found[domain] = cached[1]
            else:
                missing.append(domain)
        if missing:
            fresh: dict[str, list[Endpoint]] = {domain: [] for domain in missing}
            for endpoint in await store.enabled_endpoints(self._db, missing):
                fresh[endpoint.domain].append(endpoint)
            for domain, endpoints in fresh.items():
                self._endpoints[domain] = (now + ENDPOINT_CACHE_TTL, endpoints)
            found.update(fresh)
        return found

    async def handle(self, msg: BusMessage) -> Result:
        """One event alone (see :meth:`handle_batch`)."""
        return (await self.handle_batch([msg]))[0]

    async def handle_batch(self, msgs: Sequence[BusMessage]) -> list[Result]:
        """The delivery rows of a fetch of events, in one INSERT; every event is acked once it
        is committed (ADR 0052). A failed INSERT raises: the whole fetch comes back."""
        outcomes = []
        for msg in msgs:
            try:
                outcome = decode(msg.data, msg.msg_id)
            except UndecodableEvent as exc:
                # Not ours to judge: Stats dead-letters it; webhooks just do not send it.
                log.warning("undecodable outcome event skipped", extra={"kv": {"error": str(exc)}})
                EVENTS.labels("undecodable").inc()
                continue
            if outcome.type not in WEBHOOK_EVENT_TYPES:
                EVENTS.labels("skipped").inc()
                continue
            outcomes.append((outcome, outcome.domain or domain_of_batch(outcome.batch_id)))
        endpoints = await self._endpoints_of({domain for _, domain in outcomes})
        rows: list[store.NewDelivery] = []
        queued = 0
        for outcome, domain in outcomes:
            wanted = [e for e in endpoints[domain] if e.wants(outcome.type)]
            if not wanted:
                EVENTS.labels("no_endpoint").inc()
                continue
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
            rows.extend(
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
            )
            queued += 1
        if rows:
            await store.insert_deliveries(self._db, rows, self._clock())
            EVENTS.labels("queued").inc(queued)
            self._new_rows = True
            self._wake.set()
        return [Result.ack()] * len(msgs)

    # --- sending -----------------------------------------------------------------------------

    def _busy(self) -> list[str]:
        limit = self._config.endpoint_concurrency * LANE_DEPTH
        return [
            endpoint_id
            for endpoint_id, lane in self._lanes.items()
            if lane.load() >= limit or lane.unrecorded >= limit
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
        lane.queue.append(delivery)
        if lane.workers < self._config.endpoint_concurrency:
            lane.workers += 1
            task = asyncio.create_task(self._work(delivery.endpoint_id, lane))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self, endpoint_id: str, lane: _Lane) -> None:
        refill_at = self._config.endpoint_concurrency * LANE_DEPTH // 2
        try:
            while lane.queue:
                delivery = lane.queue.popleft()
                lane.in_flight += 1
                try:
                    record = await self.attempt(delivery)
                finally:
                    lane.in_flight -= 1
                    # Half the lane is free: claim again, since rows may have waited while it
                    # was full. Once per crossing, not after every POST: a claim per POST was
                    # a database round trip per event, most of them finding nothing.
                    if lane.load() == refill_at:
                        self._wake.set()
                # Recorded by the batch writer while this worker POSTs the next row: waiting
                # for the write held each POST for a batch's linger and round trip (ADR 0052).
                # The row stays claimed until then (see `_Lane.unrecorded`).
                lane.unrecorded += 1
                written = self._results.put(record)
                self._writes.add(written)
                written.add_done_callback(functools.partial(self._recorded, endpoint_id, lane))
        finally:
            lane.workers -= 1
            if lane.idle() and self._lanes.get(endpoint_id) is lane:
                del self._lanes[endpoint_id]

    def _recorded(self, endpoint_id: str, lane: _Lane, done: asyncio.Future[None]) -> None:
        self._writes.discard(done)
        lane.unrecorded -= 1
        if not done.cancelled() and (exc := done.exception()) is not None:
            # The row stays claimed; it is taken again after the claim timeout (at least once).
            log.warning("webhook attempt not recorded: %s", exc)
        # The records caught up below a full lane's worth: the lane may be claimed for again.
        if lane.unrecorded == self._config.endpoint_concurrency * LANE_DEPTH - 1:
            self._wake.set()
        if lane.idle() and self._lanes.get(endpoint_id) is lane:
            del self._lanes[endpoint_id]

    async def attempt(self, delivery: store.DueDelivery) -> store.AttemptRecord:
        """POST one delivery once: the attempt's record, with the delivery's next state (the
        caller has it written)."""
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
                _FAILED_STATUS.inc()
        except RefusedAddress as exc:
            error = f"refused: {exc}"
            _FAILED_REFUSED.inc()
        except TimeoutError as exc:
            error = describe(exc)
            _FAILED_TIMEOUT.inc()
        except Exception as exc:  # OSError (BadAnswer included): no answer
            error = describe(exc)
            _FAILED_CONNECTION.inc()
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
        if succeeded:
            _DELIVERED.inc()
            LAG.observe(max(0.0, (self._clock() - delivery.event_at).total_seconds()))
        elif step.status == PENDING:
            _RETRY.inc()
        else:
            _GIVEN_UP.inc()
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
            if wake.done() and not stop.done() and self._new_rows and not self._hungry():
                # Woken by new rows: let the inserts of the next few milliseconds land too, so
                # one claim takes a batch rather than each claim a handful of rows. A lane that
                # is half empty is refilled at once instead (its POSTs would stall meanwhile).
                await asyncio.sleep(WRITE_LINGER)
            self._new_rows = False

    def _hungry(self) -> bool:
        refill_at = self._config.endpoint_concurrency * LANE_DEPTH // 2
        return any(lane.load() <= refill_at for lane in self._lanes.values())

    async def _drain(self) -> None:
        """On stop: let POSTs in flight finish (bounded), give back rows not yet started."""
        waiting: list[int] = []
        for lane in self._lanes.values():
            waiting.extend(delivery.id for delivery in lane.queue)
            lane.queue.clear()
        if self._workers:
            await asyncio.wait(set(self._workers), timeout=self._config.timeout.total_seconds() + 1)
        for task in list(self._workers):
            task.cancel()
        if self._writes:
            # The attempts made are recorded before the process goes (their rows would
            # otherwise be POSTed again after the claim timeout).
            await asyncio.wait(set(self._writes), timeout=self._config.timeout.total_seconds())
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
