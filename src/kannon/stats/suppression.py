"""The suppression list's feed: outcome events in, Suppressions out (ADR 0027).

Part of the Stats Component, which already consumes every outcome event and writes PostgreSQL.
One durable consumer per outcome type of `kannon.model.suppression.REASON_BY_TYPE`
(`kannon-suppression-bounced`, `kannon-suppression-complained`): adding a type there adds its
consumer here. The events stay as they are; this only reads them.

* A confident hard bounce (`Bounced.hard_bounce`, ADR 0023/0027) and every complaint suppress
  the Recipient for its Domain.
* A soft bounce suppresses nothing, unless the operator set `suppression.soft_bounce_limit` to N:
  then the N-th soft bounce of one address within `suppression.soft_bounce_window` suppresses it
  with reason `soft_bounce_limit`.

Idempotent: a redelivered event finds its address already suppressed (or its soft bounce already
counted, by event id) and changes nothing. An event whose Domain does not exist (deleted, or a
test's) is logged and acked. A database outage is retried without limit (`transient=is_outage`);
a payload that is not an outcome event goes to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import Counter

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result, outcome_consumer
from kannon.bus.subjects import stats_subject, suppression_durable
from kannon.config import Settings
from kannon.db import suppressions
from kannon.db.database import Database, is_outage
from kannon.model.outcome import Outcome
from kannon.model.suppression import (
    REASON_BY_TYPE,
    Suppression,
    is_soft_bounce,
    soft_bounce_suppression,
    suppression_for,
    suppression_key,
)
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life
from kannon.runtime.logs import obfuscate
from kannon.wire.stats import UndecodableEvent, decode

if TYPE_CHECKING:
    pass

log = logging.getLogger("kannon.suppression")

EVENTS = Counter(
    "kannon_suppression_events_total",
    "Outcome events the suppression feed handled, by type and what they did",
    ["type", "result"],  # added, present, not_suppressing, soft_counted, unknown_domain
)

# Handlers in flight per consumer: each is one or two short statements.
CONCURRENCY = 32


class SuppressionFeed:
    """The consumers that keep the suppression list in step with the outcome events."""

    name = "suppression"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._settings = settings
        self._db = db
        self._bus = bus
        self._clock = clock

    def consumers(self) -> list[ConsumerSpec]:
        return [
            outcome_consumer(
                suppression_durable(stat_type),
                self._settings.nats,
                CONCURRENCY,
                is_outage,
                subject=stats_subject(stat_type),
            )
            for stat_type in REASON_BY_TYPE
        ]

    async def run(self, life: Life, on_ready: Callable[[], None] | None = None) -> None:
        """Consume until `life.stopping`; `on_ready` once every consumer exists."""
        specs = self.consumers()
        ready = [asyncio.Event() for _ in specs]
        async with asyncio.TaskGroup() as tasks:
            for spec, event in zip(specs, ready, strict=True):
                tasks.create_task(
                    self._bus.consume(spec, self.handle, life.stopping, on_ready=event.set)
                )
            await asyncio.gather(*(event.wait() for event in ready))
            if on_ready is not None:
                on_ready()

    async def handle(self, msg: BusMessage) -> Result:
        try:
            outcome = decode(msg.data, msg.msg_id)
        except UndecodableEvent as exc:
            log.error(
                "undecodable outcome event",
                extra={"kv": {"subject": msg.subject, "seq": msg.stream_seq, "error": str(exc)}},
            )
            EVENTS.labels("unknown", "undecodable").inc()
            return Result.term()
        result = await self.apply(outcome)
        EVENTS.labels(outcome.type, result).inc()
        return Result.ack()

    async def apply(self, outcome: Outcome) -> str:
        """Update the suppression list for one event; returns what happened (a metric label)."""
        now = self._clock()
        suppression = suppression_for(outcome, now)
        if suppression is None:
            if not (is_soft_bounce(outcome) and self._settings.suppression.soft_bounce_limit):
                return "not_suppressing"
            suppression = await self._soft_bounce(outcome, now)
            if suppression is None:
                return "soft_counted"
        added = await suppressions.add_from_event(self._db, suppression)
        if added is suppressions.Added.ADDED:
            log.info("address suppressed", extra={"kv": _described(suppression)})
        elif added is suppressions.Added.UNKNOWN_DOMAIN:
            log.warning(
                "event for a Domain that does not exist; nothing suppressed",
                extra={"kv": _described(suppression)},
            )
        return added.value

    async def _soft_bounce(self, outcome: Outcome, now: datetime) -> Suppression | None:
        """Count a soft bounce when the operator's limit is on; the Suppression when this one
        reached it."""
        rule = self._settings.suppression
        if not outcome.recipient.strip() or not outcome.event_id:
            return None
        count = await suppressions.record_soft_bounce(
            self._db,
            domain=outcome.domain,
            key=suppression_key(outcome.recipient),
            event_id=outcome.event_id,
            bounced_at=outcome.timestamp,
            since=now - rule.soft_bounce_window,
        )
        if count < rule.soft_bounce_limit:
            return None
        return soft_bounce_suppression(outcome, now)

    async def cleanup(self) -> tuple[int, int]:
        """Delete expired Suppressions and soft bounces older than the window."""
        now = self._clock()
        expired = await suppressions.delete_expired(self._db, now)
        soft = await suppressions.delete_soft_bounces_before(
            self._db, now - self._settings.suppression.soft_bounce_window
        )
        return expired, soft


def _described(suppression: Suppression) -> dict[str, object]:
    return {
        "domain": suppression.domain,
        "recipient": obfuscate(suppression.address),
        "reason": suppression.reason,
        "status": suppression.status,
        "batch": suppression.message_id,
    }
