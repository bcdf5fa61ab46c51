"""Writing a Batch: its `messages` row, its transient template and all its Deliveries at once.

:func:`open_batch` opens the transaction and writes the Batch's rows; the caller then writes its
Deliveries a chunk at a time (:meth:`BatchWriter.copy`), so a large Batch never exists whole in
memory (ADR 0059). Leaving the block with an exception rolls everything back.
:func:`create_batch` does it all for a plan that holds its Deliveries.

Everything happens in ONE transaction, so a failure at any point (a violated constraint, a lost
connection) leaves nothing behind — no orphan template, no Batch without its Deliveries, no
half-written recipient list. Deliveries are streamed with COPY in CSV form: one round trip for
any number of rows, and text CSV lets PostgreSQL parse the jsonb `fields` itself (asyncpg's
binary COPY has no encoder for the pool's text-format jsonb codec). No value is ever NULL, so
CSV's "unquoted empty means NULL" rule never applies: every value is written quoted.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any

from kannon.db.database import Database
from kannon.db.idempotency import claim_key, set_response
from kannon.db.suppressions import suppressed_keys
from kannon.db.templates import insert_template
from kannon.db.times import to_db_time
from kannon.db.wakeups import TO_VALIDATE_CHANNEL, notify
from kannon.model.batch import REJECT_SUPPRESSED, BatchPlan
from kannon.model.idempotency import IdempotencyClaim
from kannon.model.template import Template
from kannon.model.tracking import TrackingPolicy

TO_VALIDATE = "to_validate"
_json_str = encode_basestring  # JSON string literal, non-ASCII kept as is
_POOL_COLUMNS = [
    "email",
    "fields",
    "status",
    "scheduled_time",
    "original_scheduled_time",
    "message_id",
    "domain",
    "tracking",
    "reject_reason",
]


def _quoted(value: str) -> str:
    """A CSV field in PostgreSQL's CSV syntax: always quoted, inner quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


def _fields_json(fields: Mapping[str, str]) -> str:
    # Equivalent to json.dumps(dict(fields), ensure_ascii=False) for a str -> str map, at a
    # fraction of the cost (no type dispatch; the C string encoder does the escaping).
    if not fields:
        return "{}"
    return "{" + ",".join([_json_str(k) + ":" + _json_str(v) for k, v in fields.items()]) + "}"


def deliveries_csv(plan: BatchPlan) -> bytes:
    """The Deliveries as PostgreSQL CSV rows in `_POOL_COLUMNS` order: those to send, then the
    suppressed ones with their `reject_reason` (the Validator rejects them, ADR 0027).

    Built by hand rather than with the csv module: the per-row work is two quoted fields and
    one shared tail of constants, which makes 100,000 rows several times cheaper to produce.
    """
    scheduled = _quoted(to_db_time(plan.scheduled_time).isoformat(sep=" "))
    head = (
        f",{TO_VALIDATE},{scheduled},{scheduled},{_quoted(plan.batch_id)},{_quoted(plan.domain)},"
    )
    # A Batch has a handful of distinct policies: each row shares one of a few tails.
    tails: dict[tuple[TrackingPolicy, str], str] = {}
    lines = []
    for deliveries, reason in ((plan.deliveries, ""), (plan.suppressed, REJECT_SUPPRESSED)):
        for delivery in deliveries:
            tail = tails.get((delivery.tracking, reason))
            if tail is None:
                tail = tails[delivery.tracking, reason] = (
                    head
                    + _quoted(json.dumps(delivery.tracking.to_json()))
                    + ","
                    + _quoted(reason)
                    + "\n"
                )
            lines.append(
                _quoted(delivery.email) + "," + _quoted(_fields_json(delivery.fields)) + tail
            )
    return "".join(lines).encode("utf-8")


class BatchWriter:
    """The open intake transaction of one Batch (:func:`open_batch`)."""

    def __init__(self, conn: Any, plan: BatchPlan, idempotency: IdempotencyClaim | None) -> None:
        self._conn = conn
        self._plan = plan
        self._idempotency = idempotency
        self.rows = 0
        """Pool rows written so far."""

    async def suppressed(self, keys: Sequence[str], now: datetime) -> set[str]:
        """Which of `keys` the Batch's Domain suppresses (:func:`suppressed_keys`)."""
        return await suppressed_keys(self._conn, self._plan.domain, keys, now)

    async def copy(self, data: bytes, rows: int) -> None:
        """Write `rows` Deliveries encoded by :func:`deliveries_csv`."""
        if not data:
            return
        await self._conn.copy_to_table(
            "sending_pool_emails", source=io.BytesIO(data), columns=_POOL_COLUMNS, format="csv"
        )
        self.rows += rows

    async def respond(self, response: bytes) -> None:
        """The response the idempotency key answers repeats with (known only at the end)."""
        if self._idempotency is not None:
            await set_response(self._conn, self._idempotency, response)


@asynccontextmanager
async def open_batch(
    db: Database,
    plan: BatchPlan,
    transient_template: Template | None,
    now: datetime,
    *,
    idempotency: IdempotencyClaim | None = None,
    idempotency_since: datetime | None = None,
) -> AsyncIterator[BatchWriter]:
    """Open the intake transaction and write the Batch's key claim, template and `messages`
    row; the block writes the Deliveries; committed when it ends, rolled back if it raises.

    With `idempotency`, its key row is written first (replacing one older than
    `idempotency_since`); `kannon.db.idempotency.KeyTaken` when another call holds the key,
    and then nothing is written.
    """
    async with db.acquire() as conn, conn.transaction():
        if idempotency is not None:
            assert idempotency_since is not None
            # First: a racing call with the same key waits here for the winner's commit.
            await claim_key(conn, idempotency, now, idempotency_since)
        if transient_template is not None:
            await insert_template(conn, transient_template)
        await conn.execute(
            """INSERT INTO messages (message_id, subject, sender_email, sender_alias, template_id,
                                     domain, attachments, headers, created_at, tracking,
                                     ip_pool)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            plan.batch_id,
            plan.subject,
            plan.sender_email,
            plan.sender_alias,
            plan.template_id,
            plan.domain,
            plan.attachments,
            plan.headers,
            to_db_time(now),
            plan.tracking.to_json(),
            plan.ip_pool,
        )
        writer = BatchWriter(conn, plan, idempotency)
        yield writer
        if writer.rows:
            # Delivered at commit: the Validator wakes to find the rows (ADR 0036).
            await notify(conn, TO_VALIDATE_CHANNEL)


async def create_batch(
    db: Database,
    plan: BatchPlan,
    transient_template: Template | None,
    now: datetime,
    encoded: bytes | None = None,
    *,
    idempotency: IdempotencyClaim | None = None,
    idempotency_since: datetime | None = None,
) -> None:
    """Write the Batch, its transient template (if any) and its Deliveries, all or nothing
    (:func:`open_batch`, with `idempotency.response` as the answer to repeats).

    `encoded` is `deliveries_csv(plan)` when the caller already built it (off the event loop).
    """
    data = encoded if encoded is not None else deliveries_csv(plan)
    async with open_batch(
        db,
        plan,
        transient_template,
        now,
        idempotency=idempotency,
        idempotency_since=idempotency_since,
    ) as writer:
        await writer.copy(data, len(plan.deliveries) + len(plan.suppressed))
