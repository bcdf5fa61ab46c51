"""The `idempotency_keys` table: one row per (Domain, key), written in the intake transaction
(ADR 0031). The unique key is what decides two racing calls: the second INSERT waits for the
first transaction and then finds the row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kannon.db.database import Database
from kannon.db.times import to_db_time
from kannon.model.idempotency import IdempotencyClaim, StoredCall


class KeyTaken(Exception):
    """Another call holds this (Domain, key) within the window; the intake rolled back."""


async def find_call(db: Database, domain: str, key: str, since: datetime) -> StoredCall | None:
    row = await db.fetchrow(
        """SELECT fingerprint, response FROM idempotency_keys
           WHERE domain = $1 AND key = $2 AND created_at >= $3""",
        domain,
        key,
        to_db_time(since),
    )
    return None if row is None else StoredCall(bytes(row["fingerprint"]), bytes(row["response"]))


async def claim_key(conn: Any, claim: IdempotencyClaim, now: datetime, since: datetime) -> None:
    """Write the claim in the caller's transaction, replacing a row older than `since`;
    KeyTaken when a live row exists (committed, or committed while this waited for it)."""
    written = await conn.fetchval(
        """INSERT INTO idempotency_keys (domain, key, fingerprint, response, created_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (domain, key) DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, response = EXCLUDED.response,
                   created_at = EXCLUDED.created_at
               WHERE idempotency_keys.created_at < $6
           RETURNING true""",
        claim.domain,
        claim.key,
        claim.fingerprint,
        claim.response,
        to_db_time(now),
        to_db_time(since),
    )
    if not written:
        raise KeyTaken(claim.key)


async def set_response(conn: Any, claim: IdempotencyClaim, response: bytes) -> None:
    """Store the response of the call holding `claim`, in its transaction (written last: the
    Batch's counts are known only once all its Recipients are checked, ADR 0059)."""
    await conn.execute(
        "UPDATE idempotency_keys SET response = $3 WHERE domain = $1 AND key = $2",
        claim.domain,
        claim.key,
        response,
    )


async def delete_expired(db: Database, before: datetime) -> int:
    result = await db.execute(
        "DELETE FROM idempotency_keys WHERE created_at < $1", to_db_time(before)
    )
    return int(result.split()[-1])
