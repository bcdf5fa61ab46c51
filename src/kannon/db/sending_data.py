"""What the Dispatcher needs to build the Envelopes of a Batch: its `messages` row joined with
its template's HTML, its Domain's one-click flag and the DKIM keys the Domain signs with at that
moment (`kannon.db.domains.signing_keys`), for many Batches in two round trips.

Caching guidance (for the Dispatcher, the only caller):

* Load once per dispatch cycle, for every Batch the cycle claimed (one query for all of them),
  and do NOT keep the result across cycles: templates are edited and deleted, Domains are deleted,
  and a Delivery must be built from what is stored when it is dispatched.
* What IS worth keeping across cycles is the parsed DKIM keys (`DkimSigner`): parsing costs more
  than a signature. Key the cache by Domain and compare `dkim_keys` with what this query
  returns, so a rotation step takes effect on the next cycle.

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
from datetime import datetime
from typing import Any

import asyncpg

from kannon.db.database import Database
from kannon.db.domains import SigningKey, signing_keys
from kannon.model.batch import BatchCore
from kannon.model.ip_pool import DEFAULT_POOL, resolve_pool


@dataclass(frozen=True, slots=True)
class SendingData(BatchCore):
    """One Batch as the Dispatcher builds it. `html` is None when the template is gone,
    `domain_exists` False when the Domain is."""

    html: str | None
    domain_exists: bool = True
    dkim_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """(selector, base64 private key) of every key the Domain signs with now, oldest first."""
    attachments: Mapping[str, str] = field(default_factory=dict)
    """filename → base64 content, the `messages.attachments` layout."""
    headers_to: tuple[str, ...] = ()
    headers_cc: tuple[str, ...] = ()
    one_click_url_template: str | None = None
    """The Batch's RFC 8058 URL template (`messages.headers` "one_click_unsubscribe")."""
    builtin_unsubscribe: bool = False
    """The Domain serves one-click unsubscribes itself (used when the Batch has no template)."""
    ip_pool: str = DEFAULT_POOL
    """The IP pool the Batch's Envelopes go to: the Batch's own, else its Domain's (ADR 0039)."""

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


def _url_template(headers: Mapping[str, Any]) -> str | None:
    value = headers.get("one_click_unsubscribe")
    template = value.get("url_template") if isinstance(value, dict) else None
    return template if isinstance(template, str) and template else None


def _sending_data(row: asyncpg.Record, keys: Sequence[SigningKey]) -> SendingData:
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
        domain_exists=row["one_click_unsubscribe"] is not None,
        dkim_keys=tuple((k.selector, k.private_key) for k in keys),
        attachments={str(k): str(v) for k, v in attachments.items()},
        headers_to=_strings(headers.get("to")),
        headers_cc=_strings(headers.get("cc")),
        one_click_url_template=_url_template(headers),
        builtin_unsubscribe=bool(row["one_click_unsubscribe"]),
        ip_pool=resolve_pool(row["batch_pool"], row["domain_pool"]),
    )


async def load_sending_data(
    db: Database | asyncpg.Connection, batch_ids: Sequence[str], now: datetime
) -> dict[str, SendingData]:
    """The sending data of each Batch in `batch_ids` that exists, by Batch id, with the keys its
    Domain signs with at `now`."""
    if not batch_ids:
        return {}
    rows = await db.fetch(
        """
        SELECT m.message_id, m.domain, m.subject, m.sender_email, m.sender_alias,
               m.template_id, m.attachments, m.headers,
               t.html, d.one_click_unsubscribe,
               m.ip_pool AS batch_pool, d.ip_pool AS domain_pool
        FROM messages AS m
        LEFT JOIN templates AS t ON t.template_id = m.template_id AND t.domain = m.domain
        LEFT JOIN domains AS d ON d.domain = m.domain
        WHERE m.message_id = ANY($1::varchar[])
        """,
        list(dict.fromkeys(batch_ids)),
    )
    keys = await signing_keys(db, [row["domain"] for row in rows], now)
    return {row["message_id"]: _sending_data(row, keys.get(row["domain"], [])) for row in rows}
