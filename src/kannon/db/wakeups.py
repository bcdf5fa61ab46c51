"""Wake-ups between the Pool's stages, so a lone mail does not wait for two poll intervals.

Intake commits new Deliveries and `NOTIFY kannon_to_validate`; the Validator commits validated
ones and `NOTIFY kannon_scheduled`. The Validator and the Dispatcher `LISTEN` on their channel
and cut their idle sleep short when it fires (ADR 0036). A notification carries nothing: it only
says "look now"; the claim queries stay the source of truth, and the idle interval stays the
fallback — a missed notification (listener connection lost in an outage, a server that drops
them) costs at most one interval, never a Delivery.

PostgreSQL delivers a NOTIFY at commit, so a woken worker always finds the rows that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from kannon.db.database import Database, is_outage

log = logging.getLogger("kannon.db")

TO_VALIDATE_CHANNEL = "kannon_to_validate"
"""New Deliveries were written (intake)."""
SCHEDULED_CHANNEL = "kannon_scheduled"
"""Deliveries became due for dispatch (validated)."""


async def notify(conn: asyncpg.Connection | Database, channel: str) -> None:
    """Wake whoever listens on `channel` (at commit, when `conn` is in a transaction)."""
    await conn.execute("SELECT pg_notify($1, '')", channel)


class Listener:
    """Sets `event` each time `channel` is notified, over one connection held from `pool`.

    `ensure()` (re)opens the connection when there is none or it was lost; callers run it before
    each idle wait, so an outage only turns the wake-ups off until the database is back. Loops
    that share a Listener share its one connection.
    """

    def __init__(self, db: Database, channel: str) -> None:
        self.db = db
        self.channel = channel
        self.event = asyncio.Event()
        self._conn: Any = None
        # Several loops may share one Listener (the Dispatcher's cycles, ADR 0061): one reopens
        # the connection, the others wait for it rather than each holding one of their own.
        self._opening = asyncio.Lock()

    def _wake(self, *_: object) -> None:
        self.event.set()

    async def ensure(self) -> None:
        async with self._opening:
            await self._ensure()

    async def _ensure(self) -> None:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return
        if conn is not None:
            self._conn = None
            with contextlib.suppress(Exception):
                await self.db.release(conn, timeout=1)
        try:
            conn = await self.db.acquire(timeout=5)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return
        try:
            await conn.add_listener(self.channel, self._wake)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self.db.release(conn, timeout=1)
            if not is_outage(exc):
                raise
            return
        self._conn = conn
        # Whatever was notified while nobody listened is found by the next cycle anyway.
        self.event.set()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.remove_listener(self.channel, self._wake)
        with contextlib.suppress(Exception):
            await self.db.release(conn, timeout=5)
