"""The Dispatcher's dispatch room: claim due Deliveries, build their Envelopes, publish them.

`cycle()` (looped by `run_cycles`) claims up to `dispatcher.batch_size` due Deliveries
(scheduled → sending), loads the sending data of their Batches once (one query), builds each
Envelope (the pure `envelope` package, through a `builder.Builder`: in worker processes when
`dispatcher.build_workers` > 0, else in this thread with yields to the loop) and publishes it on
its IP pool's subject (`kannon.sending` for the default pool, ADR 0039) with PubAck and
`Nats-Msg-Id = <email id>.<attempt>`, concurrently in chunks; the next chunk is built while the
current one is published. Once the stream has stored an Envelope (PubAck) its row moves to
`queued`, with the stream sequence: from then on only an outcome moves it. A publish that fails
is retried for a moment (same `Nats-Msg-Id`), then handed back to the Pool under the same
attempt, due a little later; a build that fails is rescheduled with backoff like a temporary
delivery failure (`retry.Retries`). Nothing is left claimed (ADR 0005).

The clock and the boundary randomness are constructor parameters, so tests move time instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter

from kannon.bus.client import Bus, is_bus_unavailable, is_too_large
from kannon.bus.subjects import sending_subject
from kannon.config import DispatcherSettings, TrackerSettings
from kannon.db import deliveries
from kannon.db.sending_data import SendingData, load_sending_data
from kannon.db.tracking_keys import signing_key
from kannon.dispatcher.builder import (
    BatchJob,
    Builder,
    Built,
    InlineBuilder,
    ProcessBuilder,
)
from kannon.dispatcher.retry import (
    RESCHEDULED,
    WHILE_DISPATCHING,
    WHILE_PUBLISHING,
    Retries,
    budget_spent,
)
from kannon.envelope.build import BatchSpec, RecipientPart
from kannon.envelope.dkim import DkimSigner
from kannon.envelope.tokens import TrackingKey
from kannon.model.delivery import PoolDelivery, delivery_outcome
from kannon.model.event_ids import envelope_msg_id
from kannon.model.outcome import Failed, Outcome
from kannon.model.tracking import PSEUDONYM_HEX, TrackingMode
from kannon.runtime.logs import obfuscate

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

# Envelopes published at once: enough to hide the PubAck round trip, few enough that one
# cycle does not hold thousands of built messages in memory.
PUBLISH_CHUNK = 100
BOUNDARY_SEED_BYTES = 12
# A publish the bus did not answer is tried again this many times, the delay doubling from the
# first: a NATS restart or leader change takes a second or two, not a retry backoff.
PUBLISH_TRIES = 4
PUBLISH_RETRY_DELAY = 0.25
# After that the claim goes back to the Pool, same attempt, due again this much later.
PUBLISH_RETRY_LATER = timedelta(seconds=10)


def new_boundary_seed() -> bytes:
    return secrets.token_bytes(BOUNDARY_SEED_BYTES)


def new_pseudonym() -> str:
    """A pseudonymous tracking identity: random, never stored (ADR 0033)."""
    return secrets.token_hex(PSEUDONYM_HEX // 2)


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


class Dispatch:
    """Claims, builds and publishes; hands failed attempts to `Retries`."""

    def __init__(
        self,
        settings: DispatcherSettings,
        pool: asyncpg.Pool,
        bus: Bus,
        retries: Retries,
        *,
        tracker: TrackerSettings,
        secret: bytes,
        clock: Callable[[], datetime],
        boundary_seed: Callable[[], bytes] = new_boundary_seed,
    ) -> None:
        self._settings = settings
        self._tracker_base = tracker.base_url
        self._token_ttl = tracker.token_ttl
        self._secret = secret
        self._pool = pool
        self._bus = bus
        self._retries = retries
        self._policy = retries.policy
        self._clock = clock
        self._boundary_seed = boundary_seed
        # Parsing a key costs more than signing with it: the signers of each Domain, replaced
        # when the keys it signs with change (a rotation step).
        self.signers: dict[str, tuple[tuple[tuple[str, str], ...], list[DkimSigner]]] = {}
        # Replaced by a ProcessBuilder while `build_processes()` is entered (as `run` does).
        self._builder: Builder = InlineBuilder()

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
        spec = BatchSpec(
            batch_id=batch.batch_id,
            domain=batch.domain,
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
        return _BatchParts(BatchJob(spec, batch.dkim_keys), signers, batch.ip_pool)

    def _domain_signers(self, batch: SendingData) -> list[DkimSigner]:
        fingerprint = batch.dkim_keys
        cached = self.signers.get(batch.domain)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            signers = [DkimSigner(batch.domain, sel, key) for sel, key in batch.dkim_keys]
        except ValueError as exc:
            raise BuildError(f"DKIM key of domain {batch.domain}: {exc}") from None
        self.signers[batch.domain] = (fingerprint, signers)
        return signers

    def _part(self, delivery: PoolDelivery, batch: BatchSpec, now: datetime) -> RecipientPart:
        return RecipientPart(
            recipient=delivery.email,
            fields=delivery.fields,
            # False on the last attempt the budget allows: a 4xx then ends as Bounced at once.
            should_retry=self._policy.should_retry(
                delivery.original_scheduled_time, delivery.send_attempts_cnt, now
            ),
            boundary_seed=self._boundary_seed() if batch.attachments else b"",
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
        recipients = [self._part(delivery, parts.job.spec, now) for delivery in group]
        results = await self._builder.build(parts.job, recipients, parts.signers)
        if len(results) != len(recipients):
            raise RuntimeError(
                f"builder returned {len(results)} results for {len(recipients)} Recipients"
            )
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
                    self._retries.retry_or_end(delivery, now, where=WHILE_DISPATCHING, error=reason)
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
                await self._retries.end(_too_large(delivery, now, exc), delivery)
                continue
            if now < self._policy.deadline(delivery.original_scheduled_time):
                release.append(delivery.id)
                continue
            error = f"publish failed: {exc!r}"
            await self._retries.end(
                budget_spent(delivery, now, where=WHILE_PUBLISHING, error=error), delivery
            )
        if release:
            RESCHEDULED.labels(WHILE_PUBLISHING).inc(len(release))
            await deliveries.release_dispatch(self._pool, release, now + PUBLISH_RETRY_LATER)


def _too_large(delivery: PoolDelivery, now: datetime, exc: BaseException) -> Outcome:
    detail = Failed(f"the Envelope is larger than the bus accepts (nats max_payload): {exc}")
    return delivery_outcome(delivery, detail, now)
