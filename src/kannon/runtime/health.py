"""Per-process HTTP endpoints: `/healthz` (JSON, 200 only when everything is ready and healthy)
and `/metrics` (Prometheus text format).

Deliberately a few lines of asyncio rather than a web framework: every process has it, the
SMTPSender included, and it must not drag the Tracker's HTTP stack into processes that don't
serve HTTP otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("kannon.health")

Check = Callable[[], Awaitable[None]]


class HealthRegistry:
    """Named health checks; a check raises to report a failure."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._ready: dict[str, Callable[[], bool]] = {}

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def add_readiness(self, name: str, is_ready: Callable[[], bool]) -> None:
        self._ready[name] = is_ready

    async def evaluate(self, timeout: float = 5.0) -> tuple[bool, dict[str, str]]:
        results: dict[str, str] = {}
        for name, is_ready in self._ready.items():
            results[f"component:{name}"] = "ok" if is_ready() else "not ready"

        async def run(name: str, check: Check) -> None:
            try:
                await asyncio.wait_for(check(), timeout)
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"failing: {exc or type(exc).__name__}"

        await asyncio.gather(*(run(n, c) for n, c in self._checks.items()))
        return all(v == "ok" for v in results.values()), results


class HealthServer:
    def __init__(self, registry: HealthRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint listening", extra={"kv": {"address": f"{self.host}:{self.port}"}})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = (
                    "405 Method Not Allowed",
                    "text/plain",
                    b"method not allowed\n",
                )
            elif path == "/healthz":
                ok, results = await self.registry.evaluate()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype = "application/json"
                body = json.dumps({"status": "ok" if ok else "failing", "checks": results}).encode()
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
