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

import collections
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

from prometheus_client import Counter

from kannon.api.auth import ApiKeyAuth, metadata
from kannon.api.errors import CallContext, rpc
from kannon.api.metrics import IDEMPOTENT_REPLAYS
from kannon.api.offload import off_loop, release_memory
from kannon.api.send_body import SendBody, SendMessage
from kannon.config import Settings
from kannon.db.batches import BatchWriter, deliveries_csv, open_batch
from kannon.db.database import Database
from kannon.db.domains import sending_policy
from kannon.db.idempotency import KeyTaken, find_call
from kannon.db.templates import get_template
from kannon.db.tracking_keys import KID_LENGTH
from kannon.envelope.ids import make_batch_id
from kannon.envelope.render import apply_global_fields, placeholder_names, render_text
from kannon.envelope.size import EnvelopeEstimate, estimate_largest_envelope
from kannon.envelope.unsubscribe import check_url_template
from kannon.ids import new_template_id, new_token
from kannon.model.batch import (
    BatchPlan,
    Delivery,
    RecipientChecker,
    RecipientIn,
    Rejection,
    SendRequest,
    apply_suppressions,
    check_no_nul,
    check_recipient_count,
    plan_head,
)
from kannon.model.errors import InvalidArgument, NotFound
from kannon.model.idempotency import (
    HEADER,
    IdempotencyClaim,
    check_key,
    fingerprint_prefix,
    replayed_response,
)
from kannon.model.ip_pool import check_known_pool
from kannon.model.template import TRANSIENT, Template, check_html, check_template_id
from kannon.model.tracking import TrackingPolicy
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.runtime.clock import utc_now
from kannon.wire import api as wire

T = TypeVar("T")

OFF_LOOP_RECIPIENTS = 5_000
OFF_LOOP_BYTES = 256 * 1024
"""A request this large is indexed (and fingerprinted) in a thread: ~5,000 Recipients."""

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


def check_envelope_size(largest: EnvelopeEstimate | None, settings: Settings) -> None:
    """Refuse the Batch when its largest Envelope might exceed what the bus carries."""
    limit = settings.nats.max_payload
    if largest is None or largest.size <= limit:
        return
    raise InvalidArgument(
        f"message too large: the Envelope for recipient {largest.recipient!r} would be up to "
        f"{largest.size} bytes (HTML {largest.html}, attachments {largest.attachments}, "
        f"encoded), over the {limit} bytes the message bus carries (nats.max_payload); "
        "send smaller attachments or HTML, or link to large files"
    )


@dataclass
class Intake:
    """One send call's Batch while its Recipients are checked and written, a chunk at a time:
    what it keeps across chunks is the dedup set (in `checker`), the rejections and counts."""

    request: SendRequest
    """The request without its Recipients."""
    plan: BatchPlan
    """The Batch without its Deliveries."""
    checker: RecipientChecker
    html: str
    builtin_unsubscribe: bool
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    refused: list[Rejection] = field(default_factory=list)
    """Rejected as suppressed: reported after the others, as when the Batch was checked whole."""
    largest: EnvelopeEstimate | None = None
    """The largest Envelope over nats.max_payload so far (the first of equals)."""


@dataclass
class Chunk:
    recipients: list[RecipientIn]
    deliveries: list[Delivery]
    keys: list[str]
    """The Deliveries' suppression keys, to look up."""


