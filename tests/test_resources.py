"""Shared resources: the NATS connection's health check is there only when a Component that
needs NATS asked for it (the api only reads backlogs from it, ADR 0045)."""

from __future__ import annotations

from kannon.resources import Resources
from kannon.runtime.health import HealthRegistry


async def test_a_bus_asked_without_a_check_adds_none_until_a_component_needs_one(
    nats_url: str,
) -> None:
    health = HealthRegistry()
    resources = Resources(health, database_url=None, nats_url=nats_url)
    try:
        first = await resources.bus(health_check=False)
        assert "nats" not in health._checks
        second = await resources.bus()
        assert second is first
        assert "nats" in health._checks
    finally:
        await resources.close()
