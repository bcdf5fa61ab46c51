"""Shared set-up of the Dispatcher tests: a Domain, a template and a Batch stored the way the API
stores them, Pool rows in any state, and the Envelopes that reached the sending stream (clocks,
event readers and the rest come from `tests.support`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from kannon.bus.client import Bus
from kannon.bus.subjects import SENDING_STREAM
from kannon.config import DispatcherSettings, Settings, TrackerSettings
from kannon.db.templates import insert_template
from kannon.dispatcher.component import Dispatcher
from kannon.envelope.build import Envelope
from kannon.model.template import TRANSIENT, Template
from kannon.wire import envelope as wire_envelope
from tests import support
from tests.support import Clock, stream_messages

DOMAIN = "k.example.com"
SELECTOR = "smtp"
BATCH = "msg_dispatchtest@k.example.com"
TEMPLATE = "template_dispatchtest@k.example.com"
SECRET = "bounce-secret-for-the-tests-0123456789"
# In the past: dkimpy refuses signatures whose t= lies in the future.
T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
HTML = (
    '<html><body><p>Hi {{ name }}</p><a href="https://example.org/offer">offer</a>'
    '<a href="mailto:help@k.example.com">help</a></body></html>'
)


def settings(**dispatcher: Any) -> Settings:
    values: dict[str, Any] = {"idle_interval": "10ms", **dispatcher}
    return Settings(
        secret_key=SECRET,
        dispatcher=DispatcherSettings(**values),
        tracker=TrackerSettings(base_url="https://track.{domain}"),
    )


def dispatcher(
    pool: asyncpg.Pool, bus: Bus, clock: Clock, *, jitter: float = 1.0, **dispatcher: Any
) -> Dispatcher:
    return Dispatcher(settings(**dispatcher), pool, bus, clock=clock, jitter=lambda: jitter)


async def store_domain(pool: asyncpg.Pool, keypair: tuple[str, str]) -> None:
    await support.store_domain(
        pool, DOMAIN, private_key=keypair[0], public_key=keypair[1], selector=SELECTOR, now=T0
    )


async def store_batch(
    pool: asyncpg.Pool,
    *,
    batch_id: str = BATCH,
    template_id: str = TEMPLATE,
    html: str = HTML,
    subject: str = "Hello {{ name }}",
    attachments: dict[str, str] | None = None,
    headers: dict[str, list[str]] | None = None,
) -> None:
    await insert_template(
        pool,
        Template(
            template_id=template_id,
            domain=DOMAIN,
            html=html,
            title="",
            type=TRANSIENT,
            created_at=T0,
            updated_at=T0,
        ),
    )
    await pool.execute(
        """INSERT INTO messages (message_id, subject, sender_email, sender_alias, template_id,
                                 domain, attachments, headers)
           VALUES ($1, $2, 'news@k.example.com', 'Kannon News', $3, $4, $5, $6)""",
        batch_id,
        subject,
        template_id,
        DOMAIN,
        attachments,
        headers or {"to": [], "cc": []},
    )


async def add(
    pool: asyncpg.Pool,
    emails: Sequence[str],
    *,
    batch_id: str = BATCH,
    status: str = "scheduled",
    scheduled: datetime = T0,
    original: datetime | None = None,
    attempts: int = 0,
    fields: dict[str, str] | None = None,
    claimed_at: datetime | None = None,
    last_reply: tuple[int, str] | None = None,
) -> None:
    def naive(value: datetime | None) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None

    await pool.execute(
        """
        INSERT INTO sending_pool_emails (email, status, scheduled_time, original_scheduled_time,
            message_id, fields, domain, send_attempts_cnt, claimed_at, last_reply_code,
            last_reply_msg)
        SELECT e, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM unnest($1::text[]) AS e
        """,
        list(emails),
        status,
        naive(scheduled),
        naive(original or scheduled),
        batch_id,
        fields or {},
        DOMAIN,
        attempts,
        naive(claimed_at),
        last_reply[0] if last_reply else None,
        last_reply[1] if last_reply else None,
    )


async def rows(pool: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    found = await pool.fetch("SELECT * FROM sending_pool_emails")
    return {row["email"]: row for row in found}


@dataclass(frozen=True)
class Published:
    msg_id: str
    job: Envelope


async def envelopes(bus: Bus) -> list[Published]:
    """Every Envelope on kannon.sending, in order."""
    return [
        Published(msg_id, wire_envelope.decode(data))
        for _, msg_id, data in await stream_messages(bus, SENDING_STREAM)
    ]


def dkim_verifies(message: bytes, public_key: str, domain: str = DOMAIN) -> bool:
    """dkimpy's verdict, its DNS lookup answered with the Domain's published TXT record."""
    return support.dkim_verifies(
        message, support.published_key(public_key, selector=SELECTOR, domain=domain)
    )
