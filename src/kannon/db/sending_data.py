"""What the Dispatcher needs to build the Envelopes of a Batch: its `messages` row joined with
its template's HTML and its Domain's DKIM key, for many Batches in one round trip.

Caching guidance (for the Dispatcher, the only caller):

* Load once per dispatch cycle, for every Batch the cycle claimed (one query for all of them),
  and do NOT keep the result across cycles: templates are edited and deleted, Domains are deleted,
  and a Delivery must be built from what is stored when it is dispatched.
* What IS worth keeping across cycles is the parsed DKIM key (`DkimSigner`): parsing costs more
  than a signature. Key the cache by Domain and compare `(dkim_selector, dkim_private_key)` with
  what this query returns, so a rotated key or selector takes effect on the next cycle.

The joins are LEFT joins so that a missing template or Domain comes back as None rather than as a
missing Batch: the Dispatcher then knows *why* it cannot build (and says so in the Failed
reason) instead of confusing it with an unknown Batch.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class SendingData:
    """One Batch as the Dispatcher builds it. `html` is None when the template is gone,
    `dkim_private_key` (and `dkim_selector`) when the Domain is gone."""

    batch_id: str
    domain: str
    subject: str
    sender_email: str
    sender_alias: str
    template_id: str
    html: str | None
    dkim_selector: str | None
    dkim_private_key: str | None = field(repr=False)
    attachments: Mapping[str, str] = field(default_factory=dict)
    """filename → base64 content, the `messages.attachments` layout."""
    headers_to: tuple[str, ...] = ()
    headers_cc: tuple[str, ...] = ()

    def attachment_bytes(self) -> list[tuple[str, bytes]]:
        """The attachments decoded, sorted by filename (a stable MIME part order).

        Raises ValueError when a stored value is not base64.
        """
        result: list[tuple[str, bytes]] = []
        for name in sorted(self.attachments):
            try:
                result.append((name, base64.b64decode(self.attachments[name], validate=True)))
            except (binascii.Error, ValueError, TypeError):
                raise ValueError(f"attachment {name!r} is not valid base64") from None
        return result


def _json(value: Any) -> Any:
    # The pool's codec decodes jsonb; a raw connection without it hands over the JSON text.
    if isinstance(value, str):
        return json.loads(value)
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(v) for v in value if isinstance(v, str) and v)


def _sending_data(row: asyncpg.Record) -> SendingData:
    attachments = _json(row["attachments"]) or {}
    headers = _json(row["headers"]) or {}
    if not isinstance(attachments, dict):
        attachments = {}
    if not isinstance(headers, dict):
        headers = {}
    return SendingData(
        batch_id=row["message_id"],
        domain=row["domain"],
        subject=row["subject"],
        sender_email=row["sender_email"],
        sender_alias=row["sender_alias"],
        template_id=row["template_id"],
        html=row["html"],
        dkim_selector=row["dkim_selector"],
        dkim_private_key=row["dkim_private_key"],
        attachments={str(k): str(v) for k, v in attachments.items()},
        headers_to=_strings(headers.get("to")),
        headers_cc=_strings(headers.get("cc")),
    )


async def load_sending_data(
    pool: asyncpg.Pool | asyncpg.Connection, batch_ids: Sequence[str]
) -> dict[str, SendingData]:
    """The sending data of each Batch in `batch_ids` that exists, by Batch id."""
    if not batch_ids:
        return {}
    rows = await pool.fetch(
        """
        SELECT m.message_id, m.domain, m.subject, m.sender_email, m.sender_alias,
               m.template_id, m.attachments, m.headers,
               t.html, d.dkim_selector, d.dkim_private_key
        FROM messages AS m
        LEFT JOIN templates AS t ON t.template_id = m.template_id AND t.domain = m.domain
        LEFT JOIN domains AS d ON d.domain = m.domain
        WHERE m.message_id = ANY($1::varchar[])
        """,
        list(dict.fromkeys(batch_ids)),
    )
    return {row["message_id"]: _sending_data(row) for row in rows}
