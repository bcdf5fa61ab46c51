"""A database outage answers UNAVAILABLE (clients retry), not INTERNAL; caller mistakes keep
their codes; when the database is back the same API serves again.

The API runs against a PostgreSQL of its own that the test stops and restarts.
"""

from __future__ import annotations

import asyncpg
import grpc

from kannon.db.database import is_outage, open_database
from kannon.db.embedded import EmbeddedPostgres, start_postgres
from kannon.db.migrate import migrate
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from tests.api.api_test_support import (
    admin_md,
    html_request,
    make_settings,
    running_api,
    status_of,
    tenant,
)

DOMAIN = "outage.test"


async def test_a_stopped_database_answers_unavailable_and_recovers(
    own_postgres: EmbeddedPostgres,
) -> None:
    await migrate(own_postgres.url())
    pool = await open_database(own_postgres.url(), max_size=2)
    try:
        async with running_api(make_settings(), pool) as api:
            creds = await tenant(api, DOMAIN)
            ok = await api.mailer().SendHTML(html_request(DOMAIN, ["a@x.test"]), metadata=creds)
            assert ok.accepted_count == 1

            own_postgres.stop()

            # Authentication needs the database: the call cannot even be authorized.
            code, details = await status_of(
                api.mailer().SendHTML(html_request(DOMAIN, ["b@x.test"]), metadata=creds)
            )
            assert code == grpc.StatusCode.UNAVAILABLE, details
            assert "retry later" in details
            code, details = await status_of(
                api.admin().GetDomains(admin_pb.GetDomainsReq(), metadata=admin_md())
            )
            assert code == grpc.StatusCode.UNAVAILABLE, details
            # A mistake the caller can fix keeps its code, outage or not.
            code, _ = await status_of(
                api.admin().GetDomains(admin_pb.GetDomainsReq(), metadata=admin_md("wrong"))
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED

            restarted = start_postgres(own_postgres.data_dir, port=own_postgres.port, fast=True)
            own_postgres.process = restarted.process
            res = await api.mailer().SendHTML(html_request(DOMAIN, ["c@x.test"]), metadata=creds)
            assert res.accepted_count == 1
    finally:
        await pool.close()
    conn = await asyncpg.connect(own_postgres.url())
    try:
        emails = await conn.fetch("SELECT email FROM sending_pool_emails ORDER BY email")
    finally:
        await conn.close()
    # The refused call wrote nothing; the others each wrote their Delivery.
    assert [r["email"] for r in emails] == ["a@x.test", "c@x.test"]


def test_outage_classification_keeps_bugs_and_data_errors_apart() -> None:
    import asyncpg.exceptions as pg

    assert is_outage(ConnectionRefusedError(111, "Connection refused"))
    assert is_outage(TimeoutError())
    assert is_outage(pg.ConnectionDoesNotExistError("connection was closed"))
    assert is_outage(pg.CannotConnectNowError("the database system is starting up"))
    assert is_outage(pg.AdminShutdownError("terminating connection"))
    assert is_outage(pg.TooManyConnectionsError("too many clients"))
    assert is_outage(pg.InterfaceError("pool is closing"))
    wrapped = RuntimeError("while writing the Batch")
    wrapped.__cause__ = ConnectionResetError()
    assert is_outage(wrapped)

    assert not is_outage(ValueError("a bug"))
    assert not is_outage(KeyError("a bug"))
    assert not is_outage(pg.UniqueViolationError("duplicate key"))
    assert not is_outage(pg.CheckViolationError("check"))
    assert not is_outage(pg.InterfaceError("cannot perform operation: another operation"))
    assert not is_outage(pg.InvalidPasswordError("password authentication failed"))
