"""The Tracker Component: serves the tracking routes inside the process's loop, through
:class:`kannon.runtime.http_server.HttpServer` like the api's HTTP listener (the socket bound
by us, signals left to the supervisor).

Lifecycle: load the verification keys (a database that cannot be read fails the start), listen,
report ready, serve until ``life.stopping``, then let the server finish open requests and publish
the events still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from kannon.bus.client import Bus
from kannon.config import Settings
from kannon.db.database import Database
from kannon.db.tracking_keys import verification_keys
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life
from kannon.runtime.http_server import HttpServer
from kannon.tracker.app import TrackerRoutes, build_app
from kannon.tracker.client_ip import ClientAddress
from kannon.tracker.events import EventSink
from kannon.tracker.keys import KeyCache

log = logging.getLogger("kannon.tracker")

KEY_REFRESH_INTERVAL = timedelta(minutes=1)
UNKNOWN_KID_INTERVAL = timedelta(seconds=5)
SHUTDOWN_GRACE = timedelta(seconds=10)


class Tracker:
    """Open/click tracking over HTTP; ``port`` is the bound port once ``run`` is ready."""

    name = "tracker"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        *,
        clock: Callable[[], datetime] = utc_now,
        key_refresh: timedelta = KEY_REFRESH_INTERVAL,
        unknown_kid_interval: timedelta = UNKNOWN_KID_INTERVAL,
    ) -> None:
        self.settings = settings
        self.host = settings.tracker.host
        self.port = settings.tracker.port
        self.key_refresh = key_refresh
        self.keys = KeyCache(
            partial(verification_keys, db), clock=clock, miss_interval=unknown_kid_interval
        )
        self.sink = EventSink(bus)
        self.routes = TrackerRoutes(
            self.keys, self.sink, ClientAddress(settings.tracker.trusted_proxies), clock
        )
        self.app = build_app(self.routes)

    async def run(self, life: Life) -> None:
        await self.keys.load("start")
        http = HttpServer(self.app, name="tracker", grace=SHUTDOWN_GRACE.total_seconds())
        self.port = await http.start(self.host, self.port)
        refresher = asyncio.create_task(
            self.keys.refresh_forever(self.key_refresh, life.stopping), name="tracker:keys"
        )
        log.info(
            "tracker listening",
            extra={"kv": {"address": f"{self.host}:{self.port}", "keys": len(self.keys.kids)}},
        )
        life.ready()
        stop_waiter = asyncio.create_task(life.stopping.wait())
        down = asyncio.create_task(http.wait_stopped())
        try:
            await asyncio.wait({down, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if down.done():
                down.result()  # raises why the server stopped on its own
        finally:
            stop_waiter.cancel()
            down.cancel()
            await http.stop()
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await self.sink.drain(SHUTDOWN_GRACE.total_seconds())
            log.info("tracker stopped")
