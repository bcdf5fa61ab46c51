"""Reclaim (CONTEXT.md): claims older than a timeout go back to the Pool, now and then on a timer,
so a worker that crashed mid-claim strands nothing. One loop for both Components that claim: the
Validator reclaims `validating` claims (back to `to_validate`), the Dispatcher `sending` ones
(back to `scheduled` under the same attempt, ADR 0025). Each reclaims only its own stage.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from kannon.db import deliveries
from kannon.runtime.component import Life, run_every

if TYPE_CHECKING:
    import asyncpg
    from prometheus_client import Counter

PAGE = 1000
# "Everything": claims older than a second from now, i.e. every claim made until now.
_EVERYTHING = -timedelta(seconds=1)


class Stage(enum.Enum):
    """The claim a Component reclaims; the value names it in the log."""

    VALIDATING = "validation"
    SENDING = "dispatch"


@dataclass(frozen=True)
class Reclaim:
    """Reclaims one stage's claims older than `timeout`, counting them in `reclaimed`."""

    pool: asyncpg.Pool
    stage: Stage
    timeout: timedelta
    clock: Callable[[], datetime]
    reclaimed: Counter
    log: logging.Logger

    @property
    def interval(self) -> timedelta:
        # Half the timeout: a stale claim is retaken within 1.5 × the timeout.
        return self.timeout / 2

    async def once(self, *, everything: bool = False) -> int:
        """Return this stage's claims older than the timeout (`everything`: all of them) to the
        Pool; how many."""
        timeout = _EVERYTHING if everything else self.timeout
        validating = self.stage is Stage.VALIDATING
        counts = await deliveries.reclaim_all_stale(
            self.pool,
            self.clock(),
            validating_timeout=timeout if validating else None,
            sending_timeout=None if validating else timeout,
            page=PAGE,
        )
        total = counts.validating if validating else counts.sending
        if total:
            self.reclaimed.inc(total)
            self.log.warning(
                f"reclaimed abandoned {self.stage.value} claims", extra={"kv": {"count": total}}
            )
        return total

    async def run(
        self,
        life: Life,
        on_error: Callable[[BaseException], None],
        then: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Reclaim at once (a previous instance may have died mid-cycle), then every `interval`
        until stopping; `then` runs after each pass that succeeded."""

        async def tick() -> None:
            await self.once()
            if then is not None:
                await then()

        await run_every(life, self.interval, tick, on_error)
