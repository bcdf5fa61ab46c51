"""Storage of Domains (the `domains` table) and their DKIM keys (`dkim_keys`), and the timestamp
convention of the API's tables.

Timestamps are stored as UTC wall-clock in `timestamp without time zone` columns, as in the
original (`times.py`).
Values are always written explicitly from Python rather than by column defaults, because the
database's `now()` follows the server's TimeZone setting, which is not ours to assume.

`dkim_keys` holds every key of a Domain; `domains.dkim_private_key`, `dkim_public_key` and
`dkim_selector` (the original's columns) mirror its signing RSA key, and change only when a
rotation's new RSA key is confirmed. Rotation (ADR 0035) happens here in one transaction per step.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time
from kannon.model.domain import RSA_SHA256, DkimKey, Domain
from kannon.model.errors import Conflict, NotFound
from kannon.model.ip_pool import DEFAULT_POOL
from kannon.model.tracking import DEFAULT_CEILING, TrackingPolicy


@dataclass(frozen=True)
class NewKey:
    """A key to store: selector, algorithm and the base64 key pair (stored formats)."""

    selector: str
    algorithm: str
    private_key: str = field(repr=False)
    public_key: str


@dataclass(frozen=True)
class SigningKey:
    """What the Dispatcher signs with: one key of one Domain."""

    domain: str
    selector: str
    algorithm: str
    private_key: str = field(repr=False)


def _json(value: Any) -> Any:
    # The pool's codec decodes jsonb; a raw connection without it hands over the JSON text.
    return json.loads(value) if isinstance(value, str) else value


def _domain(row: Any, keys: Sequence[DkimKey] = ()) -> Domain:
    return Domain(
        name=row["domain"],
        dkim_public_key=row["dkim_public_key"],
        dkim_selector=row["dkim_selector"],
        created_at=from_db_time(row["created_at"]),
        tracking=TrackingPolicy.from_json(_json(row["tracking"]), DEFAULT_CEILING),
        one_click_unsubscribe=row["one_click_unsubscribe"],
        dkim_keys=tuple(keys),
        ip_pool=row["ip_pool"],
    )


def _key(row: Any) -> DkimKey:
    confirmed, retire = row["confirmed_at"], row["retire_at"]
    return DkimKey(
        domain=row["domain"],
        selector=row["selector"],
        algorithm=row["algorithm"],
        public_key=row["public_key"],
        created_at=from_db_time(row["created_at"]),
        confirmed_at=from_db_time(confirmed) if confirmed is not None else None,
        retire_at=from_db_time(retire) if retire is not None else None,
    )


_COLUMNS = (
    "domain, dkim_public_key, dkim_selector, created_at, tracking, one_click_unsubscribe, ip_pool"
)
_KEY_COLUMNS = "domain, selector, algorithm, public_key, created_at, confirmed_at, retire_at"


async def _insert_keys(
    conn: asyncpg.Connection,
    domain: str,
    keys: Sequence[NewKey],
    now: datetime,
    confirmed: bool,
) -> list[DkimKey]:
    rows = []
    for key in keys:
        try:
            rows.append(
                await conn.fetchrow(
                    f"""INSERT INTO dkim_keys (domain, selector, algorithm, private_key,
                                               public_key, created_at, confirmed_at)
                        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_KEY_COLUMNS}""",
                    domain,
                    key.selector,
                    key.algorithm,
                    key.private_key,
                    key.public_key,
                    to_db_time(now),
                    to_db_time(now) if confirmed else None,
                )
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"selector: {key.selector!r} is already used by {domain!r}") from None
    return [_key(row) for row in rows]


async def insert_domain(
    db: Database,
    *,
    name: str,
    dkim_private_key: str,
    dkim_public_key: str,
    dkim_selector: str,
    now: datetime,
    extra_keys: Sequence[NewKey] = (),
    ip_pool: str = DEFAULT_POOL,
) -> Domain:
    """Create a Domain with its RSA key (and `extra_keys`, e.g. its Ed25519 one), all signing
    at once; Conflict when the name is taken."""
    async with db.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO domains (domain, dkim_private_key, dkim_public_key, dkim_selector,
                                         created_at, ip_pool)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}""",
                name,
                dkim_private_key,
                dkim_public_key,
                dkim_selector,
                to_db_time(now),
                ip_pool,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"domain: {name!r} already exists") from None
        rsa = NewKey(dkim_selector, RSA_SHA256, dkim_private_key, dkim_public_key)
        keys = await _insert_keys(conn, name, [rsa, *extra_keys], now, confirmed=True)
    return _domain(row, keys)


async def _keys_of(
    db: Database | asyncpg.Connection, names: Sequence[str]
) -> dict[str, list[DkimKey]]:
    rows = await db.fetch(
        f"SELECT {_KEY_COLUMNS} FROM dkim_keys WHERE domain = ANY($1::varchar[])"
        " ORDER BY created_at, id",
        list(names),
    )
    found: dict[str, list[DkimKey]] = {}
    for row in rows:
        found.setdefault(row["domain"], []).append(_key(row))
    return found


