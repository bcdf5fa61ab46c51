"""`kannon standalone`: every Component in one process, with its own nats-server child and, when
no `database_url` is configured, its own PostgreSQL child, both under the data directory.

Children are stopped (by PID) after the Components have drained, in reverse order of start.

Both children ask for a credential that only this user can read (ADR 0022): PostgreSQL the
superuser password in `postgres.password`, nats-server a per-start token in `nats.conf`, each
0600 in the data directory, alongside the 0600 `secret_key`. The endpoints printed at start show
URLs with their credentials masked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from pathlib import Path

from kannon.app import run_components
from kannon.bus.embedded import start_nats
from kannon.config import COMPONENTS, Settings, environment_of
from kannon.config.model import parse_process_groups
from kannon.config.values import mask_url
from kannon.db.embedded import EmbeddedPostgres, start_postgres
from kannon.db.migrate import migrate
from kannon.runtime.health import HealthServer
from kannon.runtime.process_group import ProcessGroup
from kannon.runtime.processes import write_private_file

log = logging.getLogger("kannon.standalone")


def _secret(data_dir: Path) -> str:
    """The HMAC secret for bounce addresses, generated once and kept with the data."""
    path = data_dir / "secret_key"
    if path.exists():
        path.chmod(0o600)
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    write_private_file(path, value + "\n")
    return value


def process_groups(spec: str, cores: int) -> list[list[str]]:
    """The Components of each of standalone's processes; the first group runs in standalone's
    own process. `auto` (ADR 0040): everything in one process on one core; with more, the
    SMTPSender — the most CPU per Delivery — in a second process."""
    if spec != "auto":
        return parse_process_groups(spec)
    if cores < 2:
        return [list(COMPONENTS)]
    return [[name for name in COMPONENTS if name != "sender"], ["sender"]]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _print_endpoints(
    settings: Settings, names: list[str], health: HealthServer, children: list[ProcessGroup]
) -> None:
    lines = []
    if "api" in names:
        lines.append(f"api      grpc://127.0.0.1:{settings.api.port} (gRPC, plaintext)")
        lines.append(
            f"api      http://127.0.0.1:{settings.api.http_port} (Connect and gRPC-Web, HTTP)"
        )
    if "tracker" in names:
        lines.append(f"tracker  http://127.0.0.1:{settings.tracker.port}")
    if "smtp" in names:
        lines.append(f"smtp     smtp://{settings.smtp.address} (inbound bounces)")
    lines.append(f"health   http://127.0.0.1:{health.port}/healthz  metrics /metrics")
    for child in children:
        lines.append(
            f"process  {'+'.join(child.components)} (pid {child.pid}): "
            f"http://127.0.0.1:{child.health_port}/healthz  metrics /metrics"
        )
    # The URLs carry the embedded servers' credentials: those stay in the 0600 files.
    lines.append(f"nats     {mask_url(settings.nats_url or '')}")
    lines.append(f"database {mask_url(settings.database_url or '')}")
    for line in lines:
        print(f"kannon standalone: {line}", flush=True)


async def run_standalone(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    data_dir = Path(settings.data_dir).expanduser().resolve()  # noqa: ASYNC240 - boot only
    data_dir.mkdir(parents=True, exist_ok=True)
    nats_server = await asyncio.to_thread(
        start_nats, data_dir / "nats", max_payload=settings.nats.max_payload
    )
    pg: EmbeddedPostgres | None = None
    try:
        update: dict[str, object] = {"nats_url": nats_server.url}
        if not settings.database_url:
            pg = await asyncio.to_thread(start_postgres, data_dir / "postgres")
            update["database_url"] = await pg.ensure_database("kannon")
        if not settings.secret_key:
            update["secret_key"] = _secret(data_dir)
        settings = settings.model_copy(update=update)
        assert settings.database_url is not None
        applied = await migrate(settings.database_url)
        if applied:
            log.info("migrations applied", extra={"kv": {"count": len(applied)}})
        own, *others = process_groups(settings.standalone.processes, usable_cores())
        environ = environment_of(settings)
        children = [ProcessGroup(group, environ) for group in others]
        names = [name for name in COMPONENTS if name in own]
        return await run_components(
            settings,
            names,
            stop=stop,
            on_started=lambda health: _print_endpoints(
                settings, [*names, *(n for c in children for n in c.components)], health, children
            ),
            children=children,
        )
    finally:
        if pg is not None:
            pg.stop()
        nats_server.stop()
        sys.stdout.flush()
