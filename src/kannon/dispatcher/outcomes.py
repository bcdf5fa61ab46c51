"""The Dispatcher's outcomes room: the SMTPSender's outcomes keep the Pool in step.

* `dispatcher-delivered` / `dispatcher-bounced`: the Delivery ended, delete its row (taken a
  fetch at a time, `Bus.consume_batches`: the rows of one fetch go in one DELETE, ADR 0058);
* `dispatcher-error`: reschedule with backoff and jitter, recording the reply when a server
  answered (code ≥ 200) — only when the error answers the attempt in flight (its event id names
  the attempt, `model.event_ids.attempt_of_send_outcome`), else it is a late copy and ignored;
* an outcome that never comes (ADR 0025): a `queued` row whose Envelope the SMTPSender has
  acknowledged (or the stream no longer holds) with no outcome pending anywhere lost its outcome
  (dead-lettered, ADR 0026), and is retried (`requeue_lost`, on the reclaim timer).

The three consumers are idempotent: an event whose Delivery is gone (or, for errors, no longer
in flight, i.e. an earlier copy already rescheduled it) is acked and changes nothing. A database
outage makes them retry with growing delays for as long as it lasts (ADR 0026).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result, outcome_consumer
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
    stats_subject,
)
from kannon.config import NatsSettings
from kannon.db import deliveries
from kannon.db.database import is_outage
from kannon.dispatcher.retry import WHILE_QUEUED, WHILE_SENDING, Retries
from kannon.model.delivery import IN_FLIGHT_STATUSES
from kannon.model.event_ids import attempt_of_send_outcome
from kannon.model.outcome import Errored, Outcome
from kannon.wire.stats import UndecodableEvent, decode

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("kannon.dispatcher")

LOST_IN_QUEUE = Counter(
    "kannon_dispatcher_lost_in_queue_total",
    "Queued Deliveries whose Envelope left the stream without an outcome, retried",
)
STALE_ERRORS = Counter(
    "kannon_dispatcher_stale_errors_total",
    "Errored events about an earlier attempt than the one in flight, ignored",
)

# Outcome handlers in flight per consumer: each is one or two short queries.
CONSUMER_CONCURRENCY = 8
# Delivered/Bounced events per fetch, deleted in one statement; fetches in hand at once: one, so
# that a slow database makes batches larger rather than DELETEs more frequent (as Stats, ADR 0058).
FINISHED_BATCH = 256
FINISHED_CONCURRENCY = 1
# How long a fetch of endings waits for company to share its DELETE: they trickle in as SMTP
# transactions finish, and a row deleted 20 ms later changes nothing for anyone.
FINISHED_LINGER = timedelta(milliseconds=20)
LOST_PAGE = 1000

DURABLES = (DISPATCHER_DELIVERED_DURABLE, DISPATCHER_BOUNCED_DURABLE, DISPATCHER_ERROR_DURABLE)

Handler = Callable[[BusMessage], Awaitable[Result]]
Consume = Callable[[asyncio.Event, Callable[[], None]], Coroutine[Any, Any, None]]
"""One consumer's loop: runs until the event is set; calls the callback once subscribed."""
_ACK = Result.ack()


class Outcomes:
    """The handlers of the Dispatcher's three outcome consumers, and the retry of lost ones."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        retries: Retries,
        nats: NatsSettings,
        *,
        ip_pools: Sequence[str],
        claim_timeout: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._retries = retries
        self._nats = nats
        self._ip_pools = ip_pools
        self._claim_timeout = claim_timeout
        self._clock = clock

    def consumers(self) -> list[Consume]:
        """The durable consumers to run, each as its loop."""
        finished = [
            dataclasses.replace(
                self._consumer(durable, stat_type, FINISHED_CONCURRENCY, FINISHED_BATCH),
                linger=FINISHED_LINGER,
            )
            for durable, stat_type in (
                (DISPATCHER_DELIVERED_DURABLE, DELIVERED),
                (DISPATCHER_BOUNCED_DURABLE, BOUNCED),
            )
        ]
        errors = self._consumer(DISPATCHER_ERROR_DURABLE, ERROR)

        def batches(spec: ConsumerSpec) -> Consume:
            async def loop(stopping: asyncio.Event, on_ready: Callable[[], None]) -> None:
                await self._bus.consume_batches(
                    spec, self.handle_finished_batch, stopping, on_ready=on_ready
                )

            return loop

        async def each(stopping: asyncio.Event, on_ready: Callable[[], None]) -> None:
            await self._bus.consume(errors, self.handle_error, stopping, on_ready=on_ready)

        return [*(batches(spec) for spec in finished), each]

    def _consumer(
        self,
        durable: str,
        stat_type: str,
        concurrency: int = CONSUMER_CONCURRENCY,
        batch: int | None = None,
    ) -> ConsumerSpec:
        return outcome_consumer(
            durable,
            self._nats,
            concurrency,
            is_outage,
            subject=stats_subject(stat_type),
            batch=batch or max(concurrency, ConsumerSpec.batch),
        )

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
        [result] = await self.handle_finished_batch([message])
        return result

    async def handle_finished_batch(self, messages: Sequence[BusMessage]) -> list[Result]:
        """`handle_finished` for a fetch of events: their rows go in one DELETE, and each event
        is acked once it committed. A failed DELETE raises: the whole fetch comes back."""
        results: list[Result] = [_ACK] * len(messages)
        recipients: list[tuple[str, str]] = []
        for position, message in enumerate(messages):
            outcome = self._decode(message)
            if outcome is None:
                results[position] = Result.term()
            else:
                recipients.append((outcome.batch_id, outcome.recipient))
        if recipients:
            await deliveries.delete_by_recipients(self._pool, recipients)
        return results

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
        await self._retries.retry_or_end(
            delivery,
            self._clock(),
            where=WHILE_SENDING,
            error=detail.message or f"code {detail.code}",
            reply=reply,
        )
        return Result.ack()

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
            for ip_pool in self._ip_pools
        }
        first = await self._bus.first_seq(SENDING_STREAM)
        if not await self._bus.consumers_idle(STATS_STREAM, DURABLES):
            return 0
        lost = await deliveries.lost_in_queue(
            self._pool, now - self._claim_timeout, acked, first, LOST_PAGE
        )
        for delivery in lost:
            await self._retries.retry_or_end(
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
