"""The migrations runner behind `kannon migrate`.

Migrations are SQL files `NNNN_name.sql` in `kannon/db/migrations/` (the repository's top-level
`migrations/` links there) with a `-- migrate:up` and a `-- migrate:down` section. Each pending one
runs in its own transaction and is recorded in `kannon_migrations`. A session-level advisory lock
serialises concurrent runners, so two processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import asyncpg

# Arbitrary, fixed: every Kannon process agrees on it.
ADVISORY_LOCK_KEY = 0x4B414E4E4F4E  # "KANNON"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_UP = "-- migrate:up"
_DOWN = "-- migrate:down"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str
    checksum: str


@dataclass(frozen=True)
class MigrationStatus:
    migration: Migration
    applied_at: datetime | None


class MigrationError(Exception):
    """A migration file is malformed or an applied one was edited afterwards."""


def migrations_dir() -> Path:
    return Path(str(resources.files("kannon.db").joinpath("migrations")))


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_RE.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        text = path.read_text(encoding="utf-8")
        if _UP not in text or _DOWN not in text:
            raise MigrationError(f"{path.name}: needs a '{_UP}' and a '{_DOWN}' section")
        up = text.split(_UP, 1)[1].split(_DOWN, 1)[0].strip()
        down = text.split(_DOWN, 1)[1].strip()
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                up=up,
                down=down,
                checksum=hashlib.sha256(up.encode()).hexdigest(),
            )
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS kannon_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    checksum   VARCHAR(64) NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def _applied(conn: asyncpg.Connection) -> dict[int, tuple[str, datetime]]:
    exists = await conn.fetchval("SELECT to_regclass('kannon_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum, applied_at FROM kannon_migrations")
    return {r["version"]: (r["checksum"], r["applied_at"]) for r in rows}


async def migrate(url: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations in order; returns the ones this call applied."""
    migrations = load_migrations() if migrations is None else migrations
    conn: asyncpg.Connection = await asyncpg.connect(url)
    applied_now: list[Migration] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            await conn.execute(_CREATE_TABLE)
            applied = await _applied(conn)
            for migration in migrations:
                if migration.version in applied:
                    if applied[migration.version][0] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was changed "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.up)
                    await conn.execute(
                        "INSERT INTO kannon_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(migration)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()
    return applied_now


async def status(url: str, migrations: list[Migration] | None = None) -> list[MigrationStatus]:
    migrations = load_migrations() if migrations is None else migrations
    conn: asyncpg.Connection = await asyncpg.connect(url)
    try:
        applied = await _applied(conn)
    finally:
        await conn.close()
    return [
        MigrationStatus(m, applied[m.version][1] if m.version in applied else None)
        for m in migrations
    ]
