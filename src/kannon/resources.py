"""Process-wide shared resources: one Database (the asyncpg connection pool) and one NATS
connection, created lazily on first use, each registering its health check, closed in reverse
order of creation.

Components never build these themselves: the composition root (`app.py`) hands each Component
what it needs, which keeps the SMTPSender provably free of the database layer. This module sits
beside `app.py`, above `db/`, `bus/` and `runtime/` in the layers (ADR 0051); it imports `db` and
`bus` lazily so that a process loads only the libraries its Components use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kannon.runtime.health import HealthRegistry

if TYPE_CHECKING:
    from kannon.bus.client import Bus
    from kannon.db.database import Database

log = logging.getLogger("kannon.resources")


class Resources:
    def __init__(
        self,
        health: HealthRegistry,
        *,
        database_url: str | None,
        nats_url: str | None,
        stream_replicas: int = 1,
        database_max_size: int = 10,
        max_payload: int | None = None,
    ) -> None:
        self.health = health
        self.database_url = database_url
        self.nats_url = nats_url
        self.stream_replicas = stream_replicas
        self.database_max_size = database_max_size
        self.max_payload = max_payload
        self._db: Database | None = None
        self._bus: Bus | None = None
        self._bus_checked = False
        self._lock = asyncio.Lock()
        self._closers: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    def add_closer(self, name: str, closer: Callable[[], Awaitable[None]]) -> None:
        """Register something to close at shutdown (closed after later-registered ones)."""
        self._closers.append((name, closer))

    async def database(self) -> Database:
        async with self._lock:
            if self._db is None:
                if not self.database_url:
                    raise RuntimeError("database_url is not configured")
                from kannon.db.database import check_database, open_database

                db = await open_database(self.database_url, max_size=self.database_max_size)
                self._db = db
                self.health.add_check("db", lambda: check_database(db))
                self.add_closer("db", db.close)
            return self._db

    async def bus(self, *, health_check: bool = True) -> Bus:
        """The shared NATS connection. `health_check=False` for a Component that only reads
        from NATS and works without it (the api's backlog figures): its process's /healthz then
        does not depend on NATS, unless another Component of the process asks with a check."""
        async with self._lock:
            if self._bus is None:
                if not self.nats_url:
                    raise RuntimeError("nats_url is not configured")
                from kannon.bus.client import Bus

                bus = await Bus.connect(self.nats_url)
                server_max = bus.nc.max_payload
                if self.max_payload is not None and server_max < self.max_payload:
                    # The API would accept Envelopes that can never be published (ADR 0021).
                    await bus.close()
                    raise RuntimeError(
                        f"nats.max_payload is {self.max_payload} bytes but the NATS server "
                        f"carries at most {server_max}: set nats.max_payload to {server_max} "
                        "or raise the server's max_payload to match"
                    )
                await bus.ensure_streams(replicas=self.stream_replicas)
                self._bus = bus
                self.add_closer("nats", bus.close)
            if health_check and not self._bus_checked:
                self._bus_checked = True
                self.health.add_check("nats", self._bus.check)
            return self._bus

    async def close(self, timeout: float = 10.0) -> None:
        while self._closers:
            name, closer = self._closers.pop()
            try:
                await asyncio.wait_for(closer(), timeout)
            except Exception:
                log.exception("closing %s failed", name)
        with contextlib.suppress(Exception):
            self._db = None
            self._bus = None
