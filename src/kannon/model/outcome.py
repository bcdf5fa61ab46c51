"""Outcome events of a Delivery: what happened to one Recipient of one Batch.

Accepted/Rejected come from the Validator, Delivered/Bounced/Errored from the SMTPSender (and
Bounced also from the SMTPServer's inbound DSNs), Failed from the Dispatcher when the retry budget
is spent, Opened/Clicked/Unsubscribed from the Tracker, Complained from the SMTPServer's inbound
ARF feedback reports. Each event carries an `event_id` that is stable across retries of the same
publish, so the bus stores it once and Stats counts it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kannon.model.tracking import TrackingMode


@dataclass(frozen=True)
class Accepted:
    type = "accepted"


@dataclass(frozen=True)
class Rejected:
    reason: str
    type = "rejected"


@dataclass(frozen=True)
class Delivered:
    type = "delivered"


@dataclass(frozen=True)
class Bounced:
    permanent: bool
    code: int
    message: str
    status: str = ""
    reason: str = ""
    hard_bounce: bool = False
    remote_mta: str = ""
    from_dsn: bool = False
    type = "bounced"


@dataclass(frozen=True)
class Errored:
    code: int
    message: str
    type = "error"


@dataclass(frozen=True)
class Failed:
    reason: str
    type = "failed"


@dataclass(frozen=True)
class Opened:
    user_agent: str
    ip: str
    type = "opened"


@dataclass(frozen=True)
class Clicked:
    user_agent: str
    ip: str
    url: str
    type = "clicked"


@dataclass(frozen=True)
class Complained:
    """The Recipient reported the message as unwanted (ARF, RFC 5965, Feedback-Type abuse)."""

    feedback_type: str
    user_agent: str = ""
    source_ip: str = ""
    arrival_date: str = ""
    type = "complained"


@dataclass(frozen=True)
class Unsubscribed:
    """The Recipient asked for no more mail from the Domain (RFC 8058 one-click, or the button
    of Kannon's unsubscribe page). Consumers (the suppression list) act on it."""

    type = "unsubscribed"


Detail = (
    Accepted
    | Rejected
    | Delivered
    | Bounced
    | Errored
    | Failed
    | Opened
    | Clicked
    | Complained
    | Unsubscribed
)

TERMINAL_TYPES = frozenset({"rejected", "delivered", "bounced", "failed"})


@dataclass(frozen=True)
class Outcome:
    batch_id: str
    domain: str
    recipient: str
    timestamp: datetime
    detail: Detail
    event_id: str
    # Opened/Clicked: the mode the event is recorded under (UNSPECIFIED for the other types,
    # and for engagement events published before Tracking Policies existed).
    tracking_mode: TrackingMode = TrackingMode.UNSPECIFIED

    @property
    def type(self) -> str:
        return self.detail.type


def domain_of_batch(batch_id: str) -> str:
    """Tenant Domain of a Batch id `msg_<id>@<domain>`: the text after the last `@`, or "" when
    the id names none (the Tracker answers 404 for such a token; Stats and webhooks keep "")."""
    _, at, domain = batch_id.rpartition("@")
    return domain if at else ""
