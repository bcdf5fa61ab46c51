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

Handlers still see one message each and ack it only once its event is committed, but the writes
are coalesced (`kannon.runtime.coalescer.Coalescer`): the events of concurrent handlers go into the
database in one statement. An event PostgreSQL refuses is retried alone, so it cannot fail its
neighbours.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result, outcome_consumer
from kannon.bus.subjects import STATS_DURABLE
from kannon.config import Settings
from kannon.db import stats_store
from kannon.db.database import Database, is_outage
from kannon.model.outcome import Outcome, domain_of_batch
from kannon.runtime.clock import utc_now
from kannon.runtime.coalescer import Coalescer
from kannon.runtime.component import Life, run_every
from kannon.stats.suppression import SuppressionFeed
from kannon.wire.stats import UndecodableEvent, data_json, decode

if TYPE_CHECKING:
    pass

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
DELETED = Counter("kannon_stats_retention_deleted_total", "Rows deleted by retention", ["table"])

# Handlers in flight at once. They mostly wait for a batched write (one connection at a time),
# so many can: this bounds the batch size and how many events wait unacked in memory.
CONCURRENCY = 256
# Events per statement: a few hundred rows keep one statement well under the ack deadline.
MAX_BATCH = 256
# How long a lone event waits for others to share its statement. Events trickle in (two per
# Delivery, as SMTP transactions finish): without a wait nearly every one went alone. 20 ms is
# unnoticeable in the stats and makes batches of ~10 at a few hundred Deliveries a second.
WRITE_LINGER = 0.02


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
        self._writes: Coalescer[Event, bool] = Coalescer(
            self._record, max_items=MAX_BATCH, linger=WRITE_LINGER
        )
        self.suppression = SuppressionFeed(settings, db, bus, clock=clock)

    @property
    def consumer(self) -> ConsumerSpec:
        return outcome_consumer(STATS_DURABLE, self._settings.nats, CONCURRENCY, is_outage)

    async def run(self, life: Life) -> None:
        stats_ready, feed_ready = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._cleanup_loop(life))
            tasks.create_task(self.suppression.run(life, on_ready=feed_ready.set))
            tasks.create_task(
                self._bus.consume(
                    self.consumer, self.handle, life.stopping, on_ready=stats_ready.set
                )
            )
            # A consumer that cannot be created fails the TaskGroup, which cancels this wait.
            await stats_ready.wait()
            await feed_ready.wait()
            life.ready()

    async def handle(self, msg: BusMessage) -> Result:
        """Record one event; Ack also when it was a duplicate, Term when it cannot be read."""
        try:
            outcome = decode(msg.data, msg.msg_id)
        except UndecodableEvent as exc:
            log.error(
                "undecodable stats event",
                extra={"kv": {"subject": msg.subject, "seq": msg.stream_seq, "error": str(exc)}},
            )
            RECORDED.labels("unknown", "undecodable").inc()
            return Result.term()
        if not outcome.domain:
            # Every publisher sets it; a missing one can still be recovered from the Batch id.
            outcome = dataclasses.replace(outcome, domain=domain_of_batch(outcome.batch_id))
        inserted = await self._writes.submit((outcome, data_json(outcome.detail)))
        RECORDED.labels(outcome.type, "recorded" if inserted else "duplicate").inc()
        if inserted and outcome.type in TERMINAL:
            by_domain = self._settings.stats.metrics_domain_label
            DELIVERIES.labels(outcome.type, outcome.domain if by_domain else "").inc()
        return Result.ack()

    async def _record(self, events: list[Event]) -> list[bool | BaseException]:
        """One batch of events in one statement; one by one if PostgreSQL refuses the batch,
        so that only the offending event fails (and is redelivered)."""
        try:
            return list(await stats_store.record_events(self._db, events))
        except stats_store.EventRefused as exc:
            if len(events) == 1:
                _log_refused(events[0], exc)
                return [exc]
        results: list[bool | BaseException] = []
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
