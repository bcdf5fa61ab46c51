"""Where a large send call's CPU work runs, and giving its memory back afterwards (ADR 0059).

One dedicated thread, rather than asyncio's default executor: glibc gives each thread that
allocates its own malloc arena, and memory freed in an arena mostly stays in it, so spreading a
100,000-Recipient call over several pool threads left ~10 MiB more resident than one thread
does. After such a call :func:`release_memory` hands the freed heap pages back to the OS
(`malloc_trim`), which glibc does not do by itself for pages below the top of a heap.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kannon-intake")


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    return trim


_TRIM = _malloc_trim()


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in the intake thread; the event loop serves other calls meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(
        _EXECUTOR, functools.partial(function, *args)
    )


def release_memory() -> bool:
    """Return free heap memory to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
