"""Storage of Templates (the `templates` table), persistent and transient alike.

Template ids are globally unique (`templates_template_id_idx`); the Admin API addresses them by
id alone, the Mailer only within its own Domain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from kannon.db.database import Database
from kannon.db.times import from_db_time, to_db_time
from kannon.model.template import PERSISTENT, Template

_COLUMNS = "template_id, domain, html, title, type::text AS type, created_at, updated_at"

Executor: TypeAlias = Database | asyncpg.Connection


def _template(row: Any) -> Template:
    return Template(
        template_id=row["template_id"],
        domain=row["domain"],
        html=row["html"],
        title=row["title"],
        type=row["type"],
        created_at=from_db_time(row["created_at"]),
        updated_at=from_db_time(row["updated_at"]),
    )


async def insert_template(db: Executor, template: Template) -> None:
    await db.execute(
        """INSERT INTO templates (template_id, domain, html, title, type, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5::template_type, $6, $7)""",
        template.template_id,
        template.domain,
        template.html,
        template.title,
        template.type,
        to_db_time(template.created_at),
        to_db_time(template.updated_at),
    )


async def get_template(
    db: Executor, template_id: str, *, domain: str | None = None
) -> Template | None:
    """By id; with `domain`, only when the template belongs to that Domain."""
    if domain is None:
        row = await db.fetchrow(
            f"SELECT {_COLUMNS} FROM templates WHERE template_id = $1", template_id
        )
    else:
        row = await db.fetchrow(
            f"SELECT {_COLUMNS} FROM templates WHERE template_id = $1 AND domain = $2",
            template_id,
            domain,
        )
    return None if row is None else _template(row)


async def update_template(
    db: Executor, template_id: str, *, html: str, title: str, now: datetime
) -> Template | None:
    row = await db.fetchrow(
        f"""UPDATE templates SET html = $2, title = $3, updated_at = $4
            WHERE template_id = $1 RETURNING {_COLUMNS}""",
        template_id,
        html,
        title,
        to_db_time(now),
    )
    return None if row is None else _template(row)


async def delete_template(db: Executor, template_id: str) -> Template | None:
    row = await db.fetchrow(
        f"DELETE FROM templates WHERE template_id = $1 RETURNING {_COLUMNS}", template_id
    )
    return None if row is None else _template(row)


async def list_templates(
    db: Executor, domain: str, *, offset: int, limit: int
) -> tuple[list[Template], int]:
    """One page of the Domain's persistent templates (oldest first) and how many there are."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM templates WHERE type = $2::template_type AND domain = $1
            ORDER BY created_at, id LIMIT $3 OFFSET $4""",
        domain,
        PERSISTENT,
        limit,
        offset,
    )
    total = await db.fetchval(
        "SELECT count(*) FROM templates WHERE type = $2::template_type AND domain = $1",
        domain,
        PERSISTENT,
    )
    return [_template(row) for row in rows], int(total)
