"""An ASGI application served by uvicorn inside a Component's event loop.

The socket is bound here (so port 0 works and a bind error is an exception, not uvicorn's
``sys.exit``); uvicorn's own signal capture is off, because signals belong to the supervisor;
stopping lets uvicorn finish open requests for up to the grace period. Used by the api's
Connect/gRPC-Web listener (ADR 0030) and the tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

log = logging.getLogger("kannon.http")


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
        raise OSError(f"cannot resolve listen host {host!r}")
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


class HttpServer:
    """One ASGI app on one socket; `port` is known once `start` returned."""

    def __init__(self, app: Any, *, name: str, grace: float = 10.0) -> None:
        self.app = app
        self.name = name
        self.grace = grace
        self.port: int | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self, host: str, port: int) -> int:
        self._sock = await bind_socket(host, port)
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # The process's own log handler, not uvicorn's: one format, control characters
            # escaped and repeats folded like every other line.
            log_config=None,
            # A Component works out client addresses itself (the tracker's trusted_proxies);
            # uvicorn would rewrite them from X-Forwarded-For for its own idea of trusted peers.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=int(self.grace),
        )
        if importlib.util.find_spec("httptools") is None:
            log.warning("httptools is not installed; %s parses HTTP in pure Python", self.name)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self._sock]), name=f"{self.name}:uvicorn"
        )
        return self.port

    async def wait_stopped(self) -> None:
        """Return (raising) if uvicorn stops on its own; tasks race this against stopping."""
        assert self._task is not None
        await asyncio.shield(self._task)
        raise RuntimeError(f"{self.name}: HTTP server stopped on its own")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
