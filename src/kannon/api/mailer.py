"""The Mailer service (`pkg.kannon.mailer.apiv1.Mailer` / `kannon.mailer.apiv1.MailerApiV1Service`):
SendHTML and SendTemplate turn one call into one Batch with a Delivery per Recipient.

Steps (the original's, without its mistakes; ADR 0012): authenticate the tenant by API key; pick
the template — SendHTML always stores its HTML as a new transient template, SendTemplate uses the
tenant's template or, when global fields change its HTML, a transient copy with them baked in;
check the request (:func:`kannon.model.batch.plan_batch`, which also resolves each Recipient's
Tracking Policy under the Domain's ceiling; a one-click unsubscribe URL template is checked by
:func:`kannon.envelope.unsubscribe.check_url_template` and gets the global fields baked in, as the
HTML does); refuse a Batch whose largest Envelope could not travel on the bus
(:func:`kannon.envelope.size.estimate_largest_envelope` against `nats.max_payload`, ADR 0021);
refuse the Recipients the Domain suppresses (one indexed lookup for the whole Batch,
:func:`kannon.model.batch.apply_suppressions`, ADR 0027); write template, Batch and Deliveries in
one transaction. Nothing is written when any step fails.

With an `idempotency-key` (gRPC metadata or HTTP header), a repeat of the same request within
`api.idempotency_window` answers the first response and writes nothing; the same key with another
request is refused (ALREADY_EXISTS). The key's row is written in the intake transaction, so two
racing calls create one Batch (ADR 0031).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from prometheus_client import Counter

from kannon.api.auth import ApiKeyAuth, metadata
from kannon.api.errors import CallContext, rpc
from kannon.api.metrics import IDEMPOTENT_REPLAYS
from kannon.config import Settings
from kannon.db.batches import create_batch, deliveries_csv
from kannon.db.database import Database
from kannon.db.domains import sending_policy
from kannon.db.idempotency import KeyTaken, find_call
from kannon.db.suppressions import suppressed_keys
from kannon.db.templates import get_template
from kannon.db.tracking_keys import KID_LENGTH
from kannon.envelope.ids import make_batch_id
from kannon.envelope.render import apply_global_fields, placeholder_names, render_text
from kannon.envelope.size import estimate_largest_envelope
from kannon.envelope.unsubscribe import check_url_template
from kannon.ids import new_template_id, new_token
from kannon.model.batch import (
    BatchPlan,
    SendRequest,
    apply_suppressions,
    check_no_nul,
    check_recipient_count,
    plan_batch,
)
from kannon.model.errors import InvalidArgument, NotFound
from kannon.model.idempotency import (
    HEADER,
    IdempotencyClaim,
    check_key,
    fingerprint,
    replayed_response,
)
from kannon.model.ip_pool import check_known_pool
from kannon.model.template import TRANSIENT, Template, check_html, check_template_id
from kannon.model.tracking import TrackingPolicy
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.runtime.clock import utc_now
from kannon.wire import api as wire

OFF_LOOP_RECIPIENTS = 5_000

REJECTED = Counter(
    "kannon_api_rejected_recipients_total",
    "Recipients refused at intake (SendRes.rejected_recipients), by reason",
    ["reason"],
)


@dataclass(frozen=True)
class Call:
    """One send call: who, when, and its idempotency key with the request's fingerprint."""

    method: str
    tenant: str
    key: str | None
    fingerprint: bytes
    now: datetime
    ip_pool: str | None = None
    """The IP pool the Batch named (checked), None: its Domain's (ADR 0039)."""


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


