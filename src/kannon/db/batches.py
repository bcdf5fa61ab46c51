"""Writing a Batch: its `messages` row, its transient template and all its Deliveries at once.

Everything happens in ONE transaction, so a failure at any point (a violated constraint, a lost
connection) leaves nothing behind — no orphan template, no Batch without its Deliveries, no
half-written recipient list. Deliveries are streamed with COPY in CSV form: one round trip for
any number of rows, and text CSV lets PostgreSQL parse the jsonb `fields` itself (asyncpg's
binary COPY has no encoder for the pool's text-format jsonb codec).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime

import asyncpg

from kannon.db.domains import to_db_time
from kannon.db.templates import insert_template
from kannon.model.batch import BatchPlan, Delivery
from kannon.model.template import Template

TO_VALIDATE = "to_validate"
_POOL_COLUMNS = [
    "email",
    "status",
    "scheduled_time",
    "original_scheduled_time",
    "message_id",
    "fields",
    "domain",
]


def _rows(plan: BatchPlan) -> Iterator[tuple[str, str, str, str, str, str, str]]:
    scheduled = to_db_time(plan.scheduled_time).isoformat(sep=" ")
    empty = "{}"
    dumps = json.dumps
    batch_id = plan.batch_id
    domain = plan.domain
    delivery: Delivery
    for delivery in plan.deliveries:
        fields = delivery.fields
        yield (
            delivery.email,
            TO_VALIDATE,
            scheduled,
            scheduled,
            batch_id,
            dumps(dict(fields), ensure_ascii=False) if fields else empty,
            domain,
        )


def deliveries_csv(plan: BatchPlan) -> bytes:
    """The Deliveries as PostgreSQL CSV (`\\n` line ends; quoting by the csv module's rules,
    which are PostgreSQL's: `"` doubled inside quoted values)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(_rows(plan))
    return buffer.getvalue().encode("utf-8")


async def create_batch(
    pool: asyncpg.Pool, plan: BatchPlan, transient_template: Template | None, now: datetime
) -> None:
    """Write the Batch, its transient template (if any) and its Deliveries, all or nothing."""
    data = deliveries_csv(plan) if plan.deliveries else b""
    async with pool.acquire() as conn, conn.transaction():
        if transient_template is not None:
            await insert_template(conn, transient_template)
        await conn.execute(
            """INSERT INTO messages (message_id, subject, sender_email, sender_alias, template_id,
                                     domain, attachments, headers, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            plan.batch_id,
            plan.subject,
            plan.sender_email,
            plan.sender_alias,
            plan.template_id,
            plan.domain,
            plan.attachments,
            plan.headers,
            to_db_time(now),
        )
        if data:
            await conn.copy_to_table(
                "sending_pool_emails",
                source=io.BytesIO(data),
                columns=_POOL_COLUMNS,
                format="csv",
            )
