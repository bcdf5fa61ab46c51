"""The event loop every `kannon` command runs on: uvloop or asyncio's own (`event_loop`, ADR 0054).

uvloop (libuv, written in Cython) spends less CPU than asyncio's pure-Python selector loop on
every callback, socket read and write; Kannon's Components are mostly that. `auto` takes uvloop
when it is installed (a dependency on Linux and macOS) and asyncio's loop otherwise; `uvloop`
insists on it; `asyncio` is the way back should a library misbehave on uvloop.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

EventLoop = Literal["auto", "uvloop", "asyncio"]
CHOICES: tuple[EventLoop, ...] = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


class EventLoopUnavailable(RuntimeError):
    """`event_loop: uvloop` where uvloop is not installed."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def chosen(choice: EventLoop) -> Literal["uvloop", "asyncio"]:
    """Which loop `choice` means on this installation."""
    if choice == "asyncio":
        return "asyncio"
    if uvloop_installed():
        return "uvloop"
    if choice == "uvloop":
        raise EventLoopUnavailable("event_loop is uvloop, but uvloop is not installed")
    return "asyncio"


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of new loops for `asyncio.Runner`."""
    if chosen(choice) == "asyncio":
        # asyncio's own loop for this platform, whatever event loop policy is installed.
        return asyncio.DefaultEventLoopPolicy().new_event_loop
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: EventLoop) -> T:
    """`asyncio.run(main)` on the loop `choice` names."""
    try:
        factory = loop_factory(choice)
    except EventLoopUnavailable:
        main.close()  # never to run: closed, so it is not reported as never awaited
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