async def get_domain(db: Database | asyncpg.Connection, name: str) -> Domain | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM domains WHERE domain = $1", name)
    if row is None:
        return None
    return _domain(row, (await _keys_of(db, [name])).get(name, []))


def found_domain(domain: Domain | None, name: str) -> Domain:
    """`domain`, read or written under `name`; NotFound when it is None (no such Domain)."""
    if domain is None:
        raise NotFound(f"domain: {name!r} not found")
    return domain


async def existing_domain(db: Database | asyncpg.Connection, name: str) -> Domain:
    """The Domain `name` (canonical); NotFound when there is none."""
    return found_domain(await get_domain(db, name), name)


async def sending_policy(
    db: Database | asyncpg.Connection, name: str
) -> tuple[TrackingPolicy, bool] | None:
    """What intake needs of a Domain: its Tracking Policy ceiling and whether it serves one-click
    unsubscribes itself; None when there is no such Domain."""
    row = await db.fetchrow(
        "SELECT tracking, one_click_unsubscribe FROM domains WHERE domain = $1", name
    )
    if row is None:
        return None
    return (
        TrackingPolicy.from_json(_json(row["tracking"]), DEFAULT_CEILING),
        row["one_click_unsubscribe"],
    )


async def list_domains(db: Database) -> list[Domain]:
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM domains ORDER BY id")
    keys = await _keys_of(db, [row["domain"] for row in rows])
    return [_domain(row, keys.get(row["domain"], [])) for row in rows]


async def set_tracking(db: Database, name: str, policy: TrackingPolicy) -> Domain | None:
    """Set the Domain's Tracking Policy ceiling; None when there is no such Domain. Deliveries
    already accepted keep the policy frozen on them."""
    status = await db.execute(
        "UPDATE domains SET tracking = $2 WHERE domain = $1", name, policy.to_json()
    )
    return await get_domain(db, name) if status != "UPDATE 0" else None


async def set_one_click_unsubscribe(db: Database, name: str, enabled: bool) -> Domain | None:
    status = await db.execute(
        "UPDATE domains SET one_click_unsubscribe = $2 WHERE domain = $1", name, enabled
    )
    return await get_domain(db, name) if status != "UPDATE 0" else None


async def add_pending_keys(
    db: Database, name: str, keys: Sequence[NewKey], now: datetime
) -> list[DkimKey]:
    """Store a rotation's new keys, pending: they sign only once confirmed."""
    async with db.acquire() as conn, conn.transaction():
        return await _insert_keys(conn, name, keys, now, confirmed=False)


async def confirm_keys(
    db: Database,
    name: str,
    selector: str | None,
    now: datetime,
    grace: timedelta,
) -> list[DkimKey]:
    """Confirm the Domain's pending keys (all, or the one at `selector`): they sign from now on,
    and every other signing key of the same algorithm retires after `grace`. Returns the keys
    confirmed (none: nothing was pending)."""
    async with db.acquire() as conn, conn.transaction():
        # One rotation step at a time per Domain: two confirmations must not retire each other.
        await conn.execute("SELECT 1 FROM domains WHERE domain = $1 FOR UPDATE", name)
        rows = await conn.fetch(
            f"""UPDATE dkim_keys SET confirmed_at = $3
                WHERE domain = $1 AND confirmed_at IS NULL
                      AND ($2::varchar IS NULL OR selector = $2)
                RETURNING id, private_key, {_KEY_COLUMNS}""",
            name,
            selector,
            to_db_time(now),
        )
        for row in rows:
            await conn.execute(
                """UPDATE dkim_keys SET retire_at = $4
                   WHERE domain = $1 AND algorithm = $2 AND id <> $3
                         AND confirmed_at IS NOT NULL AND (retire_at IS NULL OR retire_at > $4)""",
                name,
                row["algorithm"],
                row["id"],
                to_db_time(now + grace),
            )
            if row["algorithm"] == RSA_SHA256:
                await conn.execute(
                    """UPDATE domains SET dkim_private_key = $2, dkim_public_key = $3,
                                          dkim_selector = $4
                       WHERE domain = $1""",
                    name,
                    row["private_key"],
                    row["public_key"],
                    row["selector"],
                )
    return [_key(row) for row in rows]


async def signing_keys(
    db: Database | asyncpg.Connection, names: Sequence[str], now: datetime
) -> dict[str, list[SigningKey]]:
    """The keys each Domain signs with at `now`: confirmed and not yet retired, oldest first."""
    rows = await db.fetch(
        """SELECT domain, selector, algorithm, private_key FROM dkim_keys
           WHERE domain = ANY($1::varchar[]) AND confirmed_at IS NOT NULL
                 AND (retire_at IS NULL OR retire_at > $2)
           ORDER BY created_at, id""",
        list(dict.fromkeys(names)),
        to_db_time(now),
    )
    found: dict[str, list[SigningKey]] = {}
    for row in rows:
        found.setdefault(row["domain"], []).append(
            SigningKey(row["domain"], row["selector"], row["algorithm"], row["private_key"])
        )
    return found
