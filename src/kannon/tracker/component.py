"""The Tracker Component: serves the tracking routes with uvicorn inside the process's loop.

Lifecycle: load the verification keys (a database that cannot be read fails the start), bind the
listening socket ourselves (so port 0 works and a bind error is an exception, not uvicorn's
``sys.exit``), report ready, serve until ``life.stopping``, then let uvicorn finish open requests
and publish the events still in flight. The supervisor owns SIGTERM/SIGINT: uvicorn's own signal
capture is switched off, or it would replace the supervisor's handlers while serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from collections.abc import Callable, Generator
from datetime import datetime, timedelta
from functools import partial

import uvicorn

from kannon.bus.client import Bus
from kannon.config import Settings
from kannon.db.tracking_keys import verification_keys
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life
from kannon.tracker.app import TrackerRoutes, build_app
from kannon.tracker.client_ip import ClientAddress
from kannon.tracker.events import EventSink
from kannon.tracker.keys import KeyCache

log = logging.getLogger("kannon.tracker")

KEY_REFRESH_INTERVAL = timedelta(minutes=1)
UNKNOWN_KID_INTERVAL = timedelta(seconds=5)
SHUTDOWN_GRACE = timedelta(seconds=10)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals belong to the supervisor (see module doc).
        yield


async def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port ("" or "0.0.0.0" = all IPv4 interfaces)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve tracker host {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # Listening before uvicorn starts serving: early connections wait in the backlog.
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Tracker:
    """Open/click tracking over HTTP; ``port`` is the bound port once ``run`` is ready."""

    name = "tracker"

    def __init__(
        self,
        settings: Settings,
        pool: object,  # an asyncpg pool, handed only to kannon.db
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
            partial(verification_keys, pool), clock=clock, miss_interval=unknown_kid_interval
        )
        self.sink = EventSink(bus)
        self.routes = TrackerRoutes(
            self.keys, self.sink, ClientAddress(settings.tracker.trusted_proxies), clock
        )
        self.app = build_app(self.routes)

    async def run(self, life: Life) -> None:
        await self.keys.load("start")
        sock = await bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # Our handler, not uvicorn's own: its lines get the one format, control characters
            # escaped and repeats folded like every other line of the process.
            log_config=None,
            # The client address is ours to work out (trusted_proxies); uvicorn would otherwise
            # rewrite it from X-Forwarded-For for its own idea of trusted peers.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE.total_seconds()),
        )
        if importlib.util.find_spec("httptools") is None:
            # uvicorn falls back to h11 (pure Python): about half the hits per CPU-second.
            log.warning("httptools is not installed; the tracker parses HTTP in pure Python")
        server = _EmbeddedServer(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="tracker:uvicorn")
        refresher = asyncio.create_task(
            self.keys.refresh_forever(self.key_refresh, life.stopping), name="tracker:keys"
        )
        log.info(
            "tracker listening",
            extra={"kv": {"address": f"{self.host}:{self.port}", "keys": len(self.keys.kids)}},
        )
        life.ready()
        stop_waiter = asyncio.create_task(life.stopping.wait())
        try:
            await asyncio.wait({serving, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if serving.done():
                serving.result()  # re-raise why uvicorn stopped
                raise RuntimeError("tracker HTTP server stopped on its own")
        finally:
            stop_waiter.cancel()
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            sock.close()
            await self.sink.drain(SHUTDOWN_GRACE.total_seconds())
            log.info("tracker stopped")
