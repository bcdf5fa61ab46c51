"""Timestamps at the database edge: the columns are `timestamp without time zone` holding UTC
wall-clock time (as the original's were); the rest of Kannon uses aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def to_db_time(value: datetime) -> datetime:
    """Aware (any zone) or naive-UTC datetime -> naive UTC, the form the columns hold."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def from_db_time(value: datetime) -> datetime:
    """A column's naive UTC value -> aware UTC."""
    return value.replace(tzinfo=UTC)
