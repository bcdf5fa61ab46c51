"""The supervisor: runs a process's Components, owns SIGTERM/SIGINT, and shuts down in order.

A signal or a failing Component sets every Component's `life.stopping`; Components then drain and
return. After the grace period stragglers are cancelled. Resources close in reverse order of
creation. The exit code is 0 only when the stop was asked for and every Component ended cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kannon.runtime.component import Component, Life
from kannon.runtime.health import HealthRegistry

log = logging.getLogger("kannon.supervisor")


@dataclass
class Outcome:
    exit_code: int
    failures: dict[str, BaseException]


async def supervise(
    components: Sequence[Component],
    *,
    health: HealthRegistry | None = None,
    grace: float = 30.0,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
) -> Outcome:
    """Run `components` until a signal, `stop`, or a failure; returns the exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, _on_signal, stop, sig)
                installed.append(sig)

    lives = {c.name: Life(c.name) for c in components}
    if health is not None:
        for name, life in lives.items():
            health.add_readiness(name, _readiness(life))
    tasks: dict[asyncio.Future[Any], str] = {
        asyncio.create_task(c.run(lives[c.name]), name=f"component:{c.name}"): c.name
        for c in components
    }
    failures: dict[str, BaseException] = {}
    stop_waiter: asyncio.Future[Any] = asyncio.create_task(stop.wait())
    try:
        pending: set[asyncio.Future[Any]] = set(tasks)
        while pending and not stop.is_set():
            done, _ = await asyncio.wait(
                pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done - {stop_waiter}:
                pending.discard(task)
                name = tasks[task]
                exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
                if exc is None:
                    exc = RuntimeError(f"component {name} returned before it was asked to stop")
                failures[name] = exc
                log.error(
                    "component failed, stopping the others",
                    extra={"kv": {"component": name, "error": repr(exc)}},
                    exc_info=exc if not isinstance(exc, RuntimeError) else None,
                )
                stop.set()
        for life in lives.values():
            life.stopping.set()
        if pending:
            done, stragglers = await asyncio.wait(pending, timeout=grace)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    failures.setdefault(tasks[task], error)
            for task in stragglers:
                log.warning(
                    "component did not stop within the grace period; cancelling",
                    extra={"kv": {"component": tasks[task], "grace_s": grace}},
                )
                task.cancel()
                failures.setdefault(tasks[task], TimeoutError("did not stop in time"))
            if stragglers:
                await asyncio.wait(stragglers, timeout=5)
    finally:
        stop_waiter.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    return Outcome(1 if failures else 0, failures)


def _readiness(life: Life) -> Callable[[], bool]:
    return lambda: life.is_ready


def _on_signal(stop: asyncio.Event, sig: int) -> None:
    log.info("signal received, draining", extra={"kv": {"signal": signal.Signals(sig).name}})
    stop.set()