def check_envelope_size(
    plan: BatchPlan,
    request: SendRequest,
    html: str,
    settings: Settings,
    builtin_unsubscribe: bool = False,
) -> None:
    """Refuse the Batch when its largest Envelope might exceed what the bus carries."""
    limit = settings.nats.max_payload
    largest = estimate_largest_envelope(
        html=html,
        subject=plan.subject,
        domain=plan.domain,
        batch_id=plan.batch_id,
        sender_email=plan.sender_email,
        sender_alias=plan.sender_alias,
        recipients=[(d.email, d.fields) for d in plan.deliveries],
        attachments={a.filename.strip(): len(a.content) for a in request.attachments},
        headers_to=plan.headers["to"],
        headers_cc=plan.headers["cc"],
        tracker_base_url=settings.tracker.base_url,
        tracking_kid_bytes=KID_LENGTH,
        limit=limit,
        unsubscribe_url_template=request.one_click_url_template,
        builtin_unsubscribe=builtin_unsubscribe,
    )
    if largest is None or largest.size <= limit:
        return
    raise InvalidArgument(
        f"message too large: the Envelope for recipient {largest.recipient!r} would be up to "
        f"{largest.size} bytes (HTML {largest.html}, attachments {largest.attachments}, "
        f"encoded), over the {limit} bytes the message bus carries (nats.max_payload); "
        "send smaller attachments or HTML, or link to large files"
    )


def one_click_template(template: str, global_fields: Mapping[str, str] | None) -> str:
    """The caller's RFC 8058 URL template, checked, with the Batch's global fields baked in
    (percent-encoded); InvalidArgument naming the field when it is no https URL."""
    field = "one_click_unsubscribe.url_template"
    try:
        check_url_template(template)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {exc}") from None
    if global_fields:
        template = render_text(template, {k: quote(v, safe="") for k, v in global_fields.items()})
    return template


# The two send requests share their Batch fields (sender, subject, recipients, ...).
SendMessage = mailer_pb.SendHTMLReq | mailer_pb.SendTemplateReq


