"""Intake of a Batch: what a SendHTML/SendTemplate call must satisfy and what it turns into.

:func:`plan_batch` checks a send request against the rules of the Mailer API and returns the
Batch row and its Deliveries, ready to be written in one transaction:

* the sender address must parse and belong to the tenant Domain or a parent of it
  (PermissionDenied otherwise); subject, alias and custom header values may not contain CR/LF
  (header injection); every error names the request field it is about;
* Recipients are trimmed and canonicalised (:func:`kannon.model.address.canonical_recipient`:
  domain lower-cased and IDNA-encoded, trailing dot dropped, invisible characters removed), blank
  ones skipped; duplicates collapse into the first one, comparing the canonical form
  case-insensitively (ADR 0020) — a common mistake in mailing lists, not worth failing the call for;
* a field that the subject uses may not contain CR or LF for any Recipient: the Subject header
  could not be built (InvalidArgument naming the Recipient and the field);
* a Recipient that cannot be stored or can never be delivered (longer than RFC 5321 allows, or
  containing NUL) is *rejected at intake* and reported back; address syntax is otherwise the
  Validator's job, which reports through the normal outcome events;
* the Tracking Policy (:mod:`kannon.model.tracking`): a Batch above its Domain's ceiling fails the
  call, a Recipient above it (or stating an unknown mode) is rejected alone, and each Delivery
  gets the most restrictive stated policy, frozen;
* a one-click unsubscribe URL template whose placeholders a Recipient's fields cannot fill
  rejects that Recipient alone (`unsubscribe_url_unresolved`); `email` always resolves.
* a Recipient on the Domain's suppression list is rejected with reason ``suppressed``
  (:func:`apply_suppressions`, ADR 0027): reported back, kept in `BatchPlan.suppressed` so the
  Pool carries it to the Validator, which publishes its Rejected event; it is never sent.

Pure: no I/O; ids, `now` and limits are passed in.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from kannon.model.address import (
    MAX_ADDRESS,
    InvalidAddress,
    canonical_recipient,
    parse_address,
)
from kannon.model.domain import sender_domain_allowed
from kannon.model.errors import InvalidArgument, PermissionDenied
from kannon.model.tracking import (
    DEFAULT_CEILING,
    REJECT_TRACKING_ABOVE_CEILING,
    REJECT_UNSUPPORTED_TRACKING_MODE,
    TrackingMode,
    TrackingPolicy,
    above_ceiling,
    check_batch_policy,
    mode_from_number,
    restrict,
)

MAX_ALIAS = 100  # messages.sender_alias is VARCHAR(100)
MAX_FILENAME = 255

REJECT_TOO_LONG = "too_long"
REJECT_INVALID_EMAIL = "invalid_email"
REJECT_INVALID_FIELDS = "invalid_fields"
REJECT_UNSUBSCRIBE_URL_UNRESOLVED = "unsubscribe_url_unresolved"
# The one placeholder of an unsubscribe URL template every Recipient can fill.
EMAIL_FIELD = "email"

NO_POLICY = TrackingPolicy()
# A tracking policy as the wire states it: (opens, links) enum numbers, 0 = unstated.
WirePolicy = tuple[int, int]
REJECT_SUPPRESSED = "suppressed"

_HEADER_BREAKERS = ("\r", "\n", "\x00")


class RecipientIn(NamedTuple):
    # NamedTuples rather than frozen dataclasses for the per-Recipient types: a call may carry
    # 100,000 of them and tuple construction is several times cheaper.
    email: str
    fields: Mapping[str, str]
    tracking: WirePolicy | None = None


@dataclass(frozen=True, slots=True)
class AttachmentIn:
    filename: str
    content: bytes


@dataclass(frozen=True)
class SendRequest:
    """The parts of SendHTMLReq / SendTemplateReq that do not depend on where the HTML is from."""

    sender_email: str | None  # None: the request had no sender at all
    sender_alias: str
    subject: str
    recipients: Sequence[RecipientIn]
    attachments: Sequence[AttachmentIn] = ()
    global_fields: Mapping[str, str] | None = None
    headers_to: Sequence[str] = ()
    headers_cc: Sequence[str] = ()
    scheduled_time: datetime | None = None
    tracking: WirePolicy | None = None
    one_click_url_template: str | None = None


class Delivery(NamedTuple):
    email: str
    fields: Mapping[str, str]
    tracking: TrackingPolicy = DEFAULT_CEILING


@dataclass(frozen=True, slots=True)
class Rejection:
    email: str
    reason: str


@dataclass(frozen=True, slots=True)
class BatchCore:
    """The columns of a Batch's `messages` row that both its intake (`BatchPlan`) and its
    dispatch (`kannon.db.sending_data.SendingData`) carry, in this order."""

    batch_id: str
    domain: str
    subject: str
    sender_email: str
    sender_alias: str
    template_id: str


@dataclass(frozen=True)
class BatchPlan(BatchCore):
    attachments: dict[str, str]  # filename -> base64, the messages.attachments layout
    # {"to": [...], "cc": [...], "one_click_unsubscribe": {"url_template": ...}}, the
    # messages.headers layout (the last key only when the caller gave a template)
    headers: dict[str, Any]
    scheduled_time: datetime  # aware, UTC
    deliveries: list[Delivery]
    rejected: list[Rejection]
    tracking: TrackingPolicy = NO_POLICY  # what the Batch stated (messages.tracking)
    suppressed: list[Delivery] = field(default_factory=list)
    """Recipients refused because the Domain suppresses them: written to the Pool with
    `reject_reason` "suppressed" so their Rejected event is published; never sent."""
    ip_pool: str | None = None
    """The IP pool the Batch named instead of its Domain's (messages.ip_pool; ADR 0039)."""


