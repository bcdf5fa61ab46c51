"""Tracking-token keys in `stats_keys`: the Dispatcher signs with the newest usable key, the Tracker
verifies with every unexpired one.

Keys are HMAC secrets (base64 in `private_key`; `public_key` names the algorithm). A key is used
for signing only while it outlives the tokens it signs (`expiration_time > now + token_ttl`), so
rotation happens before expiry and a token never outlives its key. Old keys keep verifying until
they expire.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta

from kannon.db.database import Database
from kannon.db.times import to_db_time
from kannon.envelope.tokens import TrackingKey

ALGORITHM = "hmac-sha256"
KID_PREFIX = "key_"
KID_RANDOM_BYTES = 12
# Length of every key id this module mints (the API's Envelope size bound counts on it).
KID_LENGTH = len(KID_PREFIX) + 2 * KID_RANDOM_BYTES


async def signing_key(db: Database, now: datetime, token_ttl: timedelta) -> TrackingKey:
    """The key to sign new tokens with, creating one (valid 2 × token_ttl) when none is usable."""
    async with db.acquire() as conn, conn.transaction():
        # Serialise creators so concurrent Dispatchers don't mint a key each.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('kannon.stats_keys'))")
        row = await conn.fetchrow(
            "SELECT id, private_key FROM stats_keys WHERE public_key = $1"
            " AND expiration_time > $2 ORDER BY creation_time DESC LIMIT 1",
            ALGORITHM,
            to_db_time(now + token_ttl),
        )
        if row is None:
            kid = KID_PREFIX + secrets.token_hex(KID_RANDOM_BYTES)
            secret = secrets.token_bytes(32)
            await conn.execute(
                "INSERT INTO stats_keys (id, private_key, public_key, creation_time,"
                " expiration_time) VALUES ($1, $2, $3, $4, $5)",
                kid,
                base64.b64encode(secret).decode(),
                ALGORITHM,
                to_db_time(now),
                to_db_time(now + 2 * token_ttl),
            )
            return TrackingKey(kid, secret)
    return TrackingKey(row["id"], base64.b64decode(row["private_key"]))


async def verification_keys(db: Database, now: datetime) -> dict[str, bytes]:
    """Every unexpired key, by id."""
    rows = await db.fetch(
        "SELECT id, private_key FROM stats_keys WHERE public_key = $1 AND expiration_time > $2",
        ALGORITHM,
        to_db_time(now),
    )
    return {r["id"]: base64.b64decode(r["private_key"]) for r in rows}