class MailerService:
    def __init__(self, settings: Settings, db: Database, auth: ApiKeyAuth) -> None:
        self.settings = settings
        self.db = db
        self.auth = auth
        self.max_recipients = settings.api.max_recipients

    def _global_fields(self, message: SendMessage) -> dict[str, str]:
        # Counted before anything is built per Recipient: an oversized call costs nothing.
        check_recipient_count(len(message.recipients), self.max_recipients)
        fields = dict(message.global_fields)
        check_no_nul(fields, "global_fields")
        return fields

    async def _replay(self, call: Call) -> mailer_pb.SendRes | None:
        """The first response of this call's idempotency key, if any (Conflict: another body)."""
        if call.key is None:
            return None
        since = call.now - self.settings.api.idempotency_window
        stored = await find_call(self.db, call.tenant, call.key, since)
        if stored is None:
            return None
        response = replayed_response(stored, call.fingerprint, call.key)
        IDEMPOTENT_REPLAYS.labels(call.method).inc()
        return wire.send_res_from_bytes(response)

    def _prepare(  # noqa: PLR0917  (called positionally through asyncio.to_thread)
        self,
        message: SendMessage,
        tenant: str,
        template_id: str,
        html: str,
        now: datetime,
        domain: tuple[TrackingPolicy, bool],
    ) -> tuple[SendRequest, BatchPlan, list[str]]:
        """The checked plan, and the suppression keys of its Deliveries (to look up)."""
        ceiling, builtin_unsubscribe = domain
        request = wire.send_request(message)
        unsubscribe_fields: set[str] = set()
        if request.one_click_url_template is not None:
            template = one_click_template(request.one_click_url_template, request.global_fields)
            request = dataclasses.replace(request, one_click_url_template=template)
            unsubscribe_fields = placeholder_names(template)
        plan = plan_batch(
            request,
            tenant=tenant,
            batch_id=make_batch_id(new_token(), tenant),
            template_id=template_id,
            now=now,
            max_recipients=self.max_recipients,
            subject_fields=placeholder_names(request.subject),
            ceiling=ceiling,
            unsubscribe_fields=unsubscribe_fields,
        )
        check_envelope_size(plan, request, html, self.settings, builtin_unsubscribe)
        # Delivery emails are canonical already: their key is the lower-cased spelling.
        return request, plan, [delivery.email.lower() for delivery in plan.deliveries]

    @staticmethod
    def _finish(
        request: SendRequest, plan: BatchPlan, suppressed: set[str]
    ) -> tuple[BatchPlan, bytes]:
        plan = apply_suppressions(plan, request.recipients, suppressed)
        return plan, deliveries_csv(plan)

    async def _send(
        self,
        call: Call,
        message: SendMessage,
        template_id: str,
        html: str,
        template: Template | None,
    ) -> mailer_pb.SendRes:
        now, tenant = call.now, call.tenant
        domain = await sending_policy(self.db, tenant)
        if domain is None:
            raise NotFound(f"domain: {tenant!r} no longer exists")
        if len(message.recipients) >= OFF_LOOP_RECIPIENTS:
            # Checking and encoding 100,000 Recipients takes about a second of CPU; in a
            # thread the event loop keeps serving other calls (and, in standalone, the other
            # Components) meanwhile.
            request, plan, keys = await asyncio.to_thread(
                self._prepare, message, tenant, template_id, html, now, domain
            )
            suppressed = await suppressed_keys(self.db, tenant, keys, now)
            plan, encoded = await asyncio.to_thread(self._finish, request, plan, suppressed)
        else:
            request, plan, keys = self._prepare(message, tenant, template_id, html, now, domain)
            suppressed = await suppressed_keys(self.db, tenant, keys, now)
            plan, encoded = self._finish(request, plan, suppressed)
        if call.ip_pool is not None:
            plan = dataclasses.replace(plan, ip_pool=call.ip_pool)
        response = wire.send_res_pb(plan)
        claim = None
        if call.key is not None:
            claim = IdempotencyClaim(
                tenant, call.key, call.fingerprint, response.SerializeToString()
            )
        try:
            await create_batch(
                self.db,
                plan,
                template,
                now,
                encoded,
                idempotency=claim,
                idempotency_since=now - self.settings.api.idempotency_window,
            )
        except KeyTaken:
            # A concurrent call with the same key committed first: answer as it did.
            replayed = await self._replay(call)
            if replayed is None:  # pragma: no cover - the winner's row is committed
                raise
            return replayed
        for reason, count in collections.Counter(r.reason for r in plan.rejected).items():
            REJECTED.labels(reason).inc(count)
        return response

    async def _call(self, method: str, message: SendMessage, context: CallContext) -> Call:
        tenant = await self.auth.tenant(context)
        key = check_key(metadata(context).get(HEADER))
        digest = b""
        if key is not None:
            digest = fingerprint(method, message.SerializeToString(deterministic=True))
        # The Batch's own IP pool; unset or empty: its Domain's.
        ip_pool = None
        if message.HasField("ip_pool") and message.ip_pool:
            ip_pool = check_known_pool(message.ip_pool, self.settings.known_pools())
        return Call(method, tenant, key, digest, utc_now(), ip_pool)

    @rpc
    async def SendHTML(
        self, message: mailer_pb.SendHTMLReq, context: CallContext
    ) -> mailer_pb.SendRes:
        call = await self._call("SendHTML", message, context)
        if (replayed := await self._replay(call)) is not None:
            return replayed
        tenant = call.tenant
        global_fields = self._global_fields(message)
        check_html(message.html)
        html = apply_global_fields(message.html, global_fields)
        template = transient_template(tenant, html, call.now)
        return await self._send(call, message, template.template_id, html, template)

    @rpc
    async def SendTemplate(
        self, message: mailer_pb.SendTemplateReq, context: CallContext
    ) -> mailer_pb.SendRes:
        call = await self._call("SendTemplate", message, context)
        if (replayed := await self._replay(call)) is not None:
            return replayed
        tenant = call.tenant
        global_fields = self._global_fields(message)
        template_id = check_template_id(message.template_id)
        # Only the tenant's own templates: another Domain's id is "not found", not "forbidden",
        # so ids of other tenants cannot be probed.
        stored = await get_template(self.db, template_id, domain=tenant)
        if stored is None:
            raise NotFound(f"template_id: no template {template_id!r} in domain {tenant!r}")
        html = apply_global_fields(stored.html, global_fields)
        if html == stored.html:
            return await self._send(call, message, stored.template_id, html, None)
        template = transient_template(tenant, html, call.now)
        return await self._send(call, message, template.template_id, html, template)