def _check_header_text(value: str, field: str) -> None:
    if any(ch in value for ch in _HEADER_BREAKERS):
        raise InvalidArgument(f"{field}: contains CR, LF or NUL, which could inject mail headers")


def check_no_nul(values: Mapping[str, str] | None, field: str) -> None:
    if not values:
        return
    for key, value in values.items():
        if "\x00" in key or "\x00" in value:
            raise InvalidArgument(f"{field}: the field {key!r} contains a NUL character")


def check_sender(email: str | None, alias: str, tenant: str) -> str:
    """The sender address in canonical form; the tenant must be allowed to send as it."""
    if email is None:
        raise InvalidArgument("sender: required (sender.email, and optionally sender.alias)")
    email = email.strip()
    if not email:
        raise InvalidArgument("sender.email: required")
    try:
        address = parse_address(email)
    except InvalidAddress as exc:
        raise InvalidArgument(
            f"sender.email: {email!r} is not a valid email address ({exc})"
        ) from None
    if not sender_domain_allowed(address.domain, tenant):
        raise PermissionDenied(
            f"sender.email: domain {address.domain!r} is not authorized for tenant {tenant!r} "
            "(use the tenant domain or a parent of it)"
        )
    _check_header_text(alias, "sender.alias")
    if len(alias) > MAX_ALIAS:
        raise InvalidArgument(f"sender.alias: longer than {MAX_ALIAS} characters")
    return str(address)


def check_subject(subject: str) -> None:
    if not subject.strip():
        raise InvalidArgument("subject: required")
    _check_header_text(subject, "subject")


def _header_addresses(values: Sequence[str], field: str) -> list[str]:
    result: list[str] = []
    for i, raw in enumerate(values):
        value = raw.strip()
        if not value:
            continue
        try:
            result.append(str(parse_address(value)))
        except InvalidAddress as exc:
            raise InvalidArgument(
                f"{field}[{i}]: {raw!r} is not a valid email address ({exc})"
            ) from None
    return result


def _attachments(attachments: Sequence[AttachmentIn]) -> dict[str, str]:
    result: dict[str, str] = {}
    for i, attachment in enumerate(attachments):
        field = f"attachments[{i}].filename"
        name = attachment.filename.strip()
        if not name:
            raise InvalidArgument(f"{field}: required")
        _check_header_text(name, field)
        if len(name) > MAX_FILENAME:
            raise InvalidArgument(f"{field}: longer than {MAX_FILENAME} characters")
        if name in result:
            # The original kept the last one silently; losing an attachment is worse than a
            # clear error.
            raise InvalidArgument(f"{field}: {name!r} is used by more than one attachment")
        result[name] = base64.b64encode(attachment.content).decode("ascii")
    return result


def _check_subject_fields(
    index: int, email: str, fields: Mapping[str, str], subject_fields: Collection[str]
) -> None:
    for name in subject_fields:
        value = fields.get(name)
        if value is not None and ("\r" in value or "\n" in value):
            raise InvalidArgument(
                f"recipients[{index}].fields[{name!r}] (recipient {email!r}): contains CR or LF, "
                "and the subject uses this field; a header cannot hold a line break"
            )


