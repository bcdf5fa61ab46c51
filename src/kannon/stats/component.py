"""The Stats Component: consumes every `kannon.stats.*` event into `stats` and the hourly
`aggregated_stats` counters, feeds the suppression list from the events that suppress an address
(`kannon.stats.suppression`, its own durable consumers), and on a timer deletes events older than
`stats.retention`, expired tracking keys and expired Suppressions.

One durable consumer (`kannon-stats-logs`) does both writes in one transaction, so the raw log
and the aggregates cannot drift apart (the original ran two consumers, and the aggregate one
double-counted redeliveries; ADR 0006). A duplicate — a redelivery after a lost ack, or the same
event re-published after a crash — hits a unique index, is ignored, and is acked: it counts once.
A payload that is not a Stats message is terminated (logged), never retried; a database failure
raises, and the bus loop Naks the message so it comes back later.

Events are taken a fetch at a time (`Bus.consume_batches`): the events of one fetch go into the
database in one statement, and each is acked only once that statement committed. A fetch waits up
to `WRITE_LINGER` for company, so that events trickling in share a statement. An event PostgreSQL
refuses is retried alone, so it cannot fail its neighbours; a database failure fails (naks) the
whole fetch (ADR 0058; before, handlers took one message each and met in a coalescer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result, outcome_consumer
from kannon.bus.subjects import STATS_DURABLE
from kannon.config import Settings
from kannon.db import stats_store
from kannon.db.database import Database, is_outage
from kannon.model.outcome import Outcome, domain_of_batch
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life, run_every
from kannon.stats.suppression import SuppressionFeed
from kannon.wire.stats import UndecodableEvent, data_json, decode

# An event to store: the outcome and the protojson of its StatsData.
Event = tuple[Outcome, Mapping[str, Any]]

log = logging.getLogger("kannon.stats")

RECORDED = Counter("kannon_stats_events_total", "Outcome events handled", ["type", "result"])
# Deliveries that ended, by outcome (and Domain when stats.metrics_domain_label is on; ADR 0045).
DELIVERIES = Counter(
    "kannon_deliveries_total",
    "Deliveries ended, by outcome (domain is empty unless stats.metrics_domain_label is on)",
    ["outcome", "domain"],
)
TERMINAL = frozenset({"delivered", "bounced", "rejected", "failed"})
_ACK = Result.ack()
DELETED = Counter("kannon_stats_retention_deleted_total", "Rows deleted by retention", ["table"])

# Fetches in hand at once. One: the next fetch starts (and lingers) once the last statement
# committed, so a slow database makes batches larger rather than statements more frequent —
# with two, each event cost PostgreSQL a quarter more CPU in the pipeline bench (ADR 0058).
CONCURRENCY = 1
# Events per fetch, so per statement: a few hundred rows keep one statement well under the ack
# deadline.
MAX_BATCH = 256
# How long a fetch waits for its batch to fill. Events trickle in (two per Delivery, as SMTP
# transactions finish): without a wait nearly every one went alone. 20 ms is unnoticeable in
# the stats and makes batches of ~10 at a few hundred Deliveries a second.
WRITE_LINGER = timedelta(milliseconds=20)


@functools.cache
def _recorded(stat_type: str, result: str) -> Counter:
    """`RECORDED`'s child, looked up once per label pair rather than per event."""
    return RECORDED.labels(stat_type, result)


@functools.cache
def _ended(outcome: str, domain: str) -> Counter:
    """`DELIVERIES`' child, looked up once per label pair rather than per event. Domains are
    few (the label is off unless `stats.metrics_domain_label`, ADR 0045)."""
    return DELIVERIES.labels(outcome, domain)


@dataclass(frozen=True)
class CleanupCounts:
    stats: int
    stats_keys: int
    suppressions: int = 0
    soft_bounces: int = 0


