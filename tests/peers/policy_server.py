"""A real https server on loopback serving an MTA-STS policy file (RFC 8461 §3.3) with a
certificate from a test CA (:mod:`tests.peers.tls`).

    server = await PolicyServer(identity).start()
    server.policy = "version: STSv1\\nmode: enforce\\nmx: mx.example.test\\nmax_age: 86400\\n"
    ...                      # Settings: sender.mta_sts.policy_port = server.port
    await server.stop()

It answers every `GET /.well-known/mta-sts.txt` with `status`, `content_type` and `policy` as
they are at that moment (a test may change them between sends), anything else with 404, and
records each request's path and Host header in `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.peers.tls import TlsIdentity

POLICY_PATH = "/.well-known/mta-sts.txt"
REASONS = {200: "OK", 301: "Moved Permanently", 404: "Not Found", 500: "Internal Server Error"}


class PolicyServer:
    def __init__(self, tls: TlsIdentity, host: str = "127.0.0.1") -> None:
        self.tls = tls
        self.host = host
        self.port = 0
        self.policy = ""
        self.status = 200
        self.content_type = "text/plain"
        self.requests: list[tuple[str, str]] = []
        """(path, Host header) of every request, in order."""
        self._server: asyncio.Server | None = None

    async def start(self) -> PolicyServer:
        self._server = await asyncio.start_server(
            self._serve, self.host, 0, ssl=self.tls.server_context()
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    @property
    def fetches(self) -> int:
        return sum(1 for path, _ in self.requests if path == POLICY_PATH)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            )
            self.requests.append((path, headers.get("host", "")))
            status, body = 404, b"not found\n"
            if method == "GET" and path == POLICY_PATH:
                status, body = self.status, self.policy.encode("utf-8")
            writer.write(
                (
                    f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                    f"Content-Type: {self.content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
                + body
            )
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass  # a client that hung up or spoke nonsense gets nothing
        finally:
            writer.close()
