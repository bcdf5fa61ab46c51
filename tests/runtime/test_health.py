"""The per-process /healthz and /metrics endpoint over real HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from kannon.runtime.health import HealthRegistry, HealthServer


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_healthz_reports_each_check_and_metrics_are_served() -> None:
    registry = HealthRegistry()
    state = {"db_ok": True, "ready": False}

    async def db() -> None:
        if not state["db_ok"]:
            raise RuntimeError("connection refused")

    registry.add_check("db", db)
    registry.add_readiness("api", lambda: state["ready"])
    server = HealthServer(registry, "127.0.0.1", 0)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = await asyncio.to_thread(_get, base + "/healthz")
        assert status == 503
        assert json.loads(body)["checks"] == {"component:api": "not ready", "db": "ok"}
        state["ready"] = True
        status, body = await asyncio.to_thread(_get, base + "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        state["db_ok"] = False
        status, body = await asyncio.to_thread(_get, base + "/healthz")
        assert status == 503
        assert json.loads(body)["checks"]["db"] == "failing: connection refused"
        status, body = await asyncio.to_thread(_get, base + "/metrics")
        assert status == 200 and b"python_info" in body
        status, _ = await asyncio.to_thread(_get, base + "/nope")
        assert status == 404
    finally:
        await server.close()
