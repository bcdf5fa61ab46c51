"""The wall clock, read at the edges only: Components take a `clock` callable defaulting to
`utc_now`, so tests move time instead of sleeping, and pure code receives `now` as an argument."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)
