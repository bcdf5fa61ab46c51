"""The Validator Component: claims `to_validate` Deliveries, checks each Recipient address,
schedules the valid ones (Accepted) and ends the invalid ones (Rejected, with the reason). A
Delivery intake wrote with a `reject_reason` (a suppressed Recipient, ADR 0027) is Rejected with
that reason without looking further: its refusal reaches Stats like any other.

Order of effects, chosen so that a crash at any point loses nothing: the event is published
(and its PubAck awaited) BEFORE the Pool row changes. A crash after the publish and before the
update leaves the row `validating`; the Reclaim pass returns it to `to_validate` after
`validator.claim_timeout`, and the redo publishes the same event again under the same
deterministic event id, which the stream's duplicate window drops and Stats' unique event-id
index ignores beyond it. The other order could lose the event for good (row scheduled, event
never sent). A publish the bus refuses releases the claim at once, so it is retried next cycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import Counter

from kannon.config import Settings
from kannon.db import deliveries
from kannon.db.reclaim import Reclaim, Stage
from kannon.db.wakeups import TO_VALIDATE_CHANNEL, Listener
from kannon.model.address import InvalidAddress, parse_address
from kannon.model.delivery import PoolDelivery, delivery_outcome
from kannon.model.outcome import Accepted, Outcome, Rejected
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life, run_cycles
from kannon.runtime.logs import obfuscate
from kannon.wire.stats import Publisher, publish_outcome

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("kannon.validator")

VALIDATED = Counter(
    "kannon_validator_deliveries_total", "Deliveries validated, by outcome", ["outcome"]
)
RECLAIMED = Counter(
    "kannon_validator_reclaimed_total", "Abandoned validation claims returned to the Pool"
)


def judge(delivery: PoolDelivery, now: datetime) -> Outcome:
    """Accepted or Rejected (with the reason) for one Delivery. A Recipient intake already
    refused (`reject_reason`, e.g. "suppressed") is Rejected with that reason."""
    detail: Accepted | Rejected
    if delivery.reject_reason:
        detail = Rejected(delivery.reject_reason)
    else:
        try:
            parse_address(delivery.email)
        except InvalidAddress as exc:
            detail = Rejected(f"invalid address: {exc}")
        else:
            detail = Accepted()
    return delivery_outcome(delivery, detail, now)


class Validator:
    name = "validator"

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        bus: Publisher,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._settings = settings.validator
        self._pool = pool
        self._bus = bus
        self._clock = clock
        # A stale claim is retaken within 1.5 × claim_timeout (7.5 min by default), so the
        # redo's duplicate event usually still falls in the stream's 10-minute duplicate window.
        self._reclaim = Reclaim(
            pool, Stage.VALIDATING, self._settings.claim_timeout, clock, RECLAIMED, log
        )

    async def run(self, life: Life) -> None:
        async with Listener(self._pool, TO_VALIDATE_CHANNEL) as wake, asyncio.TaskGroup() as tasks:
            tasks.create_task(self._reclaim.run(life, _log_error))
            life.ready()
            await run_cycles(
                life, self.cycle, self._settings.idle_interval, on_error=_log_error, wake=wake
            )

    async def cycle(self) -> int:
        """Validate one batch; returns how many Deliveries it claimed (0 = the Pool is empty).

        Raises the bus's error after releasing the claims whose event could not be published.
        """
        now = self._clock()
        claimed = await deliveries.claim_for_validation(self._pool, self._settings.batch_size, now)
        if not claimed:
            return 0
        outcomes = [judge(delivery, now) for delivery in claimed]
        results = await asyncio.gather(
            *(publish_outcome(self._bus, outcome) for outcome in outcomes),
            return_exceptions=True,
        )
        accepted: list[int] = []
        rejected: list[int] = []
        unpublished: list[int] = []
        failure: BaseException | None = None
        for delivery, outcome, result in zip(claimed, outcomes, results, strict=True):
            if isinstance(result, BaseException):
                unpublished.append(delivery.id)
                failure = failure or result
            elif isinstance(outcome.detail, Rejected):
                rejected.append(delivery.id)
                log.info(
                    "recipient rejected",
                    extra={
                        "kv": {
                            "batch": delivery.message_id,
                            "recipient": obfuscate(delivery.email),
                            "reason": outcome.detail.reason,
                        }
                    },
                )
            else:
                accepted.append(delivery.id)
        await deliveries.mark_validated(self._pool, accepted)
        await deliveries.delete(self._pool, rejected)
        VALIDATED.labels("accepted").inc(len(accepted))
        VALIDATED.labels("rejected").inc(len(rejected))
        if failure is not None:
            await deliveries.release_validation(self._pool, unpublished)
            raise failure
        return len(claimed)

    async def reclaim(self) -> int:
        """Return validation claims older than validator.claim_timeout to `to_validate`."""
        return await self._reclaim.once()


def _log_error(exc: BaseException) -> None:
    # Retried after the idle interval: a database or bus hiccup should not stop validation for
    # good, and no claim is lost meanwhile (released, or reclaimed after the timeout).
    log.error("validator cycle failed", exc_info=exc)
