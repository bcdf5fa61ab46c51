"""The `api` Component: one grpc.aio server with every service under both of its names.

Names: the original's (`pkg.kannon.mailer.apiv1.Mailer`, `pkg.kannon.admin.apiv1.Api`,
`pkg.kannon.admin.apiv1.HZService`, `kannon.StatsApiV1`, `kannon.stats.apiv2.StatsApiV2`) so
existing clients work unchanged, and the README's (`kannon.mailer.apiv1.MailerApiV1Service`,
`kannon.admin.apiv1.AdminApiV1Service`, `kannon.stats.apiv1.StatsApiV1Service`) so the documented
grpcurl commands work — the same handler objects behind both. The Webhooks and Suppression
services, which the original does not have, have only their README names. Plus
`grpc.health.v1.Health` and server reflection (v1alpha, the only version grpcio serves), so tools
need no .proto files. The same servicers also answer the Connect protocol and gRPC-Web on
`api.http_port` (:mod:`kannon.api.connect`, ADR 0030), behind the same :class:`CallGate`.

Lifecycle: bind both ports, start, `life.ready()`, serve until `life.stopping`, then report
NOT_SERVING and drain in-flight calls on both for up to :data:`DRAIN_GRACE` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kannon.api.admin import AdminService
from kannon.api.auth import AdminGuard, ApiKeyAuth, CallGate, DomainOrAdmin, EarlyAuth
from kannon.api.connect import build_app
from kannon.api.hz import HZService
from kannon.api.mailer import MailerService
from kannon.api.metrics import (
    JETSTREAM_ACK_PENDING,
    JETSTREAM_PENDING,
    JETSTREAM_REDELIVERED,
    POOL_DELIVERIES,
    POOL_OLDEST_SECONDS,
)
from kannon.api.send_body import add_mailer_to_server
from kannon.api.stats import StatsService
from kannon.api.suppression import SuppressionService
from kannon.api.webhooks import WebhooksService
from kannon.bus.subjects import SENDING_STREAM, STATS_STREAM
from kannon.config import Settings
from kannon.dashboard.app import with_dashboard
from kannon.db.dashboard import pool_statuses
from kannon.db.database import Database
from kannon.db.idempotency import delete_expired
from kannon.model.delivery import STATUSES
from kannon.pb.admin.apiv1 import adminapiv1_pb2_grpc, hz_pb2_grpc
from kannon.pb.aliases import (
    adminapiv1service_pb2,
    adminapiv1service_pb2_grpc,
    mailerapiv1service_pb2,
    statsapiv1service_pb2,
    statsapiv1service_pb2_grpc,
)
from kannon.pb.stats.apiv1 import statsapiv1_pb2_grpc
from kannon.pb.stats.apiv2 import statsapiv2_pb2_grpc
from kannon.pb.suppression.apiv1 import suppressionapiv1_pb2_grpc
from kannon.pb.webhooks.apiv1 import webhooksapiv1_pb2_grpc
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life, run_every
from kannon.runtime.http_server import HttpServer

if TYPE_CHECKING:
    from kannon.bus.client import Bus

log = logging.getLogger("kannon.api")

DRAIN_GRACE = 10.0  # seconds, as the original's shutdown timeout

MAILER_NAMES = ("pkg.kannon.mailer.apiv1.Mailer", "kannon.mailer.apiv1.MailerApiV1Service")
ADMIN_NAMES = ("pkg.kannon.admin.apiv1.Api", "kannon.admin.apiv1.AdminApiV1Service")
HZ_NAME = "pkg.kannon.admin.apiv1.HZService"
STATS_V1_NAMES = ("kannon.StatsApiV1", "kannon.stats.apiv1.StatsApiV1Service")
STATS_V2_NAME = "kannon.stats.apiv2.StatsApiV2"
# Kannon's own additions: one name only (the original had neither).
WEBHOOKS_NAME = "kannon.webhooks.apiv1.WebhooksApiV1Service"
SUPPRESSION_NAME = "kannon.suppression.apiv1.SuppressionApiV1Service"
SERVICE_NAMES = (
    *MAILER_NAMES,
    *ADMIN_NAMES,
    HZ_NAME,
    *STATS_V1_NAMES,
    STATS_V2_NAME,
    WEBHOOKS_NAME,
    SUPPRESSION_NAME,
)
HEALTH_NAME = "grpc.health.v1.Health"
# How often gRPC health re-checks the database.
HEALTH_INTERVAL = 5.0
# How often idempotency keys older than api.idempotency_window are deleted.
KEY_CLEANUP_INTERVAL = timedelta(minutes=10)
# How often the Pool's size by status is sampled into /metrics (ADR 0045).
POOL_SAMPLE_INTERVAL = timedelta(seconds=15)

# The alias services' stubs import only the original's message modules, never the alias files
# themselves; reflection serves from the default descriptor pool, so load those files into it.
ALIAS_FILES = (
    adminapiv1service_pb2.DESCRIPTOR,
    mailerapiv1service_pb2.DESCRIPTOR,
    statsapiv1service_pb2.DESCRIPTOR,
)

# The generated `add_*Servicer_to_server(servicer, server)` functions.
Register = Callable[[object, Any], None]


def listen_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{port}"


class ApiComponent:
    name = "api"

    def __init__(self, settings: Settings, db: Database, bus: Bus | None = None) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        """Only read: JetStream backlogs for /metrics and the dashboard (None without NATS)."""
        self.port: int | None = None
        """The bound port, known once `run` has called `life.ready()` (api.port 0 = any)."""
        self.http_port: int | None = None
        """The bound Connect/gRPC-Web port, known once ready (api.http_port 0 = any)."""
        self._hz: HZService | None = None
        self._auth = ApiKeyAuth(db)
        self._gate = CallGate(
            self._auth,
            settings.api.admin_token,
            api_key_services=(*MAILER_NAMES, *STATS_V1_NAMES, STATS_V2_NAME),
            admin_services=ADMIN_NAMES,
            either_services=(WEBHOOKS_NAME, SUPPRESSION_NAME),
        )
        self._services: dict[str, object] = {}
        """Service name → servicer, for both listeners."""

    def _server(self) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
        api = self.settings.api
        size = api.max_message_size
        auth = self._auth
        server = grpc.aio.server(
            # Refuses calls without valid credentials before their body is read.
            interceptors=[EarlyAuth(self._gate)],
            # Bounds the calls (and so the request messages) held in memory at once.
            maximum_concurrent_rpcs=api.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                # grpcio enables SO_REUSEPORT by default, so a second server on a taken port
                # would start and silently share it; an operator wants the boot error instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        mailer = MailerService(self.settings, self.db, auth)
        admin = AdminService(self.settings, self.db)
        stats = StatsService(self.db, auth)
        suppression = SuppressionService(self.db, DomainOrAdmin(auth, AdminGuard(api.admin_token)))
        hz = self._hz = HZService(self.db)
        webhooks = WebhooksService(self.settings, self.db, auth)
        for name in MAILER_NAMES:
            # The send requests' Recipients are decoded a chunk at a time (ADR 0059).
            add_mailer_to_server(mailer, server, name)
        registrations: list[tuple[Register, object]] = [
            (adminapiv1_pb2_grpc.add_ApiServicer_to_server, admin),
            (adminapiv1service_pb2_grpc.add_AdminApiV1ServiceServicer_to_server, admin),
            (hz_pb2_grpc.add_HZServiceServicer_to_server, hz),
            (statsapiv1_pb2_grpc.add_StatsApiV1Servicer_to_server, stats),
            (statsapiv1service_pb2_grpc.add_StatsApiV1ServiceServicer_to_server, stats),
            (statsapiv2_pb2_grpc.add_StatsApiV2Servicer_to_server, stats),
            (webhooksapiv1_pb2_grpc.add_WebhooksApiV1ServiceServicer_to_server, webhooks),
            (
                suppressionapiv1_pb2_grpc.add_SuppressionApiV1ServiceServicer_to_server,
                suppression,
            ),
        ]
        for register, servicer in registrations:
            register(servicer, server)
        self._services = {
            **dict.fromkeys(MAILER_NAMES, mailer),
            **dict.fromkeys(ADMIN_NAMES, admin),
            HZ_NAME: hz,
            **dict.fromkeys(STATS_V1_NAMES, stats),
            STATS_V2_NAME: stats,
            WEBHOOKS_NAME: webhooks,
        }
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, HEALTH_NAME, reflection.SERVICE_NAME), server
        )
        return server, health_servicer

    async def _follow_database(self, life: Life, servicer: health.aio.HealthServicer) -> None:
        """Keep gRPC health in step with the database until stopping: a Kubernetes gRPC probe
        then takes an API that cannot reach PostgreSQL out of rotation."""
        assert self._hz is not None
        serving = True
        while not await life.sleep(HEALTH_INTERVAL):
            failing = await self._hz.failing_checks()
            if bool(failing) == serving:
                serving = not failing
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for service in ("", *SERVICE_NAMES):
                    await servicer.set(service, status)
                log.warning("gRPC health changed", extra={"kv": {"serving": serving, **failing}})

    async def _forget_idempotency_keys(self) -> None:
        await delete_expired(self.db, utc_now() - self.settings.api.idempotency_window)

    async def _sample_pool(self) -> None:
        now = utc_now()
        found = {s.status: s for s in await pool_statuses(self.db, None)}
        # Every status, so one that empties reports 0 rather than vanishing.
        for status in sorted({*STATUSES, *found}):
            sample = found.get(status)
            POOL_DELIVERIES.labels(status).set(0 if sample is None else sample.count)
            oldest = None if sample is None else sample.oldest
            POOL_OLDEST_SECONDS.labels(status).set(
                0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)
            )

    async def _sample_consumers(self) -> None:
        if self.bus is None:
            return
        for state in await self.bus.consumer_states((SENDING_STREAM, STATS_STREAM)):
            JETSTREAM_PENDING.labels(state.stream, state.durable).set(state.pending)
            JETSTREAM_ACK_PENDING.labels(state.stream, state.durable).set(state.ack_pending)
            JETSTREAM_REDELIVERED.labels(state.stream, state.durable).set(state.redelivered)

    async def _sample(self) -> None:
        await self._sample_pool()
        await self._sample_consumers()

    async def run(self, life: Life) -> None:
        api = self.settings.api
        server, health_servicer = self._server()
        address = listen_address(api.host, api.port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"api: cannot listen on {address} (api.host / api.port)") from exc
        if not port:  # older grpcio versions return 0 instead of raising
            raise RuntimeError(f"api: cannot listen on {address} (api.host / api.port)")
        self.port = port
        connect_app = build_app(
            self._services,
            self._gate,
            max_bytes=api.max_message_size,
            max_concurrent=api.max_concurrent_rpcs,
        )
        http = HttpServer(
            # The dashboard shares the port under /dashboard/ (ADR 0043).
            with_dashboard(self.settings, self.db, connect_app, self.bus),
            name="api-http",
            grace=DRAIN_GRACE,
        )
        try:
            self.http_port = await http.start(api.host, api.http_port)
        except OSError as exc:
            await server.stop(None)
            raise RuntimeError(
                f"api: cannot listen on {listen_address(api.host, api.http_port)} "
                f"(api.host / api.http_port): {exc}"
            ) from exc
        await server.start()
        try:
            for service in ("", *SERVICE_NAMES):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
            if api.admin_token is None:
                log.warning(
                    "api.admin_token is not set: the Admin API answers loopback clients only; "
                    "set K_API_ADMIN_TOKEN to manage Domains from elsewhere"
                )
            log.info("gRPC API listening on %s", listen_address(api.host, port))
            log.info(
                "Connect and gRPC-Web API listening on %s",
                listen_address(api.host, self.http_port),
            )
            life.ready()
            async with asyncio.TaskGroup() as tasks:
                http_down = tasks.create_task(http.wait_stopped())
                tasks.create_task(
                    run_every(
                        life,
                        KEY_CLEANUP_INTERVAL,
                        self._forget_idempotency_keys,
                        lambda exc: log.warning("idempotency key cleanup failed: %s", exc),
                    )
                )
                tasks.create_task(
                    run_every(
                        life,
                        POOL_SAMPLE_INTERVAL,
                        self._sample,
                        lambda exc: log.warning("pool and consumer sampling failed: %s", exc),
                    )
                )
                await self._follow_database(life, health_servicer)
                http_down.cancel()
        finally:
            await health_servicer.enter_graceful_shutdown()
            await asyncio.gather(server.stop(DRAIN_GRACE), http.stop())
