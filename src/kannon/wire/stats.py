"""Outcome events ↔ `pkg.kannon.stats.types.Stats` (the payload on every `kannon.stats.*` subject),
plus the protojson form of `StatsData` stored in the `stats.data` column."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from kannon.model.outcome import (
    Accepted,
    Bounced,
    Clicked,
    Complained,
    Delivered,
    Detail,
    Errored,
    Failed,
    Opened,
    Outcome,
    Rejected,
    Unsubscribed,
)
from kannon.model.tracking import TrackingMode
from kannon.pb.stats.types import stats_pb2 as pb


class Publisher(Protocol):
    """What publishes an outcome: the Bus, which names the subject (`bus.subjects`)."""

    async def publish_stat(self, stat_type: str, payload: bytes, msg_id: str) -> int: ...


class UndecodableEvent(ValueError):
    """The payload is not a Stats message this version understands."""


def timestamp_pb(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def timestamp_from_pb(ts: Timestamp) -> datetime:
    value: datetime = ts.ToDatetime(tzinfo=UTC)
    return value


def data_pb(detail: Detail) -> pb.StatsData:
    data = pb.StatsData()
    match detail:
        case Accepted():
            data.accepted.SetInParent()
        case Rejected(reason=reason):
            data.rejected.reason = reason
        case Delivered():
            data.delivered.SetInParent()
        case Bounced():
            b = data.bounced
            b.permanent = detail.permanent
            b.code = max(detail.code, 0)
            b.msg = detail.message
            b.status = detail.status
            b.reason = detail.reason
            b.hard_bounce = detail.hard_bounce
            b.remote_mta = detail.remote_mta
            b.from_dsn = detail.from_dsn
        case Errored(code=code, message=message):
            data.error.code = max(code, 0)
            data.error.msg = message
        case Failed(reason=reason):
            data.failed.reason = reason
        case Opened(user_agent=ua, ip=ip):
            data.opened.user_agent = ua
            data.opened.ip = ip
        case Clicked(user_agent=ua, ip=ip, url=url):
            data.clicked.user_agent = ua
            data.clicked.ip = ip
            data.clicked.url = url
        case Complained():
            c = data.complained
            c.feedback_type = detail.feedback_type
            c.user_agent = detail.user_agent
            c.source_ip = detail.source_ip
            c.arrival_date = detail.arrival_date
        case Unsubscribed():
            data.unsubscribed.SetInParent()
    return data


def detail_from_pb(data: pb.StatsData) -> Detail:
    kind = data.WhichOneof("data")
    if kind == "accepted":
        return Accepted()
    if kind == "rejected":
        return Rejected(data.rejected.reason)
    if kind == "delivered":
        return Delivered()
    if kind == "bounced":
        b = data.bounced
        return Bounced(
            permanent=b.permanent,
            code=b.code,
            message=b.msg,
            status=b.status,
            reason=b.reason,
            hard_bounce=b.hard_bounce,
            remote_mta=b.remote_mta,
            from_dsn=b.from_dsn,
        )
    if kind == "error":
        return Errored(data.error.code, data.error.msg)
    if kind == "failed":
        return Failed(data.failed.reason)
    if kind == "opened":
        return Opened(data.opened.user_agent, data.opened.ip)
    if kind == "clicked":
        return Clicked(data.clicked.user_agent, data.clicked.ip, data.clicked.url)
    if kind == "complained":
        c = data.complained
        return Complained(c.feedback_type, c.user_agent, c.source_ip, c.arrival_date)
    if kind == "unsubscribed":
        return Unsubscribed()
    raise UndecodableEvent(f"Stats.data has no known case ({kind!r})")


def outcome_pb(outcome: Outcome) -> pb.Stats:
    msg = pb.Stats(
        message_id=outcome.batch_id,
        domain=outcome.domain,
        email=outcome.recipient,
        type=outcome.type,
        data=data_pb(outcome.detail),
        # The enum by name: what the generated constructor is typed to take.
        tracking_mode=f"TRACKING_MODE_{outcome.tracking_mode.name}",
    )
    msg.timestamp.CopyFrom(timestamp_pb(outcome.timestamp))
    return msg


def encode(outcome: Outcome) -> bytes:
    return bytes(outcome_pb(outcome).SerializeToString())


def decode(payload: bytes, event_id: str | None = None) -> Outcome:
    msg = pb.Stats()
    try:
        msg.ParseFromString(payload)
    except Exception as exc:
        raise UndecodableEvent(f"not a Stats message: {exc}") from exc
    detail = detail_from_pb(msg.data)
    return Outcome(
        batch_id=msg.message_id,
        domain=msg.domain,
        recipient=msg.email,
        timestamp=timestamp_from_pb(msg.timestamp),
        detail=detail,
        event_id=event_id or "",
        tracking_mode=_mode(msg.tracking_mode),
    )


def _mode(number: int) -> TrackingMode:
    # A mode this version does not know (a newer publisher's) is recorded as unstated rather
    # than refused: the event itself is still good.
    try:
        return TrackingMode(number)
    except ValueError:
        return TrackingMode.UNSPECIFIED


def data_json(detail: Detail) -> dict[str, Any]:
    """protojson of StatsData as the original stores it (camelCase, zero values omitted, fields
    in number order): what `MessageToDict(data_pb(detail))` gives, built directly. That went
    through a protobuf message and json_format's reflection per event, a few percent of
    standalone's CPU (ADR 0058); `tests/wire/test_stats_json.py` holds the two equal."""
    match detail:
        case Accepted():
            return {"accepted": {}}
        case Delivered():
            return {"delivered": {}}
        case Rejected(reason=reason):
            return {"rejected": _present(("reason", reason))}
        case Failed(reason=reason):
            return {"failed": _present(("reason", reason))}
        case Bounced():
            return {
                "bounced": _present(
                    ("permanent", detail.permanent),
                    ("code", max(detail.code, 0)),
                    ("msg", detail.message),
                    ("status", detail.status),
                    ("reason", detail.reason),
                    ("hardBounce", detail.hard_bounce),
                    ("remoteMta", detail.remote_mta),
                    ("fromDsn", detail.from_dsn),
                )
            }
        case Errored(code=code, message=message):
            return {"error": _present(("code", max(code, 0)), ("msg", message))}
        case Opened(user_agent=ua, ip=ip):
            return {"opened": _present(("userAgent", ua), ("ip", ip))}
        case Clicked(user_agent=ua, ip=ip, url=url):
            return {"clicked": _present(("userAgent", ua), ("ip", ip), ("url", url))}
        case Complained():
            return {
                "complained": _present(
                    ("feedbackType", detail.feedback_type),
                    ("userAgent", detail.user_agent),
                    ("sourceIp", detail.source_ip),
                    ("arrivalDate", detail.arrival_date),
                )
            }
        case Unsubscribed():
            return {"unsubscribed": {}}
    return {}


def _present(*fields: tuple[str, str | int | bool]) -> dict[str, Any]:
    """The fields protojson shows: proto3 scalars equal to their zero value are left out."""
    return {name: value for name, value in fields if value}


def detail_from_json(data: dict[str, Any]) -> Detail:
    from google.protobuf.json_format import ParseDict

    msg = pb.StatsData()
    ParseDict(data, msg, ignore_unknown_fields=True)
    return detail_from_pb(msg)


async def publish_outcome(publisher: Publisher, outcome: Outcome) -> int:
    """Publish on the outcome type's subject with the event id as Nats-Msg-Id; waits for the
    PubAck."""
    return await publisher.publish_stat(outcome.type, encode(outcome), outcome.event_id)
