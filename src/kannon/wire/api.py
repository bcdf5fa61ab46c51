"""Admin, Mailer, Stats and Suppression API messages <-> model types.

Owns what the wire says beyond field layout: which fields are required, what `take=0` means
(a default page, not an empty one), how Timestamps become aware UTC datetimes, and how stored
rows are shown (API keys always masked, the private DKIM key never). Missing or malformed
fields become InvalidArgument naming the field.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from kannon.model.apikey import ApiKey
from kannon.model.batch import AttachmentIn, BatchPlan, RecipientIn, SendRequest, WirePolicy
from kannon.model.domain import DkimKey, DnsRecord, Domain
from kannon.model.errors import InvalidArgument
from kannon.model.suppression import MANUAL, Suppression
from kannon.model.template import Template
from kannon.model.tracking import TrackingPolicy, check_ceiling, mode_from_number
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.stats.types import stats_pb2 as stats_types_pb
from kannon.pb.suppression.apiv1 import suppressionapiv1_pb2 as suppression_pb
from kannon.pb.tracking.types import tracking_pb2
from kannon.wire.stats import UndecodableEvent, data_pb, detail_from_json, timestamp_pb

MAX_RANGE = timedelta(days=366)
_NO_FIELDS: Mapping[str, str] = MappingProxyType({})


class StatRow(Protocol):
    """A stored outcome event (structural, so this module needs no database types)."""

    @property
    def type(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def tracking_mode(self) -> int: ...


class Bucket(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def count(self) -> int: ...


@dataclass(frozen=True)
class Page:
    offset: int
    limit: int


def page(skip: int, take: int, *, default: int, cap: int) -> Page:
    """`take=0` asks for the default page (the original returned nothing); a larger
    `take` than `cap` is capped rather than refused, so naive clients still get data."""
    limit = default if take <= 0 else min(take, cap)
    return Page(offset=max(skip, 0), limit=limit)


def datetime_from_pb(ts: Timestamp, field: str) -> datetime:
    try:
        value: datetime = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"{field}: not a valid timestamp ({exc})") from None
    return value


def optional_datetime(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return datetime_from_pb(getattr(message, field), field)


def time_range(message: Any) -> tuple[datetime, datetime]:
    """`from_date` / `to_date` of a Stats request: both required, from < to, at most a year."""
    start = optional_datetime(message, "from_date")
    end = optional_datetime(message, "to_date")
    if start is None:
        raise InvalidArgument("from_date: required")
    if end is None:
        raise InvalidArgument("to_date: required")
    if start >= end:
        raise InvalidArgument("to_date: must be after from_date")
    if end - start > MAX_RANGE:
        raise InvalidArgument(
            f"to_date: the range from from_date is longer than {MAX_RANGE.days} days"
        )
    return start, end


# --- Admin -------------------------------------------------------------------------------------


def policy_pb(policy: TrackingPolicy) -> tracking_pb2.TrackingPolicy:
    # Enum values by name: what the generated constructor is typed to take.
    return tracking_pb2.TrackingPolicy(
        opens=f"TRACKING_MODE_{policy.opens.name}", links=f"TRACKING_MODE_{policy.links.name}"
    )


def wire_policy(message: Any, field: str = "tracking") -> WirePolicy | None:
    """The (opens, links) numbers of an optional TrackingPolicy field; None when unset."""
    if not message.HasField(field):
        return None
    policy = getattr(message, field)
    return (int(policy.opens), int(policy.links))


def dns_record_pb(record: DnsRecord) -> admin_pb.DnsRecord:
    return admin_pb.DnsRecord(
        type=record.type, name=record.name, value=record.value, purpose=record.purpose
    )


def dkim_key_pb(key: DkimKey, record: DnsRecord, now: datetime) -> admin_pb.DkimKey:
    msg = admin_pb.DkimKey(
        selector=key.selector,
        algorithm=key.algorithm,
        status=key.status(now),
        public_key=key.public_key,
        dns_record=dns_record_pb(record),
    )
    msg.created_at.CopyFrom(timestamp_pb(key.created_at))
    if key.confirmed_at is not None:
        msg.confirmed_at.CopyFrom(timestamp_pb(key.confirmed_at))
    if key.retire_at is not None:
        msg.retire_at.CopyFrom(timestamp_pb(key.retire_at))
    return msg


def domain_pb(
    domain: Domain,
    records: Sequence[DnsRecord],
    keys: Sequence[tuple[DkimKey, DnsRecord]],
    now: datetime,
) -> admin_pb.Domain:
    msg = admin_pb.Domain(
        domain=domain.name,
        dkim_pub_key=domain.dkim_public_key,
        dkim_selector=domain.dkim_selector,
        tracking=policy_pb(domain.tracking),
        one_click_unsubscribe=domain.one_click_unsubscribe,
        ip_pool=domain.ip_pool,
    )
    for record in records:
        msg.dns_records.append(dns_record_pb(record))
    for key, record in keys:
        msg.dkim_keys.append(dkim_key_pb(key, record, now))
    return msg


def template_pb(template: Template) -> admin_pb.Template:
    return admin_pb.Template(
        template_id=template.template_id,
        html=template.html,
        title=template.title,
        type=template.type,
    )


def api_key_pb(key: ApiKey) -> admin_pb.APIKey:
    msg = admin_pb.APIKey(
        id=key.id,
        key=key.masked,
        name=key.name,
        domain=key.domain,
        is_active=key.is_active,
    )
    msg.created_at.CopyFrom(timestamp_pb(key.created_at))
    if key.expires_at is not None:
        msg.expires_at.CopyFrom(timestamp_pb(key.expires_at))
    if key.deactivated_at is not None:
        msg.deactivated_at.CopyFrom(timestamp_pb(key.deactivated_at))
    return msg


# --- Mailer ------------------------------------------------------------------------------------


def recipients_in(recipients: Any) -> list[RecipientIn]:
    """Recipient messages as the model reads them."""
    # One copy of each fields map into a dict: later steps read it twice, and reading a
    # protobuf map is slower than copying it once. Empty maps (the common case) share one.
    return [
        RecipientIn(
            r.email,
            dict(f) if (f := r.fields) else _NO_FIELDS,
            (int(r.tracking.opens), int(r.tracking.links)) if r.HasField("tracking") else None,
        )
        for r in recipients
    ]


def send_request(message: Any, *, with_recipients: bool = True) -> SendRequest:
    """The common part of SendHTMLReq / SendTemplateReq (their field numbers are the same);
    without `with_recipients`, `recipients` is left empty (read them with `recipients_in`)."""
    sender = message.sender if message.HasField("sender") else None
    headers = message.headers if message.HasField("headers") else None
    return SendRequest(
        sender_email=None if sender is None else sender.email,
        sender_alias="" if sender is None else sender.alias,
        subject=message.subject,
        recipients=recipients_in(message.recipients) if with_recipients else [],
        attachments=[AttachmentIn(a.filename, a.content) for a in message.attachments],
        global_fields=dict(message.global_fields),
        headers_to=list(headers.to) if headers is not None else [],
        headers_cc=list(headers.cc) if headers is not None else [],
        scheduled_time=optional_datetime(message, "scheduled_time"),
        tracking=wire_policy(message),
        one_click_url_template=(
            message.one_click_unsubscribe.url_template
            if message.HasField("one_click_unsubscribe")
            else None
        ),
    )


def ceiling_from_pb(message: Any, field: str = "tracking") -> TrackingPolicy:
    """A Domain ceiling from SetTrackingPolicyReq.tracking: both modes must be stated and known."""
    if not message.HasField(field):
        raise InvalidArgument(f"{field}: required (opens and links)")
    policy = getattr(message, field)
    return check_ceiling(
        TrackingPolicy(
            mode_from_number(int(policy.opens), f"{field}.opens"),
            mode_from_number(int(policy.links), f"{field}.links"),
        ),
        field,
    )


def send_res_from_bytes(data: bytes) -> mailer_pb.SendRes:
    res: mailer_pb.SendRes = mailer_pb.SendRes.FromString(data)
    return res


def send_res_pb(plan: BatchPlan, accepted: int | None = None) -> mailer_pb.SendRes:
    """The response to a send; `accepted` counts the Deliveries when `plan` does not hold them
    (written chunk by chunk, ADR 0059)."""
    res = mailer_pb.SendRes(
        message_id=plan.batch_id,
        template_id=plan.template_id,
        accepted_count=len(plan.deliveries) if accepted is None else accepted,
        rejected_count=len(plan.rejected),
    )
    res.scheduled_time.CopyFrom(timestamp_pb(plan.scheduled_time))
    for rejection in plan.rejected:
        res.rejected_recipients.add(email=rejection.email, reason=rejection.reason)
    return res


# --- Stats -------------------------------------------------------------------------------------


def stats_pb(row: StatRow) -> stats_types_pb.Stats:
    msg = stats_types_pb.Stats(
        message_id=row.message_id, domain=row.domain, email=row.email, type=row.type
    )
    msg.tracking_mode = row.tracking_mode  # type: ignore[assignment]  # an enum number
    msg.timestamp.CopyFrom(timestamp_pb(row.timestamp))
    # A row this version cannot read (written by a newer one) is still listed, with its type
    # string, rather than failing the whole page.
    with contextlib.suppress(UndecodableEvent, ValueError, json_format.ParseError):
        msg.data.CopyFrom(data_pb(detail_from_json(row.data)))
    return msg


def bucket_pb(bucket: Bucket) -> stats_types_pb.StatsAggregated:
    msg = stats_types_pb.StatsAggregated(type=bucket.type, count=bucket.count)
    msg.timestamp.CopyFrom(timestamp_pb(bucket.timestamp))
    return msg


# --- Suppression -------------------------------------------------------------------------------


def suppression_json(item: Suppression) -> dict[str, Any]:
    """A stored Suppression as `kannon suppression list` prints it: the API's JSON form."""
    shown: dict[str, Any] = json_format.MessageToDict(suppression_msg(item))
    return shown


def suppression_msg(item: Suppression) -> suppression_pb.Suppression:
    """A stored Suppression as the API shows it: a manual one's diagnostic is its note."""
    msg = suppression_pb.Suppression(domain=item.domain, address=item.address, reason=item.reason)
    msg.created_at.CopyFrom(timestamp_pb(item.created_at))
    if item.expires_at is not None:
        msg.expires_at.CopyFrom(timestamp_pb(item.expires_at))
    if item.reason == MANUAL and not item.event_type:
        msg.note = item.diagnostic
    if item.event_type:
        event = msg.event
        event.type = item.event_type
        event.status = item.status
        event.reply_code = max(item.reply_code, 0)
        event.diagnostic = item.diagnostic
        event.message_id = item.message_id
        if item.event_at is not None:
            event.time.CopyFrom(timestamp_pb(item.event_at))
    return msg
