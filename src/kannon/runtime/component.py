"""The Component protocol and the `Life` handle a Component uses to talk to its supervisor.

Every Component has one `async run(life)`: start, call `life.ready()`, serve until
`life.stopping` is set, drain in-flight work, return. Raising means failure: the supervisor then
stops the other Components gracefully and the process exits non-zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

CYCLE_ERROR_BACKOFF_MAX = 5.0
"""Longest pause between two failing cycles of a polling worker (seconds)."""


class Life:
    """What the supervisor tells a Component (stop now) and what it hears back (I'm ready)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = asyncio.Event()
        self._ready = asyncio.Event()

    def ready(self) -> None:
        self._ready.set()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def sleep(self, seconds: float, *, wake: asyncio.Event | None = None) -> bool:
        """Sleep unless asked to stop first (or, with `wake`, until it is set); returns True
        when stopping."""
        if self.stopping.is_set():
            return True
        if wake is None:
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
            except TimeoutError:
                return False
            return True
        waits = {asyncio.ensure_future(self.stopping.wait()), asyncio.ensure_future(wake.wait())}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return self.stopping.is_set()


class Component(Protocol):
    name: str

    async def run(self, life: Life) -> None: ...


class Waker(Protocol):
    """Something that can cut an idle wait short (`db.wakeups.Listener`)."""

    event: asyncio.Event

    async def ensure(self) -> None: ...


async def run_cycles(
    life: Life,
    cycle: Callable[[], Awaitable[int]],
    idle: timedelta,
    *,
    on_error: Callable[[BaseException], None] | None = None,
    wake: Waker | None = None,
) -> None:
    """Loop a polling worker's `cycle()` (which returns how much work it did) until stopping.

    Sleeps only when a cycle found nothing to do, so a backlog drains at full speed. An error in
    a cycle is reported to `on_error` and retried when `on_error` is given — after the idle
    interval, doubling with each further failure up to `CYCLE_ERROR_BACKOFF_MAX`, so an outage
    is not hammered five times a second; otherwise it propagates and fails the Component.

    With `wake`, an idle wait ends as soon as its event is set (new work was announced); the
    event is cleared before each cycle, so work announced during a cycle is not missed.
    """
    failures = 0
    while not life.stopping.is_set():
        if wake is not None:
            wake.event.clear()
        try:
            done = await cycle()
            failures = 0
        except Exception as exc:
            if on_error is None:
                raise
            on_error(exc)
            done = 0
            failures += 1
        if done:
            continue
        pause = idle.total_seconds()
        if failures:
            pause = min(pause * 2 ** min(failures - 1, 16), CYCLE_ERROR_BACKOFF_MAX)
        event = None
        if wake is not None and not failures:
            try:
                await wake.ensure()
                event = wake.event
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(exc)
        if await life.sleep(pause, wake=event):
            return


async def run_every(
    life: Life,
    interval: timedelta,
    job: Callable[[], Awaitable[object]],
    on_error: Callable[[BaseException], None],
) -> None:
    """Run `job` now and then every `interval` until stopping (reclaims, retention, ...).

    A failing run is reported to `on_error` and tried again at the next tick: housekeeping can
    wait, the Component's real work must not stop for it.
    """
    while not life.stopping.is_set():
        try:
            await job()
        except Exception as exc:
            on_error(exc)
        if await life.sleep(interval.total_seconds()):
            return
