"""The Dispatcher Component: claims due Deliveries, builds and signs their Envelopes, publishes
them on their IP pool's subject (`kannon.sending` for the default pool, ADR 0039), and consumes
the SMTPSender's outcomes to keep the Pool in step.

Loops (all in `run`, which calls `life.ready()` once every one of them runs):

* dispatch (`cycle()`, looped by `run_cycles`): claim up to `dispatcher.batch_size` due
  Deliveries (scheduled → sending), load the sending data of their Batches once (one query), build
  each Envelope (the pure `envelope` package, through a `builder.Builder`: in worker processes
  when `dispatcher.build_workers` > 0, else in this thread with yields to the loop) and publish it
  with PubAck and `Nats-Msg-Id = <email id>.<attempt>`, concurrently in chunks; the next chunk is
  built while the current one is published. Once the stream has stored an Envelope (PubAck) its
  row moves to `queued`, with the stream sequence: from then on only an outcome moves it. A
  publish that fails is retried for a moment (same `Nats-Msg-Id`), then handed back to the Pool
  under the same attempt, due a little later; a build that fails is rescheduled with backoff
  like a temporary delivery failure. Nothing is left claimed (spec §4.4 QUIRK, fixed as at
  HEAD §8);
* `dispatcher-delivered` / `dispatcher-bounced`: the Delivery ended, delete its row (the rows of
  concurrently handled events go in one DELETE, `kannon.db.batching`);
* `dispatcher-error`: reschedule with backoff and jitter, recording the reply when a server
  answered (code ≥ 200) — only when the error answers the attempt in flight (its event id names
  the attempt);
* Reclaim (ADR 0025): at start every dispatch claim goes back to scheduled at once (a Dispatcher
  that died left them), then, on a timer, claims older than `dispatcher.claim_timeout`. A claim
  keeps its attempt number, so an Envelope that was published after all is published again
  under the same `Nats-Msg-Id` and the stream drops the copy. `queued` rows are left alone while
  their Envelope can still be sent; one whose Envelope the SMTPSender has acknowledged (or the
  stream no longer holds) with no outcome pending anywhere lost its outcome, and is retried.

When the retry budget (`model.retry.RetryPolicy`) has no room for another attempt the Delivery
ends here: Bounced(permanent=False) with the last reply if a remote server ever answered, else
Failed with the reason. The terminal event is published (PubAck) BEFORE the row is deleted, under
a deterministic event id: a crash in between leaves the row, the redo publishes the same id, which
the stream drops as a duplicate and Stats counts once; the other order could lose the event.

The three consumers are idempotent: an event whose Delivery is gone (or, for errors, no longer
in flight, i.e. an earlier copy already rescheduled it) is acked and changes nothing. A database
outage makes them retry with growing delays for as long as it lasts (ADR 0026).

The clock and the jitter source are constructor parameters (so are the retry policy and the
boundary randomness), so tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter

from kannon.bus.client import (
    Bus,
    BusMessage,
    ConsumerSpec,
    Result,
    is_bus_unavailable,
    is_too_large,
)
from kannon.bus.subjects import (
    BOUNCED,
    DELIVERED,
    DISPATCHER_BOUNCED_DURABLE,
    DISPATCHER_DELIVERED_DURABLE,
    DISPATCHER_ERROR_DURABLE,
    ERROR,
    SENDING_STREAM,
    STATS_STREAM,
    sender_durable,
    sending_subject,
    stats_subject,
)
from kannon.config import ConfigError, Settings, require
from kannon.db import deliveries
from kannon.db.batching import Coalescer
from kannon.db.pool import is_outage
from kannon.db.sending_data import SendingData, load_sending_data
from kannon.db.tracking_keys import signing_key
from kannon.db.wakeups import SCHEDULED_CHANNEL, Listener
from kannon.dispatcher.builder import (
    BatchJob,
    Builder,
    Built,
    InlineBuilder,
    Item,
    ProcessBuilder,
)
from kannon.envelope.bounce import make_bounce_address
from kannon.envelope.dkim import DkimSigner
from kannon.envelope.tokens import TrackingKey
from kannon.model.delivery import IN_FLIGHT_STATUSES, PoolDelivery
from kannon.model.event_ids import attempt_of_send_outcome, delivery_event_id, envelope_msg_id
from kannon.model.outcome import Bounced, Errored, Failed, Outcome
from kannon.model.retry import JITTER_MAX, JITTER_MIN, RetryPolicy
from kannon.model.tracking import PSEUDONYM_HEX, TrackingMode
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life, run_cycles, run_every
from kannon.runtime.logs import obfuscate
from kannon.wire.stats import UndecodableEvent, decode, publish_outcome

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("kannon.dispatcher")

DISPATCHED = Counter(
    "kannon_dispatcher_envelopes_total",
    "Claimed Deliveries by what dispatching them came to",
    ["result"],  # published, build_failed, publish_failed
)
PUBLISH_RETRIES = Counter(
    "kannon_dispatcher_publish_retries_total",
    "Envelope publishes tried again after the bus did not answer",
)
RESCHEDULED = Counter(
    "kannon_dispatcher_rescheduled_total", "Deliveries rescheduled for another attempt", ["cause"]
)
ENDED = Counter(
    "kannon_dispatcher_ended_total",
    "Deliveries the Dispatcher ended because the retry budget was spent",
    ["type"],
)
RECLAIMED = Counter(
    "kannon_dispatcher_reclaimed_total", "Abandoned dispatch claims returned to the Pool"
)
LOST_IN_QUEUE = Counter(
    "kannon_dispatcher_lost_in_queue_total",
    "Queued Deliveries whose Envelope left the stream without an outcome, retried",
)
STALE_ERRORS = Counter(
    "kannon_dispatcher_stale_errors_total",
    "Errored events about an earlier attempt than the one in flight, ignored",
)

# Envelopes published at once: enough to hide the PubAck round trip, few enough that one
# cycle does not hold thousands of built messages in memory.
PUBLISH_CHUNK = 100
# Outcome handlers in flight per consumer: each is one or two short queries.
CONSUMER_CONCURRENCY = 8
# Delivered/Bounced handlers in flight: they wait for a shared, batched DELETE (one statement
# for all of them instead of one per event), so many can; this bounds the batch.
FINISHED_CONCURRENCY = 256
# How long a lone ending waits for others to share its DELETE: they trickle in as SMTP
# transactions finish, and a row deleted 20 ms later changes nothing for anyone.
FINISHED_LINGER = 0.02
RECLAIM_PAGE = 1000
BOUNDARY_SEED_BYTES = 12
# A publish the bus did not answer is tried again this many times, the delay doubling from the
# first: a NATS restart or leader change takes a second or two, not a retry backoff.
PUBLISH_TRIES = 4
PUBLISH_RETRY_DELAY = 0.25
# After that the claim goes back to the Pool, same attempt, due again this much later.
PUBLISH_RETRY_LATER = timedelta(seconds=10)

WHILE_DISPATCHING = "dispatching"
WHILE_PUBLISHING = "publishing"
WHILE_SENDING = "sending"
WHILE_QUEUED = "queued"


def draw_jitter() -> float:
    """A backoff jitter factor. Randomness is read here, at the edge: the policy stays pure."""
    return random.uniform(JITTER_MIN, JITTER_MAX)  # spreads retries; not a secret


def new_boundary_seed() -> bytes:
    return secrets.token_bytes(BOUNDARY_SEED_BYTES)


def new_pseudonym() -> str:
    """A pseudonymous tracking identity: random, never stored (ADR 0033)."""
    return secrets.token_hex(PSEUDONYM_HEX // 2)


def retry_policy(settings: Settings) -> RetryPolicy:
    d = settings.dispatcher
    return RetryPolicy(
        window=d.retry_window, base=d.backoff_base, min=d.backoff_min, max=d.backoff_max
    )


def budget_spent(
    delivery: PoolDelivery,
    now: datetime,
    *,
    where: str,
    error: str,
    reply: tuple[int, str] | None = None,
) -> Outcome:
    """The terminal outcome of a Delivery whose retry budget is spent.

    `reply` is what a remote server answered this time, if anything; otherwise the last answer
    recorded on the row counts. Any answer → Bounced(permanent=False) with it (a server kept
    refusing it); none ever → Failed, saying where and what went wrong last.
    """
    code, message = reply if reply is not None else (delivery.last_reply_code, None)
    detail: Bounced | Failed
    if code is not None:
        if message is None:
            message = delivery.last_reply_msg or ""
        detail = Bounced(permanent=False, code=code, message=message)
    else:
        detail = Failed(f"retry budget exhausted while {where}: {error}")
    return Outcome(
        batch_id=delivery.message_id,
        domain=delivery.domain,
        recipient=delivery.email,
        timestamp=now,
        detail=detail,
        event_id=delivery_event_id(detail.type, delivery.message_id, delivery.email),
    )


def _too_large(delivery: PoolDelivery, now: datetime, exc: BaseException) -> Outcome:
    detail = Failed(f"the Envelope is larger than the bus accepts (nats max_payload): {exc}")
    return Outcome(
        batch_id=delivery.message_id,
        domain=delivery.domain,
        recipient=delivery.email,
        timestamp=now,
        detail=detail,
        event_id=delivery_event_id(detail.type, delivery.message_id, delivery.email),
    )


class BuildError(Exception):
    """An Envelope cannot be built from what is stored (template or Domain gone, bad data)."""


@dataclass
class _BatchParts:
    """What one cycle derives once per Batch, shared by all its Deliveries."""

    job: BatchJob
    signers: list[DkimSigner]
    ip_pool: str


@dataclass
class _Chunk:
    """A chunk after building: what to publish, and what failed to build (with why)."""

    built: list[tuple[PoolDelivery, Built]] = field(default_factory=list)
    failed: list[tuple[PoolDelivery, str]] = field(default_factory=list)
    pools: dict[str, str] = field(default_factory=dict)
    """The IP pool of each Batch in `built`."""


class Dispatcher:
    name = "dispatcher"

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        clock: Callable[[], datetime] = utc_now,
        jitter: Callable[[], float] = draw_jitter,
        policy: RetryPolicy | None = None,
        boundary_seed: Callable[[], bytes] = new_boundary_seed,
    ) -> None:
        secret = str(require(settings, "secret_key", needed_by="dispatcher")).encode("utf-8")
        try:
            make_bounce_address("msg_check@example.com", "check@example.com", secret)
        except ValueError as exc:
            raise ConfigError(f"secret_key: {exc}", key="secret_key") from None
        self._settings = settings.dispatcher
        self._nats = settings.nats
        self._pools = settings.known_pools()
        self._tracker_base = settings.tracker.base_url
        self._token_ttl = settings.tracker.token_ttl
        self._secret = secret
        self._pool = pool
        self._bus = bus
        self._clock = clock
        self._jitter = jitter
        self._policy = policy if policy is not None else retry_policy(settings)
        self._boundary_seed = boundary_seed
        # Parsing a key costs more than signing with it: the signers of each Domain, replaced
        # when the keys it signs with change (a rotation step).
        self._signers: dict[str, tuple[tuple[tuple[str, str], ...], list[DkimSigner]]] = {}
        # Replaced by a ProcessBuilder while `build_processes()` is entered (as `run` does).
        self._builder: Builder = InlineBuilder()
        self._finished: Coalescer[tuple[str, str], bool] = Coalescer(
            self._delete_finished, max_items=FINISHED_CONCURRENCY, linger=FINISHED_LINGER
        )

    @property
    def reclaim_interval(self) -> timedelta:
        # Half the timeout: a stale claim is retaken within 1.5 × claim_timeout.
        return self._settings.claim_timeout / 2

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, life: Life) -> None:
        consumers: list[tuple[ConsumerSpec, Callable[[BusMessage], Awaitable[Result]]]] = [
            (
                self.consumer(DISPATCHER_DELIVERED_DURABLE, DELIVERED, FINISHED_CONCURRENCY),
                self.handle_finished,
            ),
            (
                self.consumer(DISPATCHER_BOUNCED_DURABLE, BOUNCED, FINISHED_CONCURRENCY),
                self.handle_finished,
            ),
            (self.consumer(DISPATCHER_ERROR_DURABLE, ERROR), self.handle_error),
        ]
        ready = [asyncio.Event() for _ in consumers]
        async with self.build_processes(), asyncio.TaskGroup() as tasks:
            for (spec, handler), event in zip(consumers, ready, strict=True):
                tasks.create_task(
                    self._bus.consume(spec, handler, life.stopping, on_ready=event.set)
                )
            # Before our own first claim: every claim there is now a dead Dispatcher's.
            await self._reclaim_at_start()
            tasks.create_task(self._reclaim_loop(life))
            # A consumer that cannot be created fails the TaskGroup, which cancels this wait.
            await asyncio.gather(*(event.wait() for event in ready))
            life.ready()
            # run_cycles returns between cycles once stopping is set; the consumers return
            # after their in-flight handlers finished: that is the drain.
            async with Listener(self._pool, SCHEDULED_CHANNEL) as wake:
                await run_cycles(
                    life, self.cycle, self._settings.idle_interval, on_error=_log_error, wake=wake
                )

    @contextlib.asynccontextmanager
    async def build_processes(self) -> AsyncIterator[None]:
        """Build in `dispatcher.build_workers` worker processes while inside; the workers are
        stopped on the way out. With 0 workers, builds stay in this process."""
        workers = self._settings.build_workers
        if workers == 0:
            yield
            return
        previous = self._builder
        async with ProcessBuilder(workers) as builder:
            self._builder = builder
            try:
                yield
            finally:
                self._builder = previous

    def consumer(
        self, durable: str, stat_type: str, concurrency: int = CONSUMER_CONCURRENCY
    ) -> ConsumerSpec:
        return ConsumerSpec(
            durable=durable,
            stream=STATS_STREAM,
            subject=stats_subject(stat_type),
            ack_wait=self._nats.ack_wait,
            max_deliver=self._nats.max_deliver,
            concurrency=concurrency,
            batch=max(concurrency, ConsumerSpec.batch),
            transient=is_outage,
        )

    # -- dispatch ----------------------------------------------------------------------------

    async def cycle(self) -> int:
        """Dispatch one batch of due Deliveries; returns how many it claimed (0 = none due).

        Every claimed Delivery leaves the cycle published, rescheduled or ended. Should the
        database or bus fail before any Envelope is built, the claims are released as they
        were; an error later on is raised after the rest of the batch was handled.
        """
        now = self._clock()
        claimed = await deliveries.claim_for_dispatch(self._pool, self._settings.batch_size, now)
        if not claimed:
            return 0
        try:
            data = await load_sending_data(self._pool, [d.message_id for d in claimed], now)
            key = await signing_key(self._pool, now, self._token_ttl)
        except BaseException:
            try:
                await deliveries.release_dispatch(self._pool, [d.id for d in claimed])
            except Exception:
                log.exception("could not release dispatch claims; Reclaim will retake them")
            raise
        batches = self._prepare_batches(data, key, now)
        chunks = [
            claimed[start : start + PUBLISH_CHUNK]
            for start in range(0, len(claimed), PUBLISH_CHUNK)
        ]
        failure: BaseException | None = None
        building: asyncio.Task[_Chunk] | None = asyncio.create_task(
            self._build_chunk(chunks[0], batches, now)
        )
        try:
            for index in range(len(chunks)):
                assert building is not None
                current, building = building, None
                try:
                    chunk = await current
                except Exception as exc:  # the other chunks still get their turn
                    failure = failure or exc
                    chunk = None
                if index + 1 < len(chunks):
                    # Built (by a worker, or between the publishes' awaits) while this one is
                    # published.
                    building = asyncio.create_task(
                        self._build_chunk(chunks[index + 1], batches, now)
                    )
                if chunk is None:
                    continue
                try:
                    await self._publish_chunk(chunk, now)
                except Exception as exc:
                    failure = failure or exc
        finally:
            if building is not None:
                # Cancelled mid-cycle: let it through; Reclaim retakes the claims.
                building.cancel()
                with contextlib.suppress(BaseException):
                    await building
        if failure is not None:
            raise failure
        return len(claimed)

    def _prepare_batches(
        self, data: dict[str, SendingData], key: TrackingKey, now: datetime
    ) -> dict[str, _BatchParts | str]:
        """Per Batch: its parts, or why none of its Envelopes can be built."""
        parts: dict[str, _BatchParts | str] = {}
        for batch_id, batch in data.items():
            try:
                parts[batch_id] = self._batch_parts(batch, key, now)
            except BuildError as exc:
                parts[batch_id] = str(exc)
                log.warning(
                    "cannot build the Envelopes of a Batch",
                    extra={"kv": {"batch": batch_id, "reason": str(exc)}},
                )
        return parts

    def _batch_parts(self, batch: SendingData, key: TrackingKey, now: datetime) -> _BatchParts:
        if batch.html is None:
            raise BuildError(f"template {batch.template_id} no longer exists")
        if not batch.domain_exists:
            raise BuildError(f"domain {batch.domain} no longer exists")
        if not batch.dkim_keys:
            raise BuildError(f"domain {batch.domain} has no DKIM key to sign with")
        try:
            attachments = batch.attachment_bytes()
        except ValueError as exc:
            raise BuildError(str(exc)) from None
        # Parsed here even when workers build: a bad key fails the Batch once, up front.
        signers = self._domain_signers(batch)
        job = BatchJob(
            domain=batch.domain,
            dkim_keys=batch.dkim_keys,
            sender_email=batch.sender_email,
            sender_alias=batch.sender_alias,
            subject=batch.subject,
            html=batch.html,
            attachments=tuple(attachments),
            headers_to=batch.headers_to,
            headers_cc=batch.headers_cc,
            tracker_base_url=self._tracker_base,
            tracking_key=key,
            token_expires_at=now + self._token_ttl,
            bounce_secret=self._secret,
            now=now,
            unsubscribe_url_template=batch.one_click_url_template,
            builtin_unsubscribe=batch.builtin_unsubscribe,
        )
        return _BatchParts(job, signers, batch.ip_pool)

    def _domain_signers(self, batch: SendingData) -> list[DkimSigner]:
        fingerprint = batch.dkim_keys
        cached = self._signers.get(batch.domain)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            signers = [DkimSigner(batch.domain, sel, key) for sel, key in batch.dkim_keys]
        except ValueError as exc:
            raise BuildError(f"DKIM key of domain {batch.domain}: {exc}") from None
        self._signers[batch.domain] = (fingerprint, signers)
        return signers

    def _item(self, delivery: PoolDelivery, job: BatchJob, now: datetime) -> Item:
        return Item(
            batch_id=delivery.message_id,
            recipient=delivery.email,
            fields=delivery.fields,
            # False on the last attempt the budget allows: a 4xx then ends as Bounced at once.
            should_retry=self._policy.should_retry(
                delivery.original_scheduled_time, delivery.send_attempts_cnt, now
            ),
            boundary_seed=self._boundary_seed() if job.attachments else b"",
            tracking=delivery.tracking,
            # Drawn for each Envelope and stored nowhere (ADR 0033).
            pseudonym=new_pseudonym() if delivery.tracking.uses(TrackingMode.PSEUDONYMOUS) else "",
        )

    async def _build_chunk(
        self, chunk: Sequence[PoolDelivery], batches: dict[str, _BatchParts | str], now: datetime
    ) -> _Chunk:
        """Build the Envelopes of a chunk, one builder call per Batch in it."""
        result = _Chunk()
        groups: dict[str, tuple[_BatchParts, list[PoolDelivery]]] = {}
        for delivery in chunk:
            parts = batches.get(delivery.message_id, "the Batch no longer exists")
            if isinstance(parts, str):
                result.failed.append((delivery, parts))
            else:
                groups.setdefault(delivery.message_id, (parts, []))[1].append(delivery)
                result.pools[delivery.message_id] = parts.ip_pool
        outputs = await asyncio.gather(
            *(self._build_group(parts, group, now) for parts, group in groups.values()),
            return_exceptions=True,
        )
        for (_, group), output in zip(groups.values(), outputs, strict=True):
            if isinstance(output, BaseException):
                raise output
            for delivery, built in zip(group, output, strict=True):
                if isinstance(built, Built):
                    result.built.append((delivery, built))
                    continue
                result.failed.append((delivery, built))
                log.warning(
                    "cannot build an Envelope",
                    extra={
                        "kv": {
                            "batch": delivery.message_id,
                            "recipient": obfuscate(delivery.email),
                            "reason": built,
                        }
                    },
                )
        return result

    async def _build_group(
        self, parts: _BatchParts, group: Sequence[PoolDelivery], now: datetime
    ) -> list[Built | str]:
        items = [self._item(delivery, parts.job, now) for delivery in group]
        results = await self._builder.build(parts.job, items, parts.signers)
        if len(results) != len(items):
            raise RuntimeError(f"builder returned {len(results)} results for {len(items)} items")
        return results

    async def _publish_chunk(self, chunk: _Chunk, now: datetime) -> None:
        built, failed = chunk.built, chunk.failed
        DISPATCHED.labels("build_failed").inc(len(failed))
        results = await asyncio.gather(
            *(
                self._publish(delivery, env, chunk.pools[delivery.message_id])
                for delivery, env in built
            ),
            return_exceptions=True,
        )
        queued: dict[str, list[tuple[int, int, int]]] = {}
        unpublished: list[tuple[PoolDelivery, Exception]] = []
        for (delivery, _), result in zip(built, results, strict=True):
            if isinstance(result, Exception):
                unpublished.append((delivery, result))
            elif isinstance(result, BaseException):
                raise result  # cancelled: let it through, Reclaim retakes the claim
            else:
                queued.setdefault(chunk.pools[delivery.message_id], []).append(
                    (delivery.id, delivery.send_attempts_cnt, result)
                )
        DISPATCHED.labels("published").inc(sum(len(rows) for rows in queued.values()))
        DISPATCHED.labels("publish_failed").inc(len(unpublished))
        # Should this fail (database gone), the rows stay claimed: Reclaim hands them out again
        # under the same attempt, and the stream drops the second copy of each Envelope.
        for ip_pool, rows in queued.items():
            await deliveries.mark_queued(self._pool, rows, self._clock(), ip_pool)
        if unpublished:
            await self._publish_failed(unpublished, now)
        if failed:
            outcomes = await asyncio.gather(
                *(
                    self.retry_or_end(delivery, now, where=WHILE_DISPATCHING, error=reason)
                    for delivery, reason in failed
                ),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def _publish(self, delivery: PoolDelivery, env: Built, ip_pool: str) -> int:
        """Publish an Envelope on its IP pool's subject; its stream sequence. A bus that does
        not answer gets a few more tries, under the same `Nats-Msg-Id`: a publish that was stored
        after all is not stored twice."""
        msg_id = envelope_msg_id(env.email_id, delivery.send_attempts_cnt)
        delay = PUBLISH_RETRY_DELAY
        for tries_left in range(PUBLISH_TRIES - 1, -1, -1):
            try:
                return await self._bus.publish(sending_subject(ip_pool), env.payload, msg_id)
            except Exception as exc:
                if not tries_left or not is_bus_unavailable(exc):
                    raise
                PUBLISH_RETRIES.inc()
                log.warning(
                    "publishing an Envelope failed; trying again",
                    extra={"kv": {"error": repr(exc), "retry_in": delay}},
                )
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _publish_failed(
        self, unpublished: Sequence[tuple[PoolDelivery, Exception]], now: datetime
    ) -> None:
        """Envelopes the bus would not take: back to the Pool under the same attempt (nothing
        was sent), due a little later; a Delivery whose retry budget is spent ends Failed."""
        log.warning(
            "could not publish Envelopes; they go back to the Pool",
            extra={
                "kv": {
                    "count": len(unpublished),
                    "retry_in": PUBLISH_RETRY_LATER.total_seconds(),
                    "error": repr(unpublished[0][1]),
                }
            },
        )
        release: list[int] = []
        for delivery, exc in unpublished:
            if is_too_large(exc):
                # Intake refuses such Batches (ADR 0021); the bus's limit was lowered since.
                # No later attempt can succeed: the Delivery ends now instead of in 24 h.
                await self._end(_too_large(delivery, now, exc), delivery)
                continue
            if now < self._policy.deadline(delivery.original_scheduled_time):
                release.append(delivery.id)
                continue
            error = f"publish failed: {exc!r}"
            await self._end(
                budget_spent(delivery, now, where=WHILE_PUBLISHING, error=error), delivery
            )
        if release:
            RESCHEDULED.labels(WHILE_PUBLISHING).inc(len(release))
            await deliveries.release_dispatch(self._pool, release, now + PUBLISH_RETRY_LATER)

    # -- retries and endings -----------------------------------------------------------------

    async def retry_or_end(
        self,
        delivery: PoolDelivery,
        now: datetime,
        *,
        where: str,
        error: str,
        reply: tuple[int, str] | None = None,
    ) -> bool:
        """Reschedule a Delivery whose attempt failed, or end it when the budget is spent.

        `reply` is the (code, message) a remote server answered, recorded on the row; None when
        none answered. Returns True when rescheduled.
        """
        at = self._policy.next_attempt(
            delivery.original_scheduled_time, delivery.send_attempts_cnt, now, self._jitter()
        )
        if at is not None:
            code, message = reply if reply is not None else (None, None)
            if await deliveries.reschedule(
                self._pool, delivery.id, at, code, message, attempt=delivery.send_attempts_cnt
            ):
                RESCHEDULED.labels(where).inc()
            return True
        await self._end(
            budget_spent(delivery, now, where=where, error=error, reply=reply), delivery
        )
        return False

    async def _end(self, outcome: Outcome, delivery: PoolDelivery) -> None:
        # Event first, row second: see the module docstring.
        await publish_outcome(self._bus, outcome)
        await deliveries.delete(self._pool, [delivery.id])
        ENDED.labels(outcome.type).inc()
        detail = outcome.detail
        why = detail.reason if isinstance(detail, Failed) else getattr(detail, "message", "")
        log.warning(
            "retry budget spent; delivery ended",
            extra={
                "kv": {
                    "batch": delivery.message_id,
                    "recipient": obfuscate(delivery.email),
                    "outcome": outcome.type,
                    "attempts": delivery.send_attempts_cnt + 1,
                    "reason": why,
                }
            },
        )

    # -- outcome consumers -------------------------------------------------------------------

    @staticmethod
    def _decode(message: BusMessage) -> Outcome | None:
        try:
            return decode(message.data, message.msg_id)
        except UndecodableEvent as exc:
            log.error(
                "undecodable outcome event dropped",
                extra={
                    "kv": {"subject": message.subject, "seq": message.stream_seq, "error": str(exc)}
                },
            )
            return None

    async def handle_finished(self, message: BusMessage) -> Result:
        """Delivered or Bounced: the Delivery ended, its row goes (already gone: nothing to do)."""
        outcome = self._decode(message)
        if outcome is None:
            return Result.term()
        # Acked once the row is gone: the batched DELETE holding it has committed.
        await self._finished.submit((outcome.batch_id, outcome.recipient))
        return Result.ack()

    async def _delete_finished(self, recipients: list[tuple[str, str]]) -> list[bool]:
        return await deliveries.delete_by_recipients(self._pool, recipients)

    async def handle_error(self, message: BusMessage) -> Result:
        """Errored: another attempt later, or the end of the Delivery when the budget is spent."""
        outcome = self._decode(message)
        if outcome is None:
            return Result.term()
        detail = outcome.detail
        if not isinstance(detail, Errored):
            log.error(
                "not an error event on the error subject; dropped",
                extra={"kv": {"subject": message.subject, "type": outcome.type}},
            )
            return Result.term()
        delivery = await deliveries.get(self._pool, outcome.batch_id, outcome.recipient)
        if delivery is None or delivery.status not in IN_FLIGHT_STATUSES:
            # Gone (ended), or an earlier copy of this event already rescheduled it.
            return Result.ack()
        attempt = attempt_of_send_outcome(message.msg_id)
        if attempt is not None and attempt != delivery.send_attempts_cnt:
            # A late copy about an attempt already rescheduled, while a newer one is in flight:
            # rescheduling now would send the newer attempt's Envelope a second time. (An id
            # that names no attempt, from an older SMTPSender, is taken as current.)
            STALE_ERRORS.inc()
            return Result.ack()
        # Code 0 means no server answered (DNS, connection): keep the last real reply instead.
        reply = (detail.code, detail.message) if detail.code >= 200 else None
        await self.retry_or_end(
            delivery,
            self._clock(),
            where=WHILE_SENDING,
            error=detail.message or f"code {detail.code}",
            reply=reply,
        )
        return Result.ack()

    # -- reclaim -----------------------------------------------------------------------------

    async def reclaim(self, *, everything: bool = False) -> int:
        """Return dispatch claims older than dispatcher.claim_timeout (`everything`: all of them,
        as at start, when any claim can only be a dead Dispatcher's or soon published anyway)
        to scheduled, under the same attempt."""
        counts = await deliveries.reclaim_all_stale(
            self._pool,
            self._clock(),
            validating_timeout=None,  # validation claims are the Validator's to reclaim
            # "Everything": older than a second from now, i.e. every claim made until now.
            sending_timeout=-timedelta(seconds=1) if everything else self._settings.claim_timeout,
            page=RECLAIM_PAGE,
        )
        total = counts.sending
        if total:
            RECLAIMED.inc(total)
            log.warning("reclaimed abandoned dispatch claims", extra={"kv": {"count": total}})
        return total

    async def requeue_lost(self) -> int:
        """Retry the queued Deliveries whose Envelope can no longer be sent and whose outcome
        can no longer come: the sender nodes of its IP pool have acknowledged the Envelope (or
        the stream dropped it) and none of this Dispatcher's outcome consumers has anything
        pending. Each pool's consumer has its own ack floor; a pool with no consumer yet (no
        sender node) has acknowledged nothing, so its Deliveries wait in the queue.

        The reads go in that order: an outcome is published before its Envelope is acknowledged,
        so once the consumers are idle after the ack floor was read, every outcome about those
        Envelopes has been applied, and a row still queued lost its outcome (dead-lettered).
        """
        now = self._clock()
        acked = {
            ip_pool: await self._bus.ack_floor(SENDING_STREAM, sender_durable(ip_pool))
            for ip_pool in self._pools
        }
        first = await self._bus.first_seq(SENDING_STREAM)
        durables = (
            DISPATCHER_DELIVERED_DURABLE,
            DISPATCHER_BOUNCED_DURABLE,
            DISPATCHER_ERROR_DURABLE,
        )
        if not await self._bus.consumers_idle(STATS_STREAM, durables):
            return 0
        lost = await deliveries.lost_in_queue(
            self._pool, now - self._settings.claim_timeout, acked, first, RECLAIM_PAGE
        )
        for delivery in lost:
            await self.retry_or_end(
                delivery,
                now,
                where=WHILE_QUEUED,
                error="its Envelope left the queue without an outcome",
            )
        if lost:
            LOST_IN_QUEUE.inc(len(lost))
            log.warning(
                "queued Deliveries lost their outcome; retrying them",
                extra={"kv": {"count": len(lost)}},
            )
        return len(lost)

    async def _reclaim_at_start(self) -> None:
        try:
            await self.reclaim(everything=True)
        except Exception as exc:  # the database may still be starting: the timer catches up
            _log_error(exc)

    async def housekeeping(self) -> None:
        await self.reclaim()
        await self.requeue_lost()

    async def _reclaim_loop(self, life: Life) -> None:
        # Once at start (a previous instance may have died mid-cycle), then on a timer.
        await run_every(life, self.reclaim_interval, self.housekeeping, _log_error)


def _log_error(exc: BaseException) -> None:
    # Retried after the idle interval: a database or bus hiccup should not stop dispatching for
    # good, and no claim is lost meanwhile (released, rescheduled, or reclaimed after timeout).
    log.error("dispatcher cycle failed", exc_info=exc)
