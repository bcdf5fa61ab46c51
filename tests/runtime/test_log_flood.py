"""The flood filter: one line per kind of warning per interval, with the count of the rest."""

from __future__ import annotations

import logging

from kannon.runtime.log_flood import FloodFilter
from tests.support import Ticks


def _record(
    msg: str, level: int = logging.ERROR, exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    record = logging.LogRecord("kannon.test", level, __file__, 1, msg, None, exc_info)
    # `kv` is the structured-fields attribute the log formatter reads (set as `extra={"kv": …}`).
    vars(record)["kv"] = {"seq": 1}
    return record


def _filter(interval: float = 30.0) -> tuple[FloodFilter, Ticks, list[logging.LogRecord]]:
    clock = Ticks()
    flood = FloodFilter(interval, clock=clock)
    summaries: list[logging.LogRecord] = []
    flood.emit = summaries.append
    return flood, clock, summaries


def test_a_burst_of_one_kind_logs_once_then_once_more_with_the_count() -> None:
    flood, clock, summaries = _filter()
    outage = ConnectionRefusedError("refused")
    passed = [flood.filter(_record("cycle failed", exc=outage)) for _ in range(4000)]
    assert passed.count(True) == 1 and passed[0]
    clock.now = 30.0
    again = _record("cycle failed", exc=ConnectionRefusedError("other details"))
    assert flood.filter(again)
    assert vars(again)["kv"] == {"seq": 1, "repeated": 3999}
    assert summaries == []


def test_kinds_are_told_apart_by_logger_message_level_and_exception_type() -> None:
    flood, _, _ = _filter()
    assert flood.filter(_record("cycle failed", exc=ConnectionRefusedError()))
    assert flood.filter(_record("cycle failed", exc=KeyError("bug")))
    assert flood.filter(_record("fetch failed", level=logging.WARNING))
    assert flood.filter(_record("cycle failed", level=logging.WARNING))
    assert not flood.filter(_record("cycle failed", exc=KeyError("another")))


def test_info_lines_always_pass_and_flush_kinds_that_went_quiet() -> None:
    flood, clock, summaries = _filter()
    for _ in range(10):
        flood.filter(_record("handler failed", level=logging.WARNING))
    clock.now = 31.0
    assert all(flood.filter(_record("envelope handled", level=logging.INFO)) for _ in range(3))
    [summary] = summaries
    assert summary.levelno == logging.WARNING
    assert summary.getMessage() == "handler failed (repeats held back)"
    assert vars(summary)["kv"] == {"repeated": 9, "interval_s": 30.0}
    # Flushed once: the kind starts afresh.
    assert flood.filter(_record("handler failed", level=logging.WARNING))
    assert len(summaries) == 1
