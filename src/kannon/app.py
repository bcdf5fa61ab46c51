"""The composition root: builds the selected Components with exactly the resources each needs,
then runs them under the supervisor with the process's health endpoint.

This is the only module that knows every Component. Components never import each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from kannon.config import ConfigError, Settings
from kannon.resources import Resources
from kannon.runtime.component import Component
from kannon.runtime.health import HealthRegistry, HealthServer
from kannon.runtime.process_group import ProcessGroup
from kannon.runtime.supervisor import supervise

log = logging.getLogger("kannon.app")

Builder = Callable[[Settings, Resources], Awaitable[Component]]


def _builders() -> dict[str, Builder]:
    """One builder per Component; imported lazily so a process loads only its own."""

    async def api(settings: Settings, resources: Resources) -> Component:
        from kannon.api.component import ApiComponent

        # NATS only for the backlogs the dashboard and /metrics show (ADR 0045): optional, and
        # neither its health nor its absence at boot stops the API from taking mail.
        bus = None
        if settings.nats_url:
            try:
                bus = await resources.bus(health_check=False)
            except Exception as exc:
                log.warning("api: no NATS connection, so no JetStream backlog figures: %s", exc)
        return ApiComponent(settings, await resources.database(), bus)

    async def validator(settings: Settings, resources: Resources) -> Component:
        from kannon.validator.component import Validator

        return Validator(settings, await resources.database(), await resources.bus())

    async def dispatcher(settings: Settings, resources: Resources) -> Component:
        from kannon.dispatcher.component import Dispatcher

        return Dispatcher(settings, await resources.database(), await resources.bus())

    async def sender(settings: Settings, resources: Resources) -> Component:
        from kannon.smtp_sender.component import SmtpSender

        # The SMTPSender gets the bus and nothing else: it never touches the database.
        return SmtpSender(settings, await resources.bus())

    async def smtp(settings: Settings, resources: Resources) -> Component:
        from kannon.smtp_server.component import SmtpServer

        return SmtpServer(settings, await resources.bus())

    async def tracker(settings: Settings, resources: Resources) -> Component:
        from kannon.tracker.component import Tracker

        return Tracker(settings, await resources.database(), await resources.bus())

    async def stats(settings: Settings, resources: Resources) -> Component:
        from kannon.stats.component import StatsWorker

        return StatsWorker(settings, await resources.database(), await resources.bus())

    async def webhooks(settings: Settings, resources: Resources) -> Component:
        from kannon.webhooks.component import WebhooksWorker

        return WebhooksWorker(settings, await resources.database(), await resources.bus())

    return {
        "api": api,
        "validator": validator,
        "dispatcher": dispatcher,
        "sender": sender,
        "smtp": smtp,
        "tracker": tracker,
        "stats": stats,
        "webhooks": webhooks,
    }


async def run_components(
    settings: Settings,
    names: Sequence[str],
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[HealthServer], None] | None = None,
    grace: float = 30.0,
    children: Sequence[ProcessGroup] = (),
) -> int:
    """Build and run `names` in this process until a signal or a failure; returns the exit code.

    `children` (standalone's other processes) run under the same supervisor, each as one
    Component, and their health is part of this process's /healthz.
    """
    health = HealthRegistry()
    resources = Resources(
        health,
        database_url=settings.database_url,
        nats_url=settings.nats_url,
        stream_replicas=settings.nats.stream_replicas,
        max_payload=settings.nats.max_payload,
    )
    server = HealthServer(health, settings.health.host, settings.health.port)
    builders = _builders()
    try:
        components: list[Component] = []
        for name in names:
            try:
                components.append(await builders[name](settings, resources))
            except ConfigError:
                raise
            except Exception as exc:
                # Unreachable database or NATS at boot: one clear line, not a traceback.
                log.error(
                    "cannot start component",
                    extra={"kv": {"component": name, "error": f"{type(exc).__name__}: {exc}"}},
                )
                return 1
        for child in children:
            components.append(child)
            health.add_check(child.name, child.check)
        await server.start()
        resources.add_closer("health", server.close)
        if on_started is not None:
            on_started(server)
        log.info(
            "starting components",
            extra={
                "kv": {
                    "components": ",".join(names),
                    "processes": ";".join("+".join(c.components) for c in children) or None,
                }
            },
        )
        outcome = await supervise(components, health=health, grace=grace, stop=stop)
        for name, failure in outcome.failures.items():
            log.error(
                "component ended with an error",
                extra={"kv": {"component": name, "error": repr(failure)}},
            )
        return outcome.exit_code
    finally:
        await resources.close()
