"""The process-wide Database (an asyncpg connection pool) with JSON codecs and a health check.

In code the connection pool is a `Database` and the variable holding it `db`: "pool" alone means
the Pool of Deliveries (CONTEXT.md), and the SMTPSender's reused connections are SMTP sessions
(ADR 0051).

Connections carry no session state from one acquisition to the next: every transaction is a
managed `conn.transaction()` block, advisory locks are transaction-level
(`pg_advisory_xact_lock`, released at commit) or live on a dedicated connection (the migrations
runner's session lock), and nothing LISTENs, SETs session variables or keeps cursors open.
So a released connection does not need asyncpg's default reset query (advisory unlock all,
CLOSE ALL, UNLISTEN *, RESET ALL): that was one extra round trip per release, about 6 % of the
standalone process's CPU in the pipeline benchmark. asyncpg still rolls back a transaction left
open on release (it does that before calling our reset), so an aborted handler cannot leak one.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import asyncpg
import asyncpg.exceptions as pg_errors

Database: TypeAlias = asyncpg.Pool
"""The process's connection pool to PostgreSQL, as every repository function takes it."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns (fields, headers, attachments, stats data) are exchanged as Python objects.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release hook: nothing to undo (see the module docstring), so no round trip."""


async def open_database(url: str, *, min_size: int = 1, max_size: int = 10) -> Database:
    """Open the Database; raises the driver's error when the server cannot be reached."""
    db: Database = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
    )
    return db


async def check_database(db: Database) -> None:
    """Health check: one round trip; raises when the database does not answer."""
    async with db.acquire(timeout=5) as conn:
        value: Any = await conn.fetchval("SELECT 1", timeout=5)
    if value != 1:
        raise RuntimeError(f"database answered SELECT 1 with {value!r}")


# Server-side errors that say "not now" rather than "never": the server is going down, starting,
# out of connection slots, or (after a failover) a read-only standby.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, timed out (TimeoutError is an OSError)
    pg_errors.PostgresConnectionError,  # SQLSTATE class 08, and "connection was closed"
    pg_errors.AdminShutdownError,  # 57P01
    pg_errors.CrashShutdownError,  # 57P02
    pg_errors.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    pg_errors.TooManyConnectionsError,  # 53300
    pg_errors.ReadOnlySQLTransactionError,  # 25006: connected to a standby
)
# asyncpg raises plain InterfaceErrors with these texts for connections and pools that are gone;
# every other InterfaceError is a misuse of the driver, i.e. a bug.
_GONE_TEXTS = ("connection is closed", "pool is closing", "pool is closed")


def is_outage(exc: BaseException) -> bool:
    """True when `exc` (or what it was raised from) says the database is unreachable or not
    serving right now, so a caller should retry later — not that the request or our code is wrong.

    Covers connection refused / reset / timed out (OSError, TimeoutError included), connections
    lost mid-query, pool acquisition on a closed pool, and the server's own "cannot connect now",
    shutdown and too-many-connections answers. Constraint violations, syntax errors, data errors
    and driver misuse are not outages.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _OUTAGE_ERRORS):
            return True
        if isinstance(current, pg_errors.InterfaceError) and any(
            text in str(current) for text in _GONE_TEXTS
        ):
            return True
        current = current.__cause__
    return False
