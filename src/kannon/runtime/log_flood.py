"""Keeps an outage from flooding the logs: one line per kind of warning or error per interval.

During a 30 s PostgreSQL outage every consumer handler, poll cycle and health check fails, and
each used to log its own traceback: thousands of lines that bury the one that matters. The
`FloodFilter` on the process's log handler lets the first WARNING-or-worse record of a kind
through (with its traceback) and holds back the others of that kind for `interval` seconds; the
next one after that carries `repeated=<n>`, the count held back, and kinds that went quiet are
summed up in a line of their own as soon as anything else is logged. A kind is the logger, the
message template and the exception type: the same failure with other details is one kind.
Records below WARNING (a line per delivered Envelope, say) always pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL = 30.0
_SUMMARY = "_kannon_flood_summary"

Key = tuple[str, int, str, str]


@dataclass
class _Window:
    opened: float
    held: int = 0


class FloodFilter(logging.Filter):
    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._windows: dict[Key, _Window] = {}
        self._lock = threading.Lock()
        self.emit: Callable[[logging.LogRecord], object] | None = None
        """Where summaries of quiet kinds go (the handler's `handle`); set by `install`."""

    @staticmethod
    def key(record: logging.LogRecord) -> Key:
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        return (record.name, record.levelno, str(record.msg), exc_type)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False) or record.levelno < logging.WARNING:
            self._flush_quiet()
            return True
        now = self._clock()
        key = self.key(record)
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.opened < self.interval:
                window.held += 1
                return False
            held = window.held if window is not None else 0
            self._windows[key] = _Window(opened=now)
        if held:
            _add_kv(record, "repeated", held)
        self._flush_quiet()
        return True

    def _flush_quiet(self) -> None:
        """Summarise kinds whose window closed with records held back and nothing since."""
        if not self._windows:
            # No warning in the last interval, the usual case: every info line passes here.
            # (A window opened meanwhile by another thread is looked at with the next record.)
            return
        now = self._clock()
        due: list[tuple[Key, int]] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if now - window.opened >= self.interval:
                    if window.held:
                        due.append((key, window.held))
                    del self._windows[key]
        if self.emit is None:
            return
        for (name, level, msg, exc_type), held in due:
            summary = logging.LogRecord(
                name, level, __file__, 0, msg + " (repeats held back)", None, None
            )
            setattr(summary, _SUMMARY, True)
            kv: dict[str, object] = {"repeated": held, "interval_s": self.interval}
            if exc_type:
                kv["exc_type"] = exc_type
            summary.kv = kv
            self.emit(summary)


def _add_kv(record: logging.LogRecord, key: str, value: object) -> None:
    kv = getattr(record, "kv", None)
    record.kv = {**kv, key: value} if isinstance(kv, dict) else {key: value}


def install(handler: logging.Handler, interval: float = DEFAULT_INTERVAL) -> FloodFilter:
    """Put a FloodFilter on `handler`; its summaries go through the same handler."""
    flood = FloodFilter(interval)
    flood.emit = handler.handle
    handler.addFilter(flood)
    return flood