def wire_policy(policy: WirePolicy, field: str) -> TrackingPolicy:
    """A stated policy from its wire numbers; InvalidArgument naming `field` for unknown modes."""
    return TrackingPolicy(
        mode_from_number(policy[0], f"{field}.opens"),
        mode_from_number(policy[1], f"{field}.links"),
    )


class _Policies:
    """Per-Recipient policy resolution, memoised: a Batch has few distinct policies."""

    def __init__(self, ceiling: TrackingPolicy, batch: TrackingPolicy) -> None:
        self.ceiling = ceiling
        self.default = restrict(ceiling, batch)
        self._batch = batch
        self._known: dict[WirePolicy, TrackingPolicy | str] = {}

    def resolve(self, stated: WirePolicy | None) -> TrackingPolicy | str:
        """The Delivery's policy, or the reason to reject the Recipient."""
        if stated is None or stated == (0, 0):
            return self.default
        known = self._known.get(stated)
        if known is None:
            known = self._known[stated] = self._resolve(stated)
        return known

    def _resolve(self, stated: WirePolicy) -> TrackingPolicy | str:
        try:
            policy = TrackingPolicy(TrackingMode(stated[0]), TrackingMode(stated[1]))
        except ValueError:
            return REJECT_UNSUPPORTED_TRACKING_MODE
        if above_ceiling(policy, self.ceiling):
            return REJECT_TRACKING_ABOVE_CEILING
        return restrict(self.ceiling, self._batch, policy)


class RecipientChecker:
    """The per-Recipient half of :func:`plan_batch`, fed the Recipients a chunk at a time (ADR
    0059): a duplicate collapses into its first spelling across chunks, and errors name the
    Recipient's index in the whole request."""

    def __init__(
        self,
        subject_fields: Collection[str] = (),
        policies: _Policies | None = None,
        unsubscribe_fields: Collection[str] = (),
    ) -> None:
        self.subject_fields = subject_fields
        self.policies = (
            policies if policies is not None else _Policies(DEFAULT_CEILING, TrackingPolicy())
        )
        self.unsubscribe_fields = unsubscribe_fields
        self.seen: set[str] = set()
        self.given = 0
        """Non-blank Recipients so far."""
        self.index = 0
        """Recipients (blank ones included) so far."""

    def check(self, recipients: Sequence[RecipientIn]) -> tuple[list[Delivery], list[Rejection]]:
        # The hot loop of a large Batch: kept to plain operations on locals.
        deliveries: list[Delivery] = []
        rejected: list[Rejection] = []
        seen = self.seen
        given = 0
        subject_fields = self.subject_fields
        unsubscribe_fields = self.unsubscribe_fields
        policies = self.policies
        default = policies.default
        for index, (raw, fields, stated) in enumerate(recipients, self.index):
            given_email = raw.strip()
            if not given_email:
                continue
            given += 1
            email = canonical_recipient(given_email)
            key = email.lower()
            if key in seen:
                continue
            seen.add(key)
            values = "".join(fields.values()) if fields else ""
            if subject_fields and ("\r" in values or "\n" in values):
                # Rare: only then look at which field holds the line break.
                _check_subject_fields(index, given_email, fields, subject_fields)
            if len(email) > MAX_ADDRESS:
                rejected.append(Rejection(given_email, REJECT_TOO_LONG))
            elif "\x00" in email:
                rejected.append(Rejection(given_email, REJECT_INVALID_EMAIL))
            elif "\x00" in values or (fields and "\x00" in "".join(fields)):
                rejected.append(Rejection(given_email, REJECT_INVALID_FIELDS))
            elif unsubscribe_fields and any(
                name not in fields for name in unsubscribe_fields if name != EMAIL_FIELD
            ):
                rejected.append(Rejection(given_email, REJECT_UNSUBSCRIBE_URL_UNRESOLVED))
            else:
                policy = default if stated is None else policies.resolve(stated)
                if isinstance(policy, str):
                    rejected.append(Rejection(given_email, policy))
                else:
                    deliveries.append(Delivery(email, fields, policy))
        self.given += given
        self.index += len(recipients)
        return deliveries, rejected

    def check_any_given(self) -> None:
        """After the last chunk: a Batch needs at least one non-blank Recipient."""
        if self.given == 0:
            raise InvalidArgument("recipients: at least one non-blank recipient email is required")


def check_recipient_count(count: int, max_recipients: int) -> None:
    if count > max_recipients:
        raise InvalidArgument(
            f"recipients: {count} in one call, the maximum is {max_recipients}; "
            "split them over several calls"
        )