class StatsWorker:
    name = "stats"

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
        self.suppression = SuppressionFeed(settings, db, bus, clock=clock)

    @property
    def consumer(self) -> ConsumerSpec:
        spec = outcome_consumer(
            STATS_DURABLE, self._settings.nats, CONCURRENCY, is_outage, batch=MAX_BATCH
        )
        return dataclasses.replace(spec, linger=WRITE_LINGER)

    async def run(self, life: Life) -> None:
        stats_ready, feed_ready = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._cleanup_loop(life))
            tasks.create_task(self.suppression.run(life, on_ready=feed_ready.set))
            tasks.create_task(
                self._bus.consume_batches(
                    self.consumer, self.handle_batch, life.stopping, on_ready=stats_ready.set
                )
            )
            # A consumer that cannot be created fails the TaskGroup, which cancels this wait.
            await stats_ready.wait()
            await feed_ready.wait()
            life.ready()

    async def handle(self, msg: BusMessage) -> Result:
        """One event alone (see `handle_batch`); raises what failed it."""
        [result] = await self.handle_batch([msg])
        if isinstance(result, Exception):
            raise result
        return result

    async def handle_batch(self, msgs: Sequence[BusMessage]) -> list[Result | Exception]:
        """Record the events of one fetch in one statement. Per event: Ack once committed, also
        when it was a duplicate; Term when it cannot be read; the database's refusal when it
        refused that event alone (redelivered, dead-lettered after `max_deliver`). A failed
        statement raises: the whole fetch comes back."""
        results: list[Result | Exception] = [_ACK] * len(msgs)
        events: list[Event] = []
        positions: list[int] = []
        for position, msg in enumerate(msgs):
            try:
                outcome = decode(msg.data, msg.msg_id)
            except UndecodableEvent as exc:
                log.error(
                    "undecodable stats event",
                    extra={
                        "kv": {"subject": msg.subject, "seq": msg.stream_seq, "error": str(exc)}
                    },
                )
                _recorded("unknown", "undecodable").inc()
                results[position] = Result.term()
                continue
            if not outcome.domain:
                # Every publisher sets it; a missing one can still be recovered from the Batch.
                outcome = dataclasses.replace(outcome, domain=domain_of_batch(outcome.batch_id))
            events.append((outcome, data_json(outcome.detail)))
            positions.append(position)
        if not events:
            return results
        written = await self._record(events)
        by_domain = self._settings.stats.metrics_domain_label
        for position, (outcome, _), inserted in zip(positions, events, written, strict=True):
            if isinstance(inserted, Exception):
                results[position] = inserted
                continue
            _recorded(outcome.type, "recorded" if inserted else "duplicate").inc()
            if inserted and outcome.type in TERMINAL:
                _ended(outcome.type, outcome.domain if by_domain else "").inc()
        return results

    async def _record(self, events: list[Event]) -> list[bool | Exception]:
        """One batch of events in one statement; one by one if PostgreSQL refuses the batch,
        so that only the offending event fails (and is redelivered)."""
        try:
            return list(await stats_store.record_events(self._db, events))
        except stats_store.EventRefused as exc:
            if len(events) == 1:
                _log_refused(events[0], exc)
                return [exc]
        results: list[bool | Exception] = []
        for event in events:
            try:
                results.append(await stats_store.record_event(self._db, *event))
            except stats_store.EventRefused as exc:
                _log_refused(event, exc)
                results.append(exc)
        return results

    async def cleanup(self) -> CleanupCounts:
        """Delete events older than stats.retention, expired tracking-token keys, expired
        Suppressions and soft bounces too old to count."""
        now = self._clock()
        stats = await stats_store.delete_stats_before(
            self._db, now - self._settings.stats.retention
        )
        keys = await stats_store.delete_expired_stats_keys(self._db, now)
        suppressions, soft_bounces = await self.suppression.cleanup()
        counts = CleanupCounts(stats, keys, suppressions, soft_bounces)
        for table, count in (
            ("stats", stats),
            ("stats_keys", keys),
            ("suppressions", suppressions),
            ("suppression_soft_bounces", soft_bounces),
        ):
            DELETED.labels(table).inc(count)
        if stats or keys or suppressions or soft_bounces:
            log.info("retention cleanup", extra={"kv": dataclasses.asdict(counts)})
        return counts

    async def _cleanup_loop(self, life: Life) -> None:
        # Once at start, then every stats.cleanup_interval. A failure is logged and retried at
        # the next tick: retention can wait, recording events must not stop for it.
        await run_every(
            life,
            self._settings.stats.cleanup_interval,
            self.cleanup,
            lambda exc: log.error("retention cleanup failed", exc_info=exc),
        )


def _log_refused(event: Event, exc: Exception) -> None:
    log.error(
        "stats event refused by the database; it will be redelivered",
        extra={"kv": {"type": event[0].type, "batch": event[0].batch_id, "error": str(exc)}},
    )
