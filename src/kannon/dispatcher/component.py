"""The Dispatcher Component: wiring and run. It claims due Deliveries, builds and signs their
Envelopes, publishes them on their IP pool's subject, and consumes the SMTPSender's outcomes to
keep the Pool in step. Each of those is a room of its own (ADR 0050):

* `dispatch.py` — claim, build (`builder.py`: inline or in worker processes), publish;
* `outcomes.py` — the delivered / bounced / error consumers, and queued Deliveries whose outcome
  was lost;
* `retry.py` — another attempt with backoff, or the end of a Delivery when its retry budget is
  spent (Bounced or Failed, published before the row is deleted);
* Reclaim (`db/reclaim.py`, shared with the Validator; ADR 0025): at start every dispatch claim
  goes back to scheduled at once (a Dispatcher that died left them), then, on a timer, claims
  older than `dispatcher.claim_timeout`, followed by the retry of lost queued Deliveries. A claim
  keeps its attempt number, so an Envelope that was published after all is published again under
  the same `Nats-Msg-Id` and the stream drops the copy.

`run` starts the three consumers, reclaims, starts the reclaim timer and calls `life.ready()` once
every consumer runs, then loops dispatch cycles until stopping, `CYCLES_AT_ONCE` of them at once.

The clock and the jitter source are constructor parameters (so are the retry policy and the
boundary randomness), so tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter

from kannon.bus.client import Bus, BusMessage, Result
from kannon.config import ConfigError, Settings, require
from kannon.db.reclaim import Reclaim, Stage
from kannon.db.wakeups import SCHEDULED_CHANNEL, Listener
from kannon.dispatcher.dispatch import Dispatch, new_boundary_seed
from kannon.dispatcher.outcomes import Outcomes
from kannon.dispatcher.retry import Retries, draw_jitter, retry_policy
from kannon.envelope.bounce import make_bounce_address
from kannon.model.retry import RetryPolicy
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life, run_cycles

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("kannon.dispatcher")

# Dispatch cycles run at once (ADR 0061). One cycle claims, loads, builds and publishes in turn,
# so alone it left the build worker idle while it claimed and published and the sending stream
# empty (the senders starved, the pipeline bench showed `kannon-sending-pool` with nothing
# pending). Two keep the build worker busy while the other claims or publishes; the claims are
# disjoint (FOR UPDATE SKIP LOCKED), as between Dispatcher replicas.
CYCLES_AT_ONCE = 2

RECLAIMED = Counter(
    "kannon_dispatcher_reclaimed_total", "Abandoned dispatch claims returned to the Pool"
)


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
        own = settings.dispatcher
        self._pool = pool
        self._bus = bus
        self._idle = own.idle_interval
        self.retries = Retries(
            pool, bus, policy if policy is not None else retry_policy(settings), jitter
        )
        self.dispatch = Dispatch(
            own,
            pool,
            bus,
            self.retries,
            tracker=settings.tracker,
            secret=secret,
            clock=clock,
            boundary_seed=boundary_seed,
        )
        self.outcomes = Outcomes(
            pool,
            bus,
            self.retries,
            settings.nats,
            ip_pools=settings.known_pools(),
            claim_timeout=own.claim_timeout,
            clock=clock,
        )
        self.reclaimer = Reclaim(pool, Stage.SENDING, own.claim_timeout, clock, RECLAIMED, log)

    async def run(self, life: Life) -> None:
        consumers = self.outcomes.consumers()
        ready = [asyncio.Event() for _ in consumers]
        async with self.build_processes(), asyncio.TaskGroup() as tasks:
            for consume, event in zip(consumers, ready, strict=True):
                tasks.create_task(consume(life.stopping, event.set))
            # Before our own first claim: every claim there is now a dead Dispatcher's.
            await self._reclaim_at_start()
            tasks.create_task(self.reclaimer.run(life, _log_error, then=self.requeue_lost))
            # A consumer that cannot be created fails the TaskGroup, which cancels this wait.
            await asyncio.gather(*(event.wait() for event in ready))
            life.ready()
            # run_cycles returns between cycles once stopping is set; the consumers return
            # after their in-flight handlers finished: that is the drain.
            async with Listener(self._pool, SCHEDULED_CHANNEL) as wake:
                await asyncio.gather(
                    *(
                        run_cycles(life, self.cycle, self._idle, on_error=_log_error, wake=wake)
                        for _ in range(CYCLES_AT_ONCE)
                    )
                )

    async def _reclaim_at_start(self) -> None:
        try:
            await self.reclaim(everything=True)
        except Exception as exc:  # the database may still be starting: the timer catches up
            _log_error(exc)

    # The rooms' entry points, as the Component's own.

    @contextlib.asynccontextmanager
    async def build_processes(self) -> AsyncIterator[None]:
        async with self.dispatch.build_processes():
            yield

    async def cycle(self) -> int:
        return await self.dispatch.cycle()

    async def handle_finished(self, message: BusMessage) -> Result:
        return await self.outcomes.handle_finished(message)

    async def handle_error(self, message: BusMessage) -> Result:
        return await self.outcomes.handle_error(message)

    async def requeue_lost(self) -> int:
        return await self.outcomes.requeue_lost()

    @property
    def reclaim_interval(self) -> timedelta:
        return self.reclaimer.interval

    async def reclaim(self, *, everything: bool = False) -> int:
        """Return dispatch claims older than dispatcher.claim_timeout (`everything`: all of them,
        as at start, when any claim can only be a dead Dispatcher's or soon published anyway)
        to scheduled, under the same attempt."""
        return await self.reclaimer.once(everything=everything)


def _log_error(exc: BaseException) -> None:
    # Retried after the idle interval: a database or bus hiccup should not stop dispatching for
    # good, and no claim is lost meanwhile (released, rescheduled, or reclaimed after timeout).
    log.error("dispatcher cycle failed", exc_info=exc)
