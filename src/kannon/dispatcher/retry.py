"""The Dispatcher's retry room: another attempt for a Delivery whose attempt failed, or its end
when the retry budget (`model.retry.RetryPolicy`) has no room for one.

A failed attempt (an Errored about it, a build failure, a lost Envelope) is rescheduled with
backoff and jitter, recording the reply when a server answered. When the budget is spent the
Delivery ends here: Bounced(permanent=False) with the last reply if a remote server ever answered,
else Failed with the reason. The terminal event is published (PubAck) BEFORE the row is deleted,
under a deterministic event id (`model.event_ids.delivery_event_id`): a crash in between leaves
the row, the redo publishes the same id, which the stream drops as a duplicate and Stats counts
once; the other order could lose the event.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import Counter

from kannon.config import Settings
from kannon.db import deliveries
from kannon.model.delivery import PoolDelivery, delivery_outcome
from kannon.model.outcome import Bounced, Failed, Outcome
from kannon.model.retry import JITTER_MAX, JITTER_MIN, RetryPolicy
from kannon.runtime.logs import obfuscate
from kannon.wire.stats import Publisher, publish_outcome

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("kannon.dispatcher")

RESCHEDULED = Counter(
    "kannon_dispatcher_rescheduled_total", "Deliveries rescheduled for another attempt", ["cause"]
)
ENDED = Counter(
    "kannon_dispatcher_ended_total",
    "Deliveries the Dispatcher ended because the retry budget was spent",
    ["type"],
)

# Where an attempt failed: the `cause` of RESCHEDULED and the words of a Failed reason.
WHILE_DISPATCHING = "dispatching"
WHILE_PUBLISHING = "publishing"
WHILE_SENDING = "sending"
WHILE_QUEUED = "queued"


def draw_jitter() -> float:
    """A backoff jitter factor. Randomness is read here, at the edge: the policy stays pure."""
    return random.uniform(JITTER_MIN, JITTER_MAX)  # spreads retries; not a secret


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
    return delivery_outcome(delivery, detail, now)


class Retries:
    """Reschedules failed attempts and ends Deliveries whose budget is spent."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Publisher,
        policy: RetryPolicy,
        jitter: Callable[[], float] = draw_jitter,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self.policy = policy
        self._jitter = jitter

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
        at = self.policy.next_attempt(
            delivery.original_scheduled_time, delivery.send_attempts_cnt, now, self._jitter()
        )
        if at is not None:
            code, message = reply if reply is not None else (None, None)
            if await deliveries.reschedule(
                self._pool, delivery.id, at, code, message, attempt=delivery.send_attempts_cnt
            ):
                RESCHEDULED.labels(where).inc()
            return True
        await self.end(budget_spent(delivery, now, where=where, error=error, reply=reply), delivery)
        return False

    async def end(self, outcome: Outcome, delivery: PoolDelivery) -> None:
        """Publish the Delivery's terminal outcome, then delete its row (see the module doc)."""
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