def largest_envelope(
    deliveries: Sequence[Delivery], intake: Intake, settings: Settings
) -> EnvelopeEstimate | None:
    """A bound of the largest Envelope of `deliveries`: exact when over nats.max_payload."""
    request, plan = intake.request, intake.plan
    return estimate_largest_envelope(
        html=intake.html,
        subject=plan.subject,
        domain=plan.domain,
        batch_id=plan.batch_id,
        sender_email=plan.sender_email,
        sender_alias=plan.sender_alias,
        recipients=[(d.email, d.fields) for d in deliveries],
        attachments={a.filename.strip(): len(a.content) for a in request.attachments},
        headers_to=plan.headers["to"],
        headers_cc=plan.headers["cc"],
        tracker_base_url=settings.tracker.base_url,
        tracking_kid_bytes=KID_LENGTH,
        limit=settings.nats.max_payload,
        unsubscribe_url_template=request.one_click_url_template,
        builtin_unsubscribe=intake.builtin_unsubscribe,
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


def as_body(message: SendMessage | SendBody) -> SendBody:
    """The request as a :class:`SendBody`: gRPC hands the handlers its bytes, the Connect
    listener (and tests) a decoded message."""
    if isinstance(message, SendBody):
        return message
    return SendBody.decoded(message)


class MailerService:
    def __init__(self, settings: Settings, db: Database, auth: ApiKeyAuth) -> None:
        self.settings = settings
        self.db = db
        self.auth = auth
        self.max_recipients = settings.api.max_recipients

    def _global_fields(self, body: SendBody) -> dict[str, str]:
        # Counted before anything is built per Recipient: an oversized call costs nothing.
        check_recipient_count(body.count, self.max_recipients)
        fields = dict(body.head.global_fields)
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

    def _intake(  # noqa: PLR0917  (called positionally through off_loop)
        self,
        head: SendMessage,
        tenant: str,
        template_id: str,
        html: str,
        now: datetime,
        domain: tuple[TrackingPolicy, bool],
    ) -> Intake:
        """The checked Batch, ready for its Recipients."""
        ceiling, builtin_unsubscribe = domain
        request = wire.send_request(head, with_recipients=False)
        unsubscribe_fields: set[str] = set()
        if request.one_click_url_template is not None:
            template = one_click_template(request.one_click_url_template, request.global_fields)
            request = dataclasses.replace(request, one_click_url_template=template)
            unsubscribe_fields = placeholder_names(template)
        plan, checker = plan_head(
            request,
            tenant=tenant,
            batch_id=make_batch_id(new_token(), tenant),
            template_id=template_id,
            now=now,
            subject_fields=placeholder_names(request.subject),
            ceiling=ceiling,
            unsubscribe_fields=unsubscribe_fields,
        )
        return Intake(request, plan, checker, html, builtin_unsubscribe)

    def _check(self, intake: Intake, chunks: Iterator[Sequence[Any]]) -> Chunk | None:
        """The next chunk of Recipients, checked; None after the last."""
        recipients_pb = next(chunks, None)
        if recipients_pb is None:
            return None
        recipients = wire.recipients_in(recipients_pb)
        del recipients_pb
        deliveries, rejected = intake.checker.check(recipients)
        intake.rejected.extend(rejected)
        largest = largest_envelope(deliveries, intake, self.settings)
        # Only a bound over the limit is exact; the first of equals names the Recipient.
        if (
            largest is not None
            and largest.size > self.settings.nats.max_payload
            and (intake.largest is None or largest.size > intake.largest.size)
        ):
            intake.largest = largest
        # Delivery emails are canonical already: their key is the lower-cased spelling.
        return Chunk(recipients, deliveries, [d.email.lower() for d in deliveries])

    @staticmethod
    def _encode(intake: Intake, chunk: Chunk, suppressed: set[str]) -> tuple[bytes, int]:
        """The chunk's Pool rows (:func:`deliveries_csv`) and how many."""
        plan = dataclasses.replace(intake.plan, deliveries=chunk.deliveries, rejected=[])
        plan = apply_suppressions(plan, chunk.recipients, suppressed)
        intake.accepted += len(plan.deliveries)
        intake.refused.extend(plan.rejected)
        return deliveries_csv(plan), len(plan.deliveries) + len(plan.suppressed)

    async def _write_recipients(
        self,
        intake: Intake,
        chunks: Iterator[Sequence[Any]],
        writer: BatchWriter,
        now: datetime,
        large: bool,
    ) -> None:
        """Check, look up and COPY the Recipients chunk by chunk."""

        async def run(function: Callable[..., T], *args: Any) -> T:
            return await off_loop(function, *args) if large else function(*args)

        # One chunk at a time: checking the next one while this one is COPYed made the call
        # ~12 MiB larger at its peak in the pipeline bench (ADR 0059).
        while (chunk := await run(self._check, intake, chunks)) is not None:
            suppressed = await writer.suppressed(chunk.keys, now)
            data, rows = await run(self._encode, intake, chunk, suppressed)
            del chunk
            await writer.copy(data, rows)
            del data

    async def _send(
        self,
        call: Call,
        body: SendBody,
        template_id: str,
        html: str,
        template: Template | None,
    ) -> mailer_pb.SendRes:
        now, tenant = call.now, call.tenant
        domain = await sending_policy(self.db, tenant)
        if domain is None:
            raise NotFound(f"domain: {tenant!r} no longer exists")
        intake = self._intake(body.head, tenant, template_id, html, now, domain)
        if call.ip_pool is not None:
            intake.plan = dataclasses.replace(intake.plan, ip_pool=call.ip_pool)
        claim = None
        if call.key is not None:
            # The response is stored at the end of the transaction (BatchWriter.respond).
            claim = IdempotencyClaim(tenant, call.key, call.fingerprint, b"")
        # Checking and encoding 100,000 Recipients takes about a second of CPU; in a thread
        # the event loop keeps serving other calls (and, in standalone, the other Components)
        # meanwhile. Each chunk's objects are dropped before the next one is read (ADR 0059).
        large = body.count >= OFF_LOOP_RECIPIENTS
        chunks = body.chunks()
        try:
            async with open_batch(
                self.db,
                intake.plan,
                template,
                now,
                idempotency=claim,
                idempotency_since=now - self.settings.api.idempotency_window,
            ) as writer:
                await self._write_recipients(intake, chunks, writer, now, large)
                # Refusals of the whole Batch, in the order of the checks made on it whole.
                intake.checker.check_any_given()
                check_envelope_size(intake.largest, self.settings)
                plan = dataclasses.replace(
                    intake.plan, rejected=[*intake.rejected, *intake.refused]
                )
                response = wire.send_res_pb(plan, accepted=intake.accepted)
                await writer.respond(response.SerializeToString())
        except KeyTaken:
            # A concurrent call with the same key committed first: answer as it did.
            replayed = await self._replay(call)
            if replayed is None:  # pragma: no cover - the winner's row is committed
                raise
            return replayed
        finally:
            if large:
                del intake, chunks
                # Without it, the ~20 MiB freed by the call stay resident (measured).
                await off_loop(release_memory)
        for reason, count in collections.Counter(r.reason for r in plan.rejected).items():
            REJECTED.labels(reason).inc(count)
        return response

    async def _call(self, method: str, body: SendBody, context: CallContext) -> Call:
        tenant = await self.auth.tenant(context)
        key = check_key(metadata(context).get(HEADER))
        if len(body.data) >= OFF_LOOP_BYTES:
            await off_loop(body.index)
        else:
            body.index()
        digest = b""
        if key is not None:
            prefix = fingerprint_prefix(method)
            if len(body.data) >= OFF_LOOP_BYTES:
                digest = await off_loop(body.deterministic_digest, prefix)
            else:
                digest = body.deterministic_digest(prefix)
        # The Batch's own IP pool; unset or empty: its Domain's.
        message = body.head
        ip_pool = None
        if message.HasField("ip_pool") and message.ip_pool:
            ip_pool = check_known_pool(message.ip_pool, self.settings.known_pools())
        return Call(method, tenant, key, digest, utc_now(), ip_pool)

    @rpc
    async def SendHTML(
        self, message: mailer_pb.SendHTMLReq | SendBody, context: CallContext
    ) -> mailer_pb.SendRes:
        body = as_body(message)
        del message  # the Recipients are read from `body`, a chunk at a time
        call = await self._call("SendHTML", body, context)
        if (replayed := await self._replay(call)) is not None:
            return replayed
        tenant = call.tenant
        global_fields = self._global_fields(body)
        check_html(body.head.html)
        html = apply_global_fields(body.head.html, global_fields)
        template = transient_template(tenant, html, call.now)
        return await self._send(call, body, template.template_id, html, template)

    @rpc
    async def SendTemplate(
        self, message: mailer_pb.SendTemplateReq | SendBody, context: CallContext
    ) -> mailer_pb.SendRes:
        body = as_body(message)
        del message  # the Recipients are read from `body`, a chunk at a time
        call = await self._call("SendTemplate", body, context)
        if (replayed := await self._replay(call)) is not None:
            return replayed
        tenant = call.tenant
        global_fields = self._global_fields(body)
        template_id = check_template_id(body.head.template_id)
        # Only the tenant's own templates: another Domain's id is "not found", not "forbidden",
        # so ids of other tenants cannot be probed.
        stored = await get_template(self.db, template_id, domain=tenant)
        if stored is None:
            raise NotFound(f"template_id: no template {template_id!r} in domain {tenant!r}")
        html = apply_global_fields(stored.html, global_fields)
        if html == stored.html:
            return await self._send(call, body, stored.template_id, html, None)
        template = transient_template(tenant, html, call.now)
        return await self._send(call, body, template.template_id, html, template)
