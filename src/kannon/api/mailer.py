"""The Mailer service (`pkg.kannon.mailer.apiv1.Mailer` / `kannon.mailer.apiv1.MailerApiV1Service`):
SendHTML and SendTemplate turn one call into one Batch with a Delivery per Recipient.

Steps (spec §4.2 without its QUIRKs): authenticate the tenant by API key; pick the template —
SendHTML always stores its HTML as a new transient template, SendTemplate uses the tenant's
template or, when global fields change its HTML, a transient copy with them baked in; check the
request (:func:`kannon.model.batch.plan_batch`); write template, Batch and Deliveries in one
transaction. Nothing is written when any step fails.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kannon.api.auth import ApiKeyAuth
from kannon.api.errors import rpc
from kannon.config import Settings
from kannon.db.batches import create_batch, deliveries_csv
from kannon.db.templates import get_template
from kannon.envelope.ids import make_batch_id
from kannon.envelope.render import apply_global_fields
from kannon.ids import new_template_id, new_token
from kannon.model.batch import BatchPlan, check_no_nul, check_recipient_count, plan_batch
from kannon.model.errors import NotFound
from kannon.model.template import TRANSIENT, Template, check_html, check_template_id
from kannon.wire import api as wire

if TYPE_CHECKING:
    # Types only: asyncpg is imported at run time by kannon.db alone.
    import asyncpg

OFF_LOOP_RECIPIENTS = 5_000


def transient_template(domain: str, html: str, now: datetime) -> Template:
    return Template(
        template_id=new_template_id(domain),
        domain=domain,
        html=html,
        title="",
        type=TRANSIENT,
        created_at=now,
        updated_at=now,
    )


class MailerService:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, auth: ApiKeyAuth) -> None:
        self.pool = pool
        self.auth = auth
        self.max_recipients = settings.api.max_recipients

    def _global_fields(self, message: Any) -> dict[str, str]:
        # Counted before anything is built per Recipient: an oversized call costs nothing.
        check_recipient_count(len(message.recipients), self.max_recipients)
        fields = dict(message.global_fields)
        check_no_nul(fields, "global_fields")
        return fields

    def _prepare(
        self, message: Any, tenant: str, template_id: str, now: datetime
    ) -> tuple[BatchPlan, bytes]:
        plan = plan_batch(
            wire.send_request(message),
            tenant=tenant,
            batch_id=make_batch_id(new_token(), tenant),
            template_id=template_id,
            now=now,
            max_recipients=self.max_recipients,
        )
        return plan, deliveries_csv(plan)

    async def _send(
        self, message: Any, tenant: str, template_id: str, template: Template | None
    ) -> Any:
        now = datetime.now(UTC)
        if len(message.recipients) >= OFF_LOOP_RECIPIENTS:
            # Checking and encoding 100,000 Recipients takes about a second of CPU; in a
            # thread the event loop keeps serving other calls (and, in standalone, the other
            # Components) meanwhile.
            plan, encoded = await asyncio.to_thread(
                self._prepare, message, tenant, template_id, now
            )
        else:
            plan, encoded = self._prepare(message, tenant, template_id, now)
        await create_batch(self.pool, plan, template, now, encoded)
        return wire.send_res_pb(plan)

    @rpc
    async def SendHTML(self, message: Any, context: Any) -> Any:
        tenant = await self.auth.tenant(context)
        global_fields = self._global_fields(message)
        check_html(message.html)
        html = apply_global_fields(message.html, global_fields)
        template = transient_template(tenant, html, datetime.now(UTC))
        return await self._send(message, tenant, template.template_id, template)

    @rpc
    async def SendTemplate(self, message: Any, context: Any) -> Any:
        tenant = await self.auth.tenant(context)
        global_fields = self._global_fields(message)
        template_id = check_template_id(message.template_id)
        # Only the tenant's own templates: another Domain's id is "not found", not "forbidden",
        # so ids of other tenants cannot be probed.
        stored = await get_template(self.pool, template_id, domain=tenant)
        if stored is None:
            raise NotFound(f"template_id: no template {template_id!r} in domain {tenant!r}")
        html = apply_global_fields(stored.html, global_fields)
        if html == stored.html:
            return await self._send(message, tenant, stored.template_id, None)
        template = transient_template(tenant, html, datetime.now(UTC))
        return await self._send(message, tenant, template.template_id, template)
