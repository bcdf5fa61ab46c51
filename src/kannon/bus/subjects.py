"""Every NATS stream, subject and durable consumer name, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from kannon.model import ip_pool

SENDING_STREAM = "kannon-sending"
SENDING_SUBJECT = "kannon.sending"
"""The default IP pool's subject (and every Envelope's before pools existed)."""
SENDING_POOL_PREFIX = "kannon.sending.pool."
SENDING_POOL_SUBJECTS = SENDING_POOL_PREFIX + "*"

STATS_STREAM = "kannon-stats"
STATS_SUBJECTS = "kannon.stats.*"
STATS_PREFIX = "kannon.stats."

DEAD_LETTER_STREAM = "kannon-deadletter"
DEAD_LETTER_SUBJECTS = "kannon.deadletter.>"
DEAD_LETTER_PREFIX = "kannon.deadletter."

SENT_GUARD_BUCKET = "kannon-sent-envelopes"
SHAPING_BUCKET = "kannon-shaping"

# Outcome types, as the original names them (subject suffix, stats.type, aggregated type).
ACCEPTED = "accepted"
REJECTED = "rejected"
DELIVERED = "delivered"
BOUNCED = "bounced"
ERROR = "error"
FAILED = "failed"
OPENED = "opened"
CLICKED = "clicked"
COMPLAINED = "complained"
UNSUBSCRIBED = "unsubscribed"
STAT_TYPES = (
    ACCEPTED,
    REJECTED,
    DELIVERED,
    BOUNCED,
    ERROR,
    FAILED,
    OPENED,
    CLICKED,
    COMPLAINED,
    UNSUBSCRIBED,
)

# Outcome types webhook endpoints receive: every stat type but `error`, which is one failed
# attempt of a Delivery that will be retried, not an outcome (ADR 0032). Derived, so a type added
# to STAT_TYPES reaches webhooks without more code.
WEBHOOK_EVENT_TYPES = tuple(t for t in STAT_TYPES if t != ERROR)


def stats_subject(stat_type: str) -> str:
    if stat_type not in STAT_TYPES:
        raise ValueError(f"unknown stat type {stat_type!r}")
    return STATS_PREFIX + stat_type


def dead_letter_subject(durable: str) -> str:
    """Where a message no handler of `durable` could handle is kept for an operator."""
    return DEAD_LETTER_PREFIX + durable


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    max_age_hours: int = 24


STREAMS = (
    StreamSpec(
        SENDING_STREAM,
        (SENDING_SUBJECT, SENDING_POOL_SUBJECTS),
        "Envelopes waiting for the SMTPSender",
    ),
    StreamSpec(STATS_STREAM, (STATS_SUBJECTS,), "Delivery outcome and engagement events"),
    StreamSpec(
        DEAD_LETTER_STREAM,
        (DEAD_LETTER_SUBJECTS,),
        "Messages no consumer could handle, kept for an operator",
        max_age_hours=14 * 24,
    ),
)

# Durable consumers (name → filter subject).
SENDER_DURABLE = "kannon-sending-pool"
"""The default IP pool's sending consumer; pool P's is `kannon-sending-pool-P`."""
DISPATCHER_DELIVERED_DURABLE = "dispatcher-delivered"
DISPATCHER_BOUNCED_DURABLE = "dispatcher-bounced"
DISPATCHER_ERROR_DURABLE = "dispatcher-error"
STATS_DURABLE = "kannon-stats-logs"
WEBHOOKS_DURABLE = "kannon-webhooks"
# The suppression list's consumers, one per outcome type that can suppress an address
# (`kannon.stats.suppression.SUPPRESSING_TYPES`): `kannon-suppression-<type>`.
SUPPRESSION_DURABLE_PREFIX = "kannon-suppression-"


def sending_subject(pool: str) -> str:
    """Where the Envelopes of IP pool `pool` are published (ADR 0039): the default pool keeps
    `kannon.sending`, pool P gets `kannon.sending.pool.P`."""
    if pool == ip_pool.DEFAULT_POOL:
        return SENDING_SUBJECT
    return SENDING_POOL_PREFIX + ip_pool.check_pool_name(pool)


def sender_durable(pool: str) -> str:
    """The durable consumer the sender nodes of IP pool `pool` share."""
    if pool == ip_pool.DEFAULT_POOL:
        return SENDER_DURABLE
    return f"{SENDER_DURABLE}-{ip_pool.check_pool_name(pool)}"


def suppression_durable(stat_type: str) -> str:
    """Durable name of the suppression consumer of one outcome type."""
    if stat_type not in STAT_TYPES:
        raise ValueError(f"unknown stat type {stat_type!r}")
    return SUPPRESSION_DURABLE_PREFIX + stat_type
