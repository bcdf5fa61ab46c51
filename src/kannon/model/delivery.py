"""A Delivery as it waits in the Pool: one Recipient of one Batch, and its Pool statuses.

The Pool's state machine (transitions live in `kannon.db.deliveries` and nowhere else):

    to_validate --claim--> validating --valid--> scheduled --claim (due)--> sending
    validating --invalid, or rejected at intake (reject_reason)--> (row deleted, Rejected)
    sending --Envelope published (PubAck)--> queued
    sending --build failure--> scheduled (+1 attempt, later time)
    sending --publish failure--> scheduled (same attempt, a little later)
    sending|queued --Delivered/Bounced/Failed--> (row deleted)
    sending|queued --Errored about the attempt in flight--> scheduled (+1 attempt, later time)
    queued --its Envelope left the stream without an outcome--> scheduled (+1 attempt)
    validating --claim older than the timeout--> to_validate            (Reclaim)
    sending    --claim older than the timeout--> scheduled (same attempt) (Reclaim)

An attempt is published at most once: a reclaimed claim is dispatched again under the same attempt
number, so JetStream's duplicate window drops a second copy of an Envelope that did get published,
and a `queued` row is never reclaimed while its Envelope can still be sent (ADR 0025).

Times are timezone-aware UTC datetimes; the database stores them as naive UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from kannon.model.event_ids import delivery_event_id
from kannon.model.outcome import Detail, Outcome
from kannon.model.tracking import DEFAULT_CEILING, TrackingPolicy

TO_VALIDATE = "to_validate"
"""Inserted by the API; waiting for the Validator."""
VALIDATING = "validating"
"""Claimed by a Validator (claimed_at set)."""
SCHEDULED = "scheduled"
"""Valid address; waiting until scheduled_time for the Dispatcher."""
SENDING = "sending"
"""Claimed by a Dispatcher (claimed_at set): its Envelope is being built and published."""
QUEUED = "queued"
"""Envelope published on `kannon.sending` (queued_at, envelope_seq set): waiting for its outcome."""

STATUSES = frozenset({TO_VALIDATE, VALIDATING, SCHEDULED, SENDING, QUEUED})
CLAIMED_STATUSES = frozenset({VALIDATING, SENDING})
IN_FLIGHT_STATUSES = frozenset({SENDING, QUEUED})
"""An attempt is under way: an outcome about it may arrive."""


@dataclass(frozen=True)
class PoolDelivery:
    """One row of the Pool (`sending_pool_emails`)."""

    id: int
    message_id: str
    """The Batch id, `msg_<id>@<domain>`."""
    email: str
    """The Recipient exactly as the caller wrote it (the Pool's key together with message_id)."""
    domain: str
    """The sending tenant's Domain."""
    status: str
    send_attempts_cnt: int
    """How many times this Delivery was rescheduled after a failed or abandoned attempt."""
    original_scheduled_time: datetime
    """When the caller asked for the first attempt: the retry budget is measured from here."""
    scheduled_time: datetime
    """When the next attempt is due."""
    fields: Mapping[str, str] = field(default_factory=dict)
    claimed_at: datetime | None = None
    last_reply_code: int | None = None
    """Code of the last reply a remote server actually gave (None: no server ever answered)."""
    last_reply_msg: str | None = None
    queued_at: datetime | None = None
    """When its Envelope was published (status queued)."""
    envelope_seq: int | None = None
    """The `kannon-sending` stream sequence of its published Envelope (status queued)."""
    tracking: TrackingPolicy = DEFAULT_CEILING
    """The Tracking Policy resolved at intake and frozen on the Delivery."""
    reject_reason: str = ""
    """Set by intake for a Recipient it refused but still reports through the bus (a suppressed
    address, ADR 0027): the Validator rejects it with this reason and it is never sent."""


def delivery_outcome(delivery: PoolDelivery, detail: Detail, now: datetime) -> Outcome:
    """An event that happens once per Delivery (validated, rejected, ended by the Dispatcher),
    under its deterministic id (`event_ids.delivery_event_id`): a redo publishes the same id."""
    return Outcome(
        batch_id=delivery.message_id,
        domain=delivery.domain,
        recipient=delivery.email,
        timestamp=now,
        detail=detail,
        event_id=delivery_event_id(detail.type, delivery.message_id, delivery.email),
    )
