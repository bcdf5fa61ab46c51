"""The composition root: builds the selected Components with exactly the resources each needs,
then runs them under the supervisor with the process's health endpoint.

This is the only module that knows every Component. Components never import each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from kannon.config import Settings
from kannon.runtime.component import Component
from kannon.runtime.health import HealthRegistry, HealthServer
from kannon.runtime.resources import Resources
from kannon.runtime.supervisor import supervise

log = logging.getLogger("kannon.app")

COMPONENT_ORDER = ("api", "validator", "dispatcher", "sender", "smtp", "tracker", "stats")

Builder = Callable[[Settings, Resources], Awaitable[Component]]


def _builders() -> dict[str, Builder]:
    """Builders of the Components that exist; imported lazily so a process loads only its own."""
    builders: dict[str, Builder] = {}

    async def api(settings: Settings, resources: Resources) -> Component:
        from kannon.api.component import ApiComponent

        return ApiComponent(settings, await resources.pool())

    async def validator(settings: Settings, resources: Resources) -> Component:
        from kannon.validator.component import Validator

        return Validator(settings, await resources.pool(), await resources.bus())

    async def dispatcher(settings: Settings, resources: Resources) -> Component:
        from kannon.dispatcher.component import Dispatcher

        return Dispatcher(settings, await resources.pool(), await resources.bus())

    async def sender(settings: Settings, resources: Resources) -> Component:
        from kannon.smtp_sender.component import SmtpSender

        # The SMTPSender gets the bus and nothing else: it never touches the database.
        return SmtpSender(settings, await resources.bus())

    async def smtp(settings: Settings, resources: Resources) -> Component:
        from kannon.smtp_server.component import SmtpServer

        return SmtpServer(settings, await resources.bus())

    async def tracker(settings: Settings, resources: Resources) -> Component:
        from kannon.tracker.component import Tracker

        return Tracker(settings, await resources.pool(), await resources.bus())

    async def stats(settings: Settings, resources: Resources) -> Component:
        from kannon.stats.component import StatsWorker

        return StatsWorker(settings, await resources.pool(), await resources.bus())

    for name, builder in (
        ("api", api),
        ("validator", validator),
        ("dispatcher", dispatcher),
        ("sender", sender),
        ("smtp", smtp),
        ("tracker", tracker),
        ("stats", stats),
    ):
        builders[name] = builder
    return builders


def available_components() -> list[str]:
    """Components whose package is present in this build."""
    import importlib.util

    modules = {
        "api": "kannon.api.component",
        "validator": "kannon.validator.component",
        "dispatcher": "kannon.dispatcher.component",
        "sender": "kannon.smtp_sender.component",
        "smtp": "kannon.smtp_server.component",
        "tracker": "kannon.tracker.component",
        "stats": "kannon.stats.component",
    }
    found = []
    for name in COMPONENT_ORDER:
        try:
            spec = importlib.util.find_spec(modules[name])
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found.append(name)
    return found


async def run_components(
    settings: Settings,
    names: Sequence[str],
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[HealthServer], None] | None = None,
    grace: float = 30.0,
) -> int:
    """Build and run `names` in this process until a signal or a failure; returns the exit code."""
    health = HealthRegistry()
    resources = Resources(
        health,
        database_url=settings.database_url,
        nats_url=settings.nats_url,
        stream_replicas=settings.nats.stream_replicas,
    )
    server = HealthServer(health, settings.health.host, settings.health.port)
    builders = _builders()
    try:
        components = [await builders[name](settings, resources) for name in names]
        await server.start()
        resources.add_closer("health", server.close)
        if on_started is not None:
            on_started(server)
        log.info("starting components", extra={"kv": {"components": ",".join(names)}})
        outcome = await supervise(components, health=health, grace=grace, stop=stop)
        for name, exc in outcome.failures.items():
            log.error(
                "component ended with an error",
                extra={"kv": {"component": name, "error": repr(exc)}},
            )
        return outcome.exit_code
    finally:
        await resources.close()