def plan_batch(
    request: SendRequest,
    *,
    tenant: str,
    batch_id: str,
    template_id: str,
    now: datetime,
    max_recipients: int,
    subject_fields: Collection[str] = (),
    ceiling: TrackingPolicy = DEFAULT_CEILING,
    unsubscribe_fields: Collection[str] = (),
) -> BatchPlan:
    """Validate `request` for `tenant` and return the Batch with its Deliveries.

    `subject_fields` are the field names the subject's placeholders use, `unsubscribe_fields`
    those of the one-click unsubscribe URL template (checked by the caller, `envelope.unsubscribe`),
    `ceiling` the Domain's Tracking Policy.
    Raises InvalidArgument / PermissionDenied naming the offending field.
    """
    check_recipient_count(len(request.recipients), max_recipients)
    plan, checker = plan_head(
        request,
        tenant=tenant,
        batch_id=batch_id,
        template_id=template_id,
        now=now,
        subject_fields=subject_fields,
        ceiling=ceiling,
        unsubscribe_fields=unsubscribe_fields,
    )
    deliveries, rejected = checker.check(request.recipients)
    checker.check_any_given()
    return replace(plan, deliveries=deliveries, rejected=rejected)


def plan_head(
    request: SendRequest,
    *,
    tenant: str,
    batch_id: str,
    template_id: str,
    now: datetime,
    subject_fields: Collection[str] = (),
    ceiling: TrackingPolicy = DEFAULT_CEILING,
    unsubscribe_fields: Collection[str] = (),
) -> tuple[BatchPlan, RecipientChecker]:
    """The Batch of `request` without its Deliveries (`request.recipients` is not read), and
    the checker that turns its Recipients into Deliveries, chunk by chunk; what
    :func:`plan_batch` does in one go. Raises as :func:`plan_batch` for the Batch's fields."""
    sender_email = check_sender(request.sender_email, request.sender_alias, tenant)
    check_subject(request.subject)
    headers: dict[str, Any] = {
        "to": _header_addresses(request.headers_to, "headers.to"),
        "cc": _header_addresses(request.headers_cc, "headers.cc"),
    }
    attachments = _attachments(request.attachments)
    check_no_nul(request.global_fields, "global_fields")
    batch_policy = (
        wire_policy(request.tracking, "tracking") if request.tracking else TrackingPolicy()
    )
    check_batch_policy(batch_policy, ceiling)
    if request.one_click_url_template is not None:
        headers["one_click_unsubscribe"] = {"url_template": request.one_click_url_template}
    checker = RecipientChecker(
        subject_fields,
        _Policies(ceiling, batch_policy),
        unsubscribe_fields if request.one_click_url_template is not None else (),
    )
    scheduled = request.scheduled_time if request.scheduled_time is not None else now
    plan = BatchPlan(
        batch_id=batch_id,
        domain=tenant,
        subject=request.subject,
        sender_email=sender_email,
        sender_alias=request.sender_alias,
        template_id=template_id,
        attachments=attachments,
        headers=headers,
        scheduled_time=scheduled.astimezone(UTC),
        deliveries=[],
        rejected=[],
        tracking=batch_policy,
    )
    return plan, checker


def apply_suppressions(
    plan: BatchPlan, recipients: Sequence[RecipientIn], suppressed: Collection[str]
) -> BatchPlan:
    """The plan with the Deliveries whose address is in `suppressed` (lower-cased canonical
    addresses, `kannon.model.suppression.suppression_key`) refused as "suppressed".

    Each is reported under the spelling the caller gave first (ADR 0020) and kept in
    `suppressed` for the Pool. A Batch whose every Recipient is suppressed is still a Batch,
    with nothing to send.
    """
    if not suppressed:
        return plan
    kept: list[Delivery] = []
    refused: list[Delivery] = []
    for delivery in plan.deliveries:
        (refused if delivery.email.lower() in suppressed else kept).append(delivery)
    if not refused:
        return plan
    given: dict[str, str] = {}
    for recipient in recipients:
        text = recipient.email.strip()
        if text:
            key = canonical_recipient(text).lower()
            if key in suppressed:
                given.setdefault(key, text)
    rejected = [
        *plan.rejected,
        *(Rejection(given.get(d.email.lower(), d.email), REJECT_SUPPRESSED) for d in refused),
    ]
    return replace(plan, deliveries=kept, rejected=rejected, suppressed=refused)
